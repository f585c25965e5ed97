"""The main job: load the embedded tiny Qwen3 checkpoint through from_pretrained and walk the strategies.

    python scripts/demo.py [--model PATH_OR_ID] [--backend sdpa]

No download: without --model it writes a seeded tiny checkpoint (official Qwen3 layout) to a temp folder.
For each built-in strategy it draws the mask, generates a few tokens (token ids: the tiny model has no
tokenizer), and it checks on the spot that the default strategy reproduces stock Qwen3ForCausalLM exactly.
"""

import argparse
import logging
import tempfile

import torch
from transformers import Qwen3ForCausalLM

from qwen3_custom_mask import CustomQwen3ForCausalLM
from qwen3_custom_mask.lowering import dense_mask
from qwen3_custom_mask.tiny import save_tiny_checkpoint

logger = logging.getLogger("demo")

STRATEGIES = [
    ("causal", {}),
    ("bidirectional", {}),
    ({"name": "sliding_window", "window": 3}, {}),
    ("prefix_lm", {"prefix_lengths": torch.tensor([4])}),
]


def draw(model, inputs, length=8):
    padding = torch.ones(1, length, dtype=torch.bool)
    mask_mod = model.mask_strategy.mask_mod(**inputs, padding_mask=padding)
    mask = dense_mask(mask_mod, batch_size=1, num_heads=1, q_offset=0, q_length=length, kv_offset=0,
                      kv_length=length, padding_mask=padding, device="cpu")[0, 0]
    return "\n".join("    " + " ".join("■" if v else "⬚" for v in row) for row in mask.tolist())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint path or hub id (default: the embedded tiny checkpoint)")
    parser.add_argument("--backend", default="sdpa", choices=["eager", "sdpa", "flex_attention"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    path = args.model or save_tiny_checkpoint(tempfile.mkdtemp(prefix="tiny-qwen3-"))
    model = CustomQwen3ForCausalLM.from_pretrained(path, attn_implementation=args.backend).eval()
    stock = Qwen3ForCausalLM.from_pretrained(path, attn_implementation=args.backend).eval()
    prompt = torch.arange(10, 18)[None] % model.config.vocab_size

    with torch.no_grad():
        same = torch.equal(model(prompt).logits, stock(prompt).logits)
    logger.info("default 'causal' strategy == stock Qwen3ForCausalLM: %s", "yes (bit-exact)" if same else "NO")
    if not same:
        raise SystemExit(1)

    for spec, inputs in STRATEGIES:
        model.set_mask_strategy(spec)
        logger.info("\n%s\n%s", model.mask_strategy, draw(model, inputs))
        cache = model.mask_strategy.name != "bidirectional"  # a KV cache cannot honour bidirectional
        out = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=cache, **inputs)
        logger.info("    generate(use_cache=%s) -> %s", cache, out[0, prompt.shape[1]:].tolist())


if __name__ == "__main__":
    main()
