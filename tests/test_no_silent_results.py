"""Regressions of results that were silently wrong: each is now right, or refused loudly before a token is made."""

import json

import pytest
import torch
from transformers import GenerationConfig

from qwen3_custom_mask import BoundedCache, CustomQwen3ForCausalLM

from conftest import left_padded

GREEDY = dict(do_sample=False)


@pytest.fixture
def no_use_cache_checkpoint(checkpoint, tmp_path):
    """An official-style checkpoint: its generation_config.json has no use_cache key (as Qwen/Qwen3-*'s)."""
    model = CustomQwen3ForCausalLM.from_pretrained(checkpoint)
    model.generation_config = GenerationConfig(bos_token_id=254, eos_token_id=255, do_sample=False)
    model.save_pretrained(tmp_path)
    assert "use_cache" not in json.loads((tmp_path / "generation_config.json").read_text())
    return tmp_path


@pytest.mark.parametrize("given", ["input_ids", "inputs_embeds"])
def test_cache_check_runs_when_generation_config_has_no_use_cache(no_use_cache_checkpoint, given):
    model = CustomQwen3ForCausalLM.from_pretrained(no_use_cache_checkpoint, mask_strategy="bidirectional").eval()
    ids, mask, _ = left_padded()
    inputs = {"input_ids": ids} if given == "input_ids" else {"inputs_embeds": model.get_input_embeddings()(ids)}
    forwards = []
    hook = model.register_forward_pre_hook(lambda *a: forwards.append(1))
    fix = "pass input_ids with use_cache=False" if given == "inputs_embeds" else "Pass use_cache=False"
    try:
        for extra in ({}, {"use_cache": False} if given == "inputs_embeds" else {}):  # embeds: generate() caches anyway
            with pytest.raises(ValueError, match=fix):
                model.generate(**inputs, attention_mask=mask, max_new_tokens=4, **extra, **GREEDY)
    finally:
        hook.remove()
    assert not forwards  # refused before the first token
    out = model.generate(ids, attention_mask=mask, max_new_tokens=4, use_cache=False, **GREEDY)
    assert out.shape[-1] == 16


def test_look_ahead_check_is_exact_at_any_length(model_for):
    """A global token at index 30 that sees every token (causal=False) is first seen when generation reaches
    it; cached decoding must stop there, not diverge from use_cache=False."""
    model = model_for("sdpa", {"name": "global_tokens", "tokens": [30], "window": 1, "causal": False})
    ids, mask, _ = left_padded(pads=(0, 0))
    with pytest.raises(ValueError, match="attend to tokens generated after it"):
        model.generate(ids, attention_mask=mask, max_new_tokens=25, **GREEDY)
    recomputed = model.generate(ids, attention_mask=mask, max_new_tokens=25, use_cache=False, **GREEDY)
    assert recomputed.shape == (2, 37)
    # Before the global token is reached, cached and recomputed decoding agree.
    early = model.generate(ids, attention_mask=mask, max_new_tokens=18, **GREEDY)
    assert torch.equal(early, recomputed[:, :30])


def test_per_head_windows_of_the_wrong_length_are_refused_at_set_time(model_for):
    model = model_for("sdpa", {"name": "sliding_window", "window": 3})
    with pytest.raises(ValueError, match=r"one entry per attention head \(4\), got 2"):
        model.set_mask_strategy({"name": "sliding_window", "window": [2, 3]})
    assert model.config.mask_strategy == {"name": "sliding_window", "window": 3}  # nothing half-set
    with pytest.raises(ValueError, match="one entry per attention head"):
        model.set_mask_strategy({"and": ["causal", {"name": "sliding_window", "window": [2, 3, 4]}]})


@pytest.mark.parametrize("assisted", ["assistant_model", "prompt_lookup_num_tokens"])
def test_bounded_cache_refuses_assisted_decoding_before_the_first_token(model_for, assisted):
    model = model_for("sdpa", {"name": "sliding_window", "window": 4})
    ids, mask, _ = left_padded(pads=(0, 0))
    option = {"assistant_model": model} if assisted == "assistant_model" else {"prompt_lookup_num_tokens": 2}
    forwards = []
    hook = model.register_forward_pre_hook(lambda *a: forwards.append(1))
    try:
        with pytest.raises(ValueError, match="BoundedCache cannot be used for assisted decoding"):
            model.generate(ids[:1], max_new_tokens=4, past_key_values=BoundedCache(), **option, **GREEDY)
    finally:
        hook.remove()
    assert not forwards


