"""The causal-LM loss without the full logits: linear + cross-entropy fused, a chunk of tokens at a time.

With Qwen3's 151,936-token vocabulary the logits are the largest activation of a training step: 8 rows of 2048
tokens are 10 GB of fp32 logits, before their log-softmax and gradient. `chunked_causal_lm_loss` projects only
``chunk_size`` labelled positions at a time through the LM head, takes their cross-entropy, and computes that
chunk's gradients for the hidden states and the head's weight right away (the Liger-Kernel / Apple CCE scheme, in
plain PyTorch so it runs on CPU and GPU alike): the logits of one chunk are all that ever exist. Backward only
scales the stored gradients.

Values match transformers' ``ForCausalLMLoss`` (labels shifted inside, -100 ignored, ``num_items_in_batch`` =
sum reduction over that count, ``shift_labels`` taken as given): each chunk's logits are computed in the head's
dtype and upcast to float32 like stock's, so the loss and every gradient agree to float rounding. A batch whose
labels are all -100 gives a loss of 0 (stock: NaN) that still backpropagates.

Turned on per model by ``config.loss_chunk_size`` (tokens per chunk; None = stock's full logits):
``CustomQwen3ForCausalLM`` then skips the logits of a training forward given labels (``outputs.logits`` is None);
``skip_logits=False`` (or eval mode) returns them, with the same loss.
"""

from __future__ import annotations

import torch
from torch import nn

IGNORE_INDEX = -100
# Tokens per chunk: 512 x 151,936 fp32 logits are 311 MB, and measured fastest on 2 CPU cores (1024: 1.1x slower).
DEFAULT_CHUNK_SIZE = 512


class _LinearCrossEntropy(torch.autograd.Function):
    """sum over rows of cross_entropy(hidden @ weight.T, targets) / denominator, one chunk of rows at a time."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, denominator, chunk_size):
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        # fp32 until backward has applied grad_output: an fp16 copy would overflow under a loss scale of 65536
        grad_hidden = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if want_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_weight else None
        # One vocabulary-sized buffer for every chunk (and one fp32 buffer for a low-precision head): a fresh
        # 311 MB tensor per chunk costs its page faults each time, measured 2x the matmul itself on 2 CPU cores.
        rows = min(chunk_size, hidden.shape[0])
        buffer = torch.empty(rows, weight.shape[0], dtype=weight.dtype, device=weight.device)
        upcast = torch.empty(rows, weight.shape[0], dtype=torch.float32, device=weight.device) if weight.dtype != torch.float32 else None
        for start in range(0, hidden.shape[0], chunk_size):
            h, t = hidden[start : start + chunk_size], targets[start : start + chunk_size]
            logits = torch.mm(h, weight.T, out=buffer[: h.shape[0]])  # (chunk, vocab), in the head's dtype
            if upcast is not None:  # upcast as ForCausalLMLoss does
                logits = upcast[: h.shape[0]].copy_(logits)
            target = logits.gather(1, t[:, None]).squeeze(1)
            top = logits.amax(dim=-1)
            exp = logits.sub_(top[:, None]).exp_()  # in place: the chunk's only vocab-sized buffer
            total_exp = exp.sum(dim=-1)
            total += (total_exp.log() + top - target).sum()
            if not (want_hidden or want_weight):
                continue
            # d loss / d logits = (softmax - onehot(target)) / denominator, never formed as a matrix: the softmax's
            # row scale goes onto the small (chunk, hidden) operands and the one-hot part is a gather / index_add.
            # On 2 CPU cores this is ~1.5x the speed of normalising the vocab-sized matrix in place.
            scale = 1 / (total_exp * denominator)
            if upcast is not None:
                exp = buffer[: h.shape[0]].copy_(exp)  # back to the head's dtype, in the buffer the logits left
            if want_hidden:
                grad = (exp @ weight).float() * scale[:, None] - weight[t].float() / denominator
                grad_hidden[start : start + chunk_size] = grad
            if want_weight:
                scaled = (h.float() * scale[:, None]).to(weight.dtype)
                if upcast is None:  # fp32: accumulate in place (no vocab-sized temporary)
                    grad_weight.addmm_(exp.T, scaled)
                else:
                    grad_weight += (exp.T @ scaled).float()
                grad_weight.index_add_(0, t, h.float() / -denominator)
        ctx.weight_dtype, ctx.hidden_dtype = weight.dtype, hidden.dtype
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total / denominator

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = (grad_hidden * grad_output).to(ctx.hidden_dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_output).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None


def chunkable_head(lm_head) -> bool:
    """Whether the chunked loss may read ``lm_head.weight`` for the head: a plain, hook-free nn.Linear with its
    weight present. A PEFT-wrapped head (LoRA on lm_head, trainable tokens, modules_to_save), hooks, or a
    ZeRO-3-partitioned (empty) weight would be bypassed by reading the weight: those take stock's loss."""
    return (type(lm_head) is nn.Linear and lm_head.bias is None and lm_head.weight.numel() > 0
            and not (lm_head._forward_hooks or lm_head._forward_pre_hooks))


@torch.compiler.disable  # a Python loop over a data-dependent number of tokens: compiled, it recompiles each step
def chunked_causal_lm_loss(
    hidden_states: torch.Tensor,
    lm_head: nn.Linear,
    labels: torch.Tensor | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = IGNORE_INDEX,
    shift_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """``ForCausalLMLoss(lm_head(hidden_states), labels)`` without the (batch, length, vocab) logits.

    hidden_states: (batch, length, hidden), the body's last hidden state. labels: (batch, length), aligned with
    the inputs (shifted here) or ``shift_labels`` already shifted. Only positions with a label are projected.
    """
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"loss_chunk_size must be a positive number of tokens, got {chunk_size!r} (e.g. 512; None turns it off).")
    if lm_head.bias is not None:
        raise ValueError("chunked_causal_lm_loss supports an LM head without bias (Qwen3's); set loss_chunk_size=None.")
    if shift_labels is None:
        if labels is None:
            raise ValueError("chunked_causal_lm_loss needs labels (or shift_labels).")
        shift_labels = nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    if shift_labels.shape != hidden_states.shape[:-1]:
        raise ValueError(f"labels of shape {tuple(shift_labels.shape)} do not match the hidden states' (batch, length) "
                         f"{tuple(hidden_states.shape[:-1])}.")
    weight = lm_head.weight
    shift_labels = shift_labels.to(weight.device).reshape(-1)
    keep = shift_labels != ignore_index
    hidden = hidden_states.to(weight.device).reshape(-1, hidden_states.shape[-1])[keep]
    targets = shift_labels[keep]
    if num_items_in_batch is None:
        denominator = keep.sum().clamp(min=1).float()  # 0 labelled tokens: a loss of 0, not stock's 0/0 = NaN
    else:
        denominator = torch.as_tensor(num_items_in_batch, device=weight.device).float()
    if torch.is_autocast_enabled(weight.device.type):  # the head's matmul in autocast's dtype, as stock's lm_head
        weight = weight.to(torch.get_autocast_dtype(weight.device.type))
        hidden = hidden.to(weight.dtype)
    with torch.autocast(weight.device.type, enabled=False):
        return _LinearCrossEntropy.apply(hidden, weight, targets, denominator, chunk_size)
