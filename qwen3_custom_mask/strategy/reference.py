"""The brute-force reference: plain PyTorch attention that applies a mask_mod element by element.

No broadcasting tricks, no backend: for every (batch, head, query, key) it asks the mask_mod about that one
pair with scalar tensors, so a bug in the lowering cannot hide in here too. Slow on purpose; for tests.
"""

from __future__ import annotations

import torch
from transformers import Qwen3ForCausalLM


def reference_mask(mask_mod, batch_size: int, num_heads: int, length: int, padding_mask: torch.Tensor | None = None):
    """Bool (B, H, L, L) over absolute positions 0..L-1, asking mask_mod one element at a time."""
    out = torch.zeros(batch_size, num_heads, length, length, dtype=torch.bool)
    t = torch.tensor
    for b in range(batch_size):
        for h in range(num_heads):
            for q in range(length):
                for kv in range(length):
                    visible = bool(mask_mod(t(b), t(h), t(q), t(kv)))
                    real = padding_mask is None or bool(padding_mask[b, kv])
                    out[b, h, q, kv] = visible and real
    return out


def reference_logits(
    model: Qwen3ForCausalLM,
    input_ids: torch.Tensor,
    mask: torch.Tensor | list[torch.Tensor],
    position_ids: torch.Tensor | None = None,
):
    """Logits of ``model``'s weights run through a hand-written Qwen3 forward with a (B, H, L, L) bool mask
    (or a list of them, one per layer).

    Shares no attention or masking code with transformers: projections, RoPE, softmax and GQA are spelled
    out here. A fully masked query row yields a zero attention output.
    """
    cfg = model.config
    inner = model.model
    batch, length = input_ids.shape
    n_heads, n_kv, head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    device = input_ids.device
    if position_ids is None:
        position_ids = torch.arange(length, device=device).expand(batch, length)
    inv_freq = 1.0 / (cfg.rope_parameters["rope_theta"] ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    angles = position_ids[..., None].float() * inv_freq  # (B, L, D/2)
    cos, sin = torch.cat([angles, angles], -1).cos()[:, None], torch.cat([angles, angles], -1).sin()[:, None]

    def rms(x, weight, eps=cfg.rms_norm_eps):
        x32 = x.float()
        return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)

    def rope(x):
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
        return (x.float() * cos + rotated.float() * sin).to(x.dtype)

    masks = mask if isinstance(mask, (list, tuple)) else [mask] * len(inner.layers)
    hidden = inner.embed_tokens(input_ids)
    for layer, mask in zip(inner.layers, masks):
        attn, mlp = layer.self_attn, layer.mlp
        x = rms(hidden, layer.input_layernorm.weight)
        q = rms(attn.q_proj(x).view(batch, length, n_heads, head_dim), attn.q_norm.weight).transpose(1, 2)
        k = rms(attn.k_proj(x).view(batch, length, n_kv, head_dim), attn.k_norm.weight).transpose(1, 2)
        v = attn.v_proj(x).view(batch, length, n_kv, head_dim).transpose(1, 2)
        q, k = rope(q), rope(k)
        k = k.repeat_interleave(n_heads // n_kv, dim=1)
        v = v.repeat_interleave(n_heads // n_kv, dim=1)
        scores = (q.float() @ k.float().transpose(-1, -2)) * head_dim**-0.5
        scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # fully masked row -> zeros
        out = (weights @ v.float()).to(hidden.dtype).transpose(1, 2).reshape(batch, length, -1)
        hidden = hidden + attn.o_proj(out)
        x = rms(hidden, layer.post_attention_layernorm.weight)
        hidden = hidden + mlp.down_proj(torch.nn.functional.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
    return model.lm_head(rms(hidden, inner.norm.weight))