def test_bounded_cache_stores_no_left_padding(model_for):
    """sinks 2 + window 4 - 1 = 5 positions per layer, however much left padding a row has."""
    spec = {"name": "attention_sinks", "sinks": 2, "window": 4}
    ids, mask, _ = left_padded(pads=(9, 0))
    unbounded = model_for("sdpa", spec).generate(ids, attention_mask=mask, max_new_tokens=20, **GREEDY)
    cache = BoundedCache()
    out = model_for("sdpa", spec).generate(ids, attention_mask=mask, max_new_tokens=20, past_key_values=cache, **GREEDY)
    assert torch.equal(out, unbounded)
    assert cache.stored_tokens() == 5
    assert all(layer.keys.shape[-2] == 5 for layer in cache.layers)


def test_bounded_cache_follows_beam_search(model_for):
    spec = {"name": "sliding_window", "window": 3}
    ids, mask, _ = left_padded()
    beams = dict(max_new_tokens=8, num_beams=3, **GREEDY)
    expected = model_for("sdpa", spec).generate(ids, attention_mask=mask, **beams)
    assert torch.equal(model_for("sdpa", spec).generate(ids, attention_mask=mask, past_key_values=BoundedCache(), **beams), expected)


@pytest.mark.parametrize("backend", ["eager", "sdpa", "flex_attention"])
@torch.no_grad()
def test_document_cached_step_keeps_the_prefills_boundaries(model_for, backend):
    """Prefill [doc A (4) | doc B (3)] with restarting position_ids, then one cached step at position 3: it continues
    doc B and must not see doc A (read alone, the step's positions made the row one document: off by 0.27)."""
    from transformers import DynamicCache

    model = model_for(backend, "document")
    ids = torch.randint(0, 250, (1, 8), generator=torch.Generator().manual_seed(0))
    cache = DynamicCache(config=model.config)
    model(ids[:, :7], position_ids=torch.tensor([[0, 1, 2, 3, 0, 1, 2]]), cache=cache, use_cache=True)
    step = model(ids[:, 7:], position_ids=torch.tensor([[3]]), cache=cache, use_cache=True).logits[:, -1]
    torch.testing.assert_close(step, model(ids[:, 4:8]).logits[:, -1], atol=1e-4, rtol=1e-4)
    # a position that does not follow starts a new document; no positions at all continue the last one
    cache = DynamicCache(config=model.config)
    model(ids[:, :7], position_ids=torch.tensor([[0, 1, 2, 3, 0, 1, 2]]), cache=cache, use_cache=True)
    fresh = model(ids[:, 7:], position_ids=torch.tensor([[0]]), cache=cache, use_cache=True).logits[:, -1]
    torch.testing.assert_close(fresh, model(ids[:, 7:]).logits[:, -1], atol=1e-4, rtol=1e-4)
    cache = DynamicCache(config=model.config)
    model(ids[:, :7], position_ids=torch.tensor([[0, 1, 2, 3, 0, 1, 2]]), cache=cache, use_cache=True)
    implicit = model(ids[:, 7:], cache=cache, use_cache=True).logits[:, -1]
    torch.testing.assert_close(implicit, step, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_document_cached_step_on_a_cache_it_did_not_fill_is_refused(model_for):
    from transformers import DynamicCache

    model = model_for("sdpa", "document")
    ids = torch.randint(0, 250, (1, 8), generator=torch.Generator().manual_seed(0))
    cache = DynamicCache(config=model.config)
    model.set_mask_strategy("causal")
    model(ids[:, :7], cache=cache, use_cache=True)
    model.set_mask_strategy("document")
    with pytest.raises(ValueError, match="cannot tell which document this cached step continues.*document_ids"):
        model(ids[:, 7:], position_ids=torch.tensor([[3]]), cache=cache, use_cache=True)
    ids_given = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]])
    model(ids[:, 7:], position_ids=torch.tensor([[3]]), cache=cache, use_cache=True, document_ids=ids_given)  # the fix


