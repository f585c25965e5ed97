"""GPU check: every strategy x backend on CUDA (fp32 and bf16) against the CPU brute-force reference.

    python scripts/gpu_check.py          # prints one line per case and the worst error; exits 1 on a mismatch
"""

import sys
import tempfile

import torch
from transformers import DynamicCache

from qwen3_custom_mask import CustomQwen3ForCausalLM
from qwen3_custom_mask.reference import reference_logits, reference_mask
from qwen3_custom_mask.tiny import save_tiny_checkpoint

CASES = [
    ("causal", {}),
    ("bidirectional", {}),
    ({"name": "sliding_window", "window": 3}, {}),
    ("prefix_lm", {"prefix_lengths": torch.tensor([4, 6])}),
    ({"name": "sliding_window", "window": [1, 2, 4, 7]}, {}),
    ({"name": "attention_sinks", "sinks": 2, "window": 3}, {}),
    ({"name": "chunked", "chunk_size": 4}, {}),
    ({"name": "global_tokens", "tokens": [0, 5], "window": 3}, {}),
    ({"and": ["prefix_lm", {"name": "sliding_window", "window": 4}]}, {"prefix_lengths": torch.tensor([4, 6])}),
]


def main():
    path = save_tiny_checkpoint(tempfile.mkdtemp())
    cpu = CustomQwen3ForCausalLM.from_pretrained(path).eval()
    ids = torch.randint(0, 250, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, :3] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    real = mask.bool()
    failed = False
    for dtype, tol in ((torch.float32, 2e-3), (torch.bfloat16, 0.3)):
        for backend in ("eager", "sdpa", "flex_attention"):
            model = CustomQwen3ForCausalLM.from_pretrained(path, attn_implementation=backend, dtype=dtype).cuda().eval()
            for spec, inputs in CASES:
                model.set_mask_strategy(spec)
                cpu.set_mask_strategy(spec)
                mm = cpu.mask_strategy.mask_mod(**inputs, padding_mask=real)
                with torch.no_grad():
                    ref = reference_logits(cpu, ids, reference_mask(mm, 2, 4, 12, real), pos)
                    cuda_inputs = {k: v.cuda() for k, v in inputs.items()}
                    full = model(ids.cuda(), attention_mask=mask.cuda(), position_ids=pos.cuda(), **cuda_inputs).logits
                    errs = [(full.float().cpu() - ref)[real].abs().max().item()]
                    if spec != "bidirectional":
                        cache = DynamicCache(config=model.config)
                        pieces = [model(ids[:, :9].cuda(), attention_mask=mask[:, :9].cuda(), position_ids=pos[:, :9].cuda(),
                                        past_key_values=cache, **cuda_inputs).logits]
                        for t in range(9, 12):
                            pieces.append(model(ids[:, t:t+1].cuda(), attention_mask=mask[:, :t+1].cuda(),
                                                position_ids=pos[:, t:t+1].cuda(), past_key_values=cache, **cuda_inputs).logits)
                        errs.append((torch.cat(pieces, 1).float().cpu() - ref)[real].abs().max().item())
                ok = max(errs) < tol
                failed |= not ok
                print(f"{str(dtype):15} {backend:15} {str(spec):45} max|err| full={errs[0]:.2e}"
                      + (f" cached={errs[1]:.2e}" if len(errs) > 1 else "") + ("" if ok else "  MISMATCH"), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