@pytest.mark.parametrize("draft_strategy", [None, "causal", "prefix_lm"], ids=["stock-draft", "plugin-causal-draft", "plugin-prefix-draft"])
@torch.no_grad()
def test_prefix_lm_assisted_decoding_with_any_draft(checkpoint, draft_strategy):
    """generate() fills prefix_lengths in (the prompt is the prefix); a draft that does not take it drafts without it
    (it failed with "model_kwargs are not used by the model: ['prefix_lengths']", an argument nobody passed)."""
    from transformers import Qwen3ForCausalLM

    model = CustomQwen3ForCausalLM.from_pretrained(checkpoint).eval()
    model.set_mask_strategy("prefix_lm")
    if draft_strategy is None:
        draft = Qwen3ForCausalLM.from_pretrained(checkpoint).eval()
    else:
        draft = CustomQwen3ForCausalLM.from_pretrained(checkpoint).eval()
        draft.set_mask_strategy(draft_strategy)
    ids = torch.randint(0, 250, (1, 8), generator=torch.Generator().manual_seed(0))
    expected = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert not torch.equal(expected, Qwen3ForCausalLM.from_pretrained(checkpoint).eval().generate(ids, max_new_tokens=6, do_sample=False))
    assert torch.equal(model.generate(ids, max_new_tokens=6, do_sample=False, assistant_model=draft), expected)


# --- Fifth review: one packed row, one meaning (eval defaults, every cache kind, generate, Trainer evaluation) ---
PACKED_COMPOSITIONS = [
    {"and": ["document", {"name": "attention_sinks", "sinks": 1, "window": 2}]},
    {"and": ["document", {"name": "chunked", "chunk_size": 2}]},
    {"and": ["document", {"name": "global_tokens", "tokens": [0], "window": 1}]},
    {"or": ["document", {"name": "sliding_window", "window": 2}]},
    {"layers": {"0": "document", "1": {"and": ["document", {"name": "attention_sinks", "sinks": 1, "window": 1}]}}},
]


def two_documents(seed=0):
    g = torch.Generator().manual_seed(seed)
    first, second = torch.randint(0, 250, (1, 5), generator=g), torch.randint(0, 250, (1, 6), generator=g)
    return first, second, torch.cat([first, second], 1), torch.cat([torch.arange(5), torch.arange(6)])[None]


@pytest.mark.parametrize("backend", ["eager", "sdpa", "flex_attention"])
@pytest.mark.parametrize("spec", PACKED_COMPOSITIONS, ids=["sinks", "chunked", "global_tokens", "or", "layers"])
@torch.no_grad()
def test_a_packed_row_reads_each_document_alone_whatever_use_cache(model_for, backend, spec):
    """Restarting position_ids: the second document's logits equal it alone, under eval defaults (use_cache=True,
    so the body makes a cache), forced on and off, in train mode, with an all-ones mask, and through model.model."""
    model = model_for(backend, spec)
    first, second, row, positions = two_documents()
    alone = model(second, use_cache=False).logits
    for call in ({}, {"use_cache": True}, {"use_cache": False}, {"attention_mask": torch.ones_like(row)}):
        got = model(row, position_ids=positions, **call).logits[:, 5:]
        torch.testing.assert_close(got, alone, atol=1e-5, rtol=1e-5, msg=lambda m: f"{call}: {m}")
    hidden = model.model(row, position_ids=positions).last_hidden_state[:, 5:]
    torch.testing.assert_close(hidden, model.model(second).last_hidden_state, atol=1e-5, rtol=1e-5)
    model.train()
    try:
        torch.testing.assert_close(model(row, position_ids=positions).logits[:, 5:], alone, atol=1e-5, rtol=1e-5)
    finally:
        model.eval()


@pytest.mark.parametrize("spec", PACKED_COMPOSITIONS[:3], ids=["sinks", "chunked", "global_tokens"])
@pytest.mark.parametrize("decoding", [{}, {"use_cache": False}, {"cache_implementation": "static"}, {"num_beams": 2},
                                      {"attention_mask": "ones"}], ids=["dynamic", "no-cache", "static", "beams", "mask"])
@torch.no_grad()
def test_generate_continues_the_last_packed_document_as_if_alone(model_for, spec, decoding):
    model = model_for("sdpa", spec)
    first, second, row, positions = two_documents(seed=1)
    options = dict(max_new_tokens=6, do_sample=False, **decoding)
    if options.get("attention_mask") == "ones":
        options["attention_mask"] = torch.ones_like(row)
    beams = {"num_beams": 2} if "num_beams" in decoding else {}
    want = model.generate(second, max_new_tokens=6, do_sample=False, use_cache=False, **beams)[0, 6:]
    assert model.generate(row, position_ids=positions, **options)[0, 11:].tolist() == want.tolist()


def test_trainer_evaluation_of_packed_rows_reads_each_document_alone(model_for, tmp_path):
    """Trainer.evaluate (eval mode, use_cache left at its default) gives each document's own loss."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments, default_data_collator

    model = model_for("sdpa", PACKED_COMPOSITIONS[0])
    first, second, row, positions = two_documents(seed=2)
    labels = row.clone()
    labels[:, 5] = -100  # the first token of the second document is not predicted across the boundary
    labels[:, 0] = -100  # never a target: so Trainer's token count is 9 whether it counts shifted labels or not (5.4)
    dataset = Dataset.from_dict({"input_ids": row.tolist(), "position_ids": positions.tolist(), "labels": labels.tolist()})
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=1, report_to="none", use_cpu=True)
    loss = Trainer(model=model, args=args, eval_dataset=dataset, data_collator=default_data_collator).evaluate()["eval_loss"]
    with torch.no_grad():
        per_doc = [model(doc, labels=doc, use_cache=False).loss * (doc.shape[1] - 1) for doc in (first, second)]
    assert loss == pytest.approx(float(sum(per_doc) / 9), abs=1e-5)


def test_a_stock_config_read_from_a_newer_plugin_folder_is_refused(checkpoint, tmp_path):
    """The spec-version guard on the paths that convert a stock Qwen3Config: the constructor and config=."""
    from transformers import Qwen3Config

    CustomQwen3ForCausalLM.from_pretrained(checkpoint, mask_strategy="prefix_lm").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["mask_spec_version"] = 99
    (tmp_path / "config.json").write_text(json.dumps(config))
    stock_config = Qwen3Config.from_pretrained(tmp_path)
    for build in (lambda: CustomQwen3ForCausalLM(stock_config),
                  lambda: CustomQwen3ForCausalLM.from_pretrained(tmp_path, config=stock_config)):
        with pytest.raises(ValueError, match="newer qwen3-custom-mask.*pip install -U qwen3-custom-mask"):
            build()


@pytest.mark.parametrize("spec", PACKED_COMPOSITIONS[:3], ids=["sinks", "chunked", "global_tokens"])
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@torch.no_grad()
def test_left_padded_generate_under_a_document_composition_equals_each_prompt_alone(model_for, spec, backend):
    """generate()'s own positions for a left-padded batch (padding at 0, then 0, 1, ...) restart like a packed row's:
    read per document, the padded row's sinks, chunks and global tokens still count from its first real token."""
    model = model_for(backend, spec)
    ids, mask, _ = left_padded(pads=(3, 0))
    out = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)[:, 12:]
    for row, pad in enumerate((3, 0)):
        alone = model.generate(ids[row : row + 1, pad:], max_new_tokens=6, do_sample=False)[:, 12 - pad :]
        assert out[row].tolist() == alone[0].tolist(), row


@torch.no_grad()
def test_a_bounded_cache_refuses_packed_documents_and_keeps_serving_one_per_row(model_for):
    """BoundedCache keeps each row's first tokens as sinks; packed documents each count from their own start, so it
    is refused there (it dropped the last document's sink and drifted), and still serves one prompt per row."""
    model = model_for("sdpa", PACKED_COMPOSITIONS[0])
    first, second, row, positions = two_documents(seed=3)
    with pytest.raises(ValueError, match="BoundedCache cannot hold packed documents"):
        model.generate(row, position_ids=positions, past_key_values=BoundedCache(), max_new_tokens=4, **GREEDY)
    ids, mask, _ = left_padded(pads=(3, 0))
    bounded = model.generate(ids, attention_mask=mask, past_key_values=BoundedCache(), max_new_tokens=6, **GREEDY)
    assert torch.equal(bounded, model.generate(ids, attention_mask=mask, max_new_tokens=6, **GREEDY))
