"""A drop-in on every path stock takes: the body, every Auto head, static caches, compiled decoding, the mask
formats stock accepts, embeddings, and checkpoints that stock loads."""

import json

import pytest
import torch
from torch._dynamo.utils import counters
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    CompileConfig,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3ForQuestionAnswering,
    Qwen3ForSequenceClassification,
    Qwen3ForTokenClassification,
    Qwen3Model,
    StaticCache,
)

from qwen3_custom_mask import (
    CustomQwen3ForCausalLM,
    CustomQwen3ForQuestionAnswering,
    CustomQwen3ForSequenceClassification,
    CustomQwen3ForTokenClassification,
    CustomQwen3Model,
)
from qwen3_custom_mask.serving.export import export_stock
from qwen3_custom_mask.strategy.reference import reference_mask
from qwen3_custom_mask.cli.tiny import save_tiny_checkpoint, tiny_qwen3_config

from conftest import CONFIGS, left_padded
from strategies import CACHEABLE, CASES, expected_logits

GREEDY = dict(max_new_tokens=8, do_sample=False)
HEADS = [
    (AutoModelForSequenceClassification, CustomQwen3ForSequenceClassification, Qwen3ForSequenceClassification, "logits"),
    (AutoModelForTokenClassification, CustomQwen3ForTokenClassification, Qwen3ForTokenClassification, "logits"),
    (AutoModelForQuestionAnswering, CustomQwen3ForQuestionAnswering, Qwen3ForQuestionAnswering, "start_logits"),
]


def additive(mask: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """A bool mask as stock's additive float form: 0 = attend, finfo.min = blocked."""
    return torch.where(mask, torch.zeros((), dtype=dtype), torch.finfo(dtype).min)


def strategy_mask(model, ids, mask, inputs) -> torch.Tensor:
    """(B, 1|H, L, L) bool: the model's strategy element by element (the reference's mask), AND padding."""
    padding = mask.bool()
    strategy = model.mask_strategy
    heads = model.config.num_attention_heads
    return reference_mask(strategy.mask_mod(**inputs, padding_mask=padding, num_heads=heads), ids.shape[0], heads, ids.shape[1], padding)


# ---------------------------------------------------------------------------------------- the body
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("case", sorted(CASES))
@torch.no_grad()
def test_the_body_alone_honours_the_strategy(model_for, backend, case):
    """model.model(...) (what AutoModel returns) gives the hidden states the reference gives."""
    spec, inputs = CASES[case]
    model = model_for(backend, spec)
    ids, mask, positions = left_padded()
    given = None if model.mask_strategy.places_tokens else positions
    hidden = model.model(ids, attention_mask=mask, position_ids=given, **inputs).last_hidden_state
    ref = expected_logits(model, ids, mask, positions, inputs)
    real = mask.bool()
    torch.testing.assert_close(model.lm_head(hidden)[real], ref[real], atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_auto_classes_bring_back_every_head_with_its_strategy(checkpoint, tmp_path):
    spec = {"name": "sliding_window", "window": 3}
    CustomQwen3ForCausalLM.from_pretrained(checkpoint, mask_strategy=spec).save_pretrained(tmp_path)
    ids, mask, _ = left_padded(pads=(0, 0))
    body = AutoModel.from_pretrained(tmp_path).eval()
    assert type(body) is CustomQwen3Model and body.mask_strategy.to_dict() == spec
    lm = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(lm) is CustomQwen3ForCausalLM and lm.mask_strategy.to_dict() == spec
    torch.testing.assert_close(body(ids).last_hidden_state, lm.model(ids).last_hidden_state)
    dense = additive(strategy_mask(lm, ids, mask, {}))
    for auto, ours, stock, output in HEADS:
        head = auto.from_pretrained(tmp_path, pad_token_id=255).eval()
        assert type(head) is ours and type(head.base_model) is CustomQwen3Model
        assert head.mask_strategy.to_dict() == spec
        # Stock's head on the same weights, given the strategy's mask as a ready additive 4D mask.
        twin = stock(Qwen3Config(**{k: v for k, v in head.config.to_dict().items() if k not in ("model_type", "mask_strategy")})).eval()
        twin.load_state_dict(head.state_dict())
        expected = getattr(twin(ids, attention_mask=dense), output)
        torch.testing.assert_close(getattr(head(ids), output), expected, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(getattr(twin(ids), output), expected, atol=1e-3)  # the strategy matters


@pytest.mark.parametrize("cls", [CustomQwen3Model, CustomQwen3ForCausalLM, CustomQwen3ForSequenceClassification,
                                 CustomQwen3ForTokenClassification, CustomQwen3ForQuestionAnswering])
def test_every_class_takes_a_plain_qwen3_config(cls):
    config = tiny_qwen3_config(pad_token_id=0)
    config._attn_implementation = "eager"
    model = cls(config)
    assert type(model.base_model) is CustomQwen3Model
    assert model.config.model_type == "qwen3_custom_mask" and model.config._attn_implementation == "eager"
    model.set_mask_strategy("bidirectional")
    assert model.base_model.mask_strategy.name == "bidirectional" and model.config.mask_strategy == {"name": "bidirectional"}


# ------------------------------------------------------------------------------ static caches, compile
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("case", CACHEABLE)
def test_static_cache_generation_equals_dynamic(model_for, backend, case, config):
    """Greedy and beam search on a left-padded batch: a static cache gives the dynamic cache's tokens."""
    spec, inputs = CASES[case]
    model = model_for(backend, spec, config)
    ids, mask, _ = left_padded()
    dynamic = model.generate(ids, attention_mask=mask, **GREEDY, **inputs)
    assert torch.equal(model.generate(ids, attention_mask=mask, cache_implementation="static", **GREEDY, **inputs), dynamic)
    assert torch.equal(model.generate(ids, attention_mask=mask, use_cache=False, **GREEDY, **inputs), dynamic)
    beams = dict(max_new_tokens=4, num_beams=2, do_sample=False)
    assert torch.equal(
        model.generate(ids, attention_mask=mask, cache_implementation="static", **beams, **inputs),
        model.generate(ids, attention_mask=mask, **beams, **inputs),
    )


def test_static_cache_masks_come_from_the_strategy(model_for):
    """create_masks_for_generate (generate()'s hook for static caches) builds the strategy's masks, sized
    from the cache: the mask rows differ from plain causal ones."""
    model = model_for("sdpa", {"name": "sliding_window", "window": 3})
    cache = StaticCache(config=model.config, max_cache_len=16)
    ids, mask, positions = left_padded()
    model(ids, attention_mask=mask, position_ids=positions, past_key_values=cache)
    step = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
    masks = model.create_masks_for_generate(model.config, torch.empty(2, 1, 0), step, cache, positions[:, -1:] + 1)
    built, _ = masks["full_attention"][0]
    assert built.shape == (2, 1, 1, 16)
    assert built[1, 0, 0].tolist() == [False] * 10 + [True] * 3 + [False] * 3  # last 3 keys; empty slots unseen


def _compiled_generation(model, **inputs):
    torch._dynamo.reset()
    counters.clear()
    config = CompileConfig(backend="eager", fullgraph=True, mode=None)
    config._compile_all_devices = True  # generate() compiles on CPU too
    ids, mask, _ = left_padded()
    out = model.generate(ids, attention_mask=mask, max_new_tokens=32, do_sample=False, cache_implementation="static",
                         compile_config=config, pad_token_id=255, **inputs)
    return out, {"graphs": counters["stats"]["unique_graphs"], "breaks": sum(counters["graph_break"].values()),
                 "frames": counters["stats"]["calls_captured"]}


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_compiled_static_generation_compiles_like_stock(checkpoint, model_for, backend):
    """32 tokens of auto-compiled static-cache generation: as many graphs, graph breaks (none) and captured
    calls as stock, and the dynamic cache's tokens."""
    stock = Qwen3ForCausalLM.from_pretrained(checkpoint, attn_implementation=backend).eval()
    expected_tokens, expected = _compiled_generation(stock)
    assert expected["graphs"] == 1 and expected["breaks"] == 0
    for case in ["causal", "sliding_window", "prefix_lm", "document"]:
        spec, inputs = CASES[case]
        model = model_for(backend, spec)
        tokens, seen = _compiled_generation(model, **inputs)
        assert seen == expected, case
        ids, mask, _ = left_padded()
        assert torch.equal(tokens, model.generate(ids, attention_mask=mask, max_new_tokens=32, do_sample=False, pad_token_id=255, **inputs))
        if case == "causal":
            assert torch.equal(tokens, expected_tokens)


@pytest.mark.parametrize("prebuilt", [True, False], ids=["masks-from-create_masks_for_generate", "2d-mask"])
@pytest.mark.parametrize("case", ["causal", "sliding_window", "prefix_lm", "attention_sinks"])
@torch.no_grad()
def test_fullgraph_compiled_forward_decodes_a_static_cache(model_for, case, prebuilt):
    spec, inputs = CASES[case]
    model = model_for("sdpa", spec)
    ids, mask, positions = left_padded()

    def decode(forward):
        cache = StaticCache(config=model.config, max_cache_len=16)
        model(ids, attention_mask=mask, position_ids=positions, past_key_values=cache, **inputs)
        padding, steps = mask, []
        for t in range(3):
            token, position = torch.tensor([[5 + t], [6 + t]]), positions[:, -1:] + 1 + t
            padding = torch.cat([padding, torch.ones(2, 1, dtype=torch.long)], 1)
            if prebuilt:
                masks = model.create_masks_for_generate(model.config, torch.empty(2, 1, 0), padding, cache, position, **inputs)
                steps.append(forward(token, attention_mask=masks, position_ids=position, past_key_values=cache).logits)
            else:
                steps.append(forward(token, attention_mask=padding, position_ids=position, past_key_values=cache, **inputs).logits)
        return torch.cat(steps, 1)

    expected = decode(model.forward)
    torch._dynamo.reset()
    counters.clear()
    compiled = decode(torch.compile(model.forward, backend="eager", fullgraph=True))  # raises on any graph break
    assert sum(counters["graph_break"].values()) == 0
    torch.testing.assert_close(compiled, expected, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------- mask formats
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@torch.no_grad()
def test_mask_formats_stock_accepts_mean_what_they_mean_in_stock(checkpoint, model_for, backend):
    stock = Qwen3ForCausalLM.from_pretrained(checkpoint, attn_implementation=backend).eval()
    model = model_for(backend, "bidirectional")  # a 4D mask or a ready dict replaces the strategy
    ids, mask, positions = left_padded()
    visible = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(0)) > 0.4
    visible |= torch.eye(12, dtype=torch.bool)
    float_mask = additive(visible)
    expected = stock(ids, attention_mask=float_mask, position_ids=positions).logits
    # An additive float mask: handed to the attention as stock does, bit for bit.
    assert torch.equal(model(ids, attention_mask=float_mask, position_ids=positions).logits, expected)
    # A ready {layer_type: mask} dict: used as it is.
    ready = {"full_attention": float_mask}
    assert torch.equal(model(ids, attention_mask=ready, position_ids=positions).logits, stock(ids, attention_mask=ready, position_ids=positions).logits)
    # 0/1 integer and bool 4D masks: 1 / True = attend.
    for as_given in (visible.long(), visible.int(), visible):
        torch.testing.assert_close(model(ids, attention_mask=as_given, position_ids=positions).logits, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="would be ignored"):
        model.set_mask_strategy("prefix_lm")
        model(ids, attention_mask=ready, prefix_lengths=torch.tensor([2, 2]))


@pytest.mark.parametrize("backend", ["eager", "sdpa", "flex_attention"])
@torch.no_grad()
def test_additive_float_masks_in_cached_decode_and_generate(model_for, backend):
    """A 0/finfo.min float mask works wherever a bool one does: flex_attention, cached decode, generate()."""
    from test_generate import random_prompt_mask

    model = model_for(backend)
    ids, mask, positions = left_padded()
    prompt = random_prompt_mask(1) & torch.ones(12, 12, dtype=torch.bool).tril()
    as_bool = model(ids, attention_mask=prompt, position_ids=positions).logits
    as_float = model(ids, attention_mask=additive(prompt), position_ids=positions).logits
    torch.testing.assert_close(as_float[mask.bool()], as_bool[mask.bool()], atol=1e-5, rtol=1e-5)
    if backend == "flex_attention":
        return  # generate() on CPU flex compiles once per length: the eager/sdpa cases cover the generate path
    out = model.generate(ids, attention_mask=additive(prompt), **GREEDY)
    assert torch.equal(out, model.generate(ids, attention_mask=prompt, **GREEDY))


# --------------------------------------------------------------------------------------- embeddings
@torch.no_grad()
def test_embeddings_through_automodel_and_sentence_transformers(tmp_path):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    from transformers import AutoTokenizer

    from qwen3_custom_mask.cli.default import default_checkpoint

    source = default_checkpoint()
    CustomQwen3ForCausalLM.from_pretrained(source, mask_strategy="bidirectional").save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(source).save_pretrained(tmp_path)
    encoder = sentence_transformers.SentenceTransformer(str(tmp_path), device="cpu")
    texts = ["The capital of France is Paris.", "Attention masks decide what each token sees."]
    embeddings = encoder.encode(texts, convert_to_tensor=True)

    body = AutoModel.from_pretrained(tmp_path).eval()
    assert type(body) is CustomQwen3Model and body.mask_strategy.name == "bidirectional"
    features = encoder.tokenize(texts)  # sentence-transformers' own formatting of the texts
    hidden = body(input_ids=features["input_ids"], attention_mask=features["attention_mask"]).last_hidden_state
    pooled = {"lasttoken": hidden[:, -1], "mean": (hidden * features["attention_mask"][..., None]).sum(1) / features["attention_mask"].sum(1, keepdim=True)}
    torch.testing.assert_close(embeddings, pooled[encoder[1].pooling_mode], atol=1e-5, rtol=1e-5)
    # Bidirectional: the first token's state depends on the last token (it would not under causal).
    changed = features["input_ids"].clone()
    changed[:, -1] = 42
    assert not torch.allclose(body(input_ids=changed, attention_mask=features["attention_mask"]).last_hidden_state[:, 1], hidden[:, 1])


# ---------------------------------------------------------------------------------- stock checkpoints
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize(
    "spec",
    ["causal", "bidirectional", {"name": "sliding_window", "window": 3}, {"layers": {"0": "causal", "1": {"name": "sliding_window", "window": 3}}}],
    ids=["causal", "bidirectional", "sliding_window", "layers"],
)
@torch.no_grad()
def test_export_to_stock_gives_identical_logits(checkpoint, tmp_path, backend, spec):
    model = CustomQwen3ForCausalLM.from_pretrained(checkpoint, attn_implementation=backend, mask_strategy=spec).eval()
    export_stock(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "qwen3"
    stock = Qwen3ForCausalLM.from_pretrained(tmp_path, attn_implementation=backend).eval()
    ids, mask, _ = left_padded()
    assert torch.equal(stock(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits)
    back = CustomQwen3ForCausalLM.from_pretrained(tmp_path, attn_implementation=backend).eval()
    assert torch.equal(back(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits)


@pytest.mark.parametrize(
    "spec,sliding",
    [("causal", []), ("bidirectional", []), ({"name": "sliding_window", "window": 3}, [0, 1]),
     ({"layers": {"0": "causal", "1": {"name": "sliding_window", "window": 3}}}, [1])],
    ids=["causal", "bidirectional", "sliding_window", "last_layer_slides"],
)
def test_export_writes_every_runtimes_flags_and_legacy_fields_that_agree(checkpoint, tmp_path, spec, sliding, caplog):
    """is_causal and use_bidirectional_attention (text-embeddings-inference); use_sliding_window and
    max_window_layers such that Qwen3Config rebuilt without layer_types gives the same layers."""
    model = CustomQwen3ForCausalLM.from_pretrained(checkpoint, mask_strategy=spec)
    with caplog.at_level("WARNING", logger="qwen3_custom_mask.serving.export"):
        export_stock(model, tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    bidirectional = spec == "bidirectional"
    assert written["is_causal"] is not bidirectional and written["use_bidirectional_attention"] is bidirectional
    assert [i for i, kind in enumerate(written["layer_types"]) if kind == "sliding_attention"] == sliding
    legacy = {k: v for k, v in written.items() if k != "layer_types"}
    assert Qwen3Config(**legacy).layer_types == written["layer_types"]
    some_layers = bool(sliding) and len(sliding) < len(written["layer_types"])  # vLLM 0.32 serves all-layer windows
    assert ("vllm issue 39514" in caplog.text) is some_layers
    assert ("use_bidirectional_attention" in caplog.text) is bidirectional


def test_export_refuses_a_sliding_pattern_the_legacy_fields_cannot_state(tmp_path):
    path = save_tiny_checkpoint(tmp_path / "three", num_hidden_layers=3)
    model = CustomQwen3ForCausalLM.from_pretrained(path, mask_strategy={"layers": {"0": {"name": "sliding_window", "window": 3}, "1": "causal", "2": "causal"}})
    with pytest.raises(ValueError, match=r"layers \[0\] slide.*every layer from k on"):
        export_stock(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@torch.no_grad()
def test_export_of_a_peft_model_merges_the_adapter(checkpoint, tmp_path):
    from peft import LoraConfig, get_peft_model

    model = CustomQwen3ForCausalLM.from_pretrained(checkpoint, mask_strategy={"name": "sliding_window", "window": 3})
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)).eval()
    ids, mask, _ = left_padded()
    expected = peft_model(ids, attention_mask=mask).logits
    base = CustomQwen3ForCausalLM.from_pretrained(checkpoint, mask_strategy={"name": "sliding_window", "window": 3}).eval()
    assert (expected - base(ids, attention_mask=mask).logits).abs().max() > 1e-3  # the adapter changes the logits
    export_stock(peft_model, tmp_path / "stock")
    stock = Qwen3ForCausalLM.from_pretrained(tmp_path / "stock").eval()
    torch.testing.assert_close(stock(ids, attention_mask=mask).logits, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(peft_model(ids, attention_mask=mask).logits, expected)  # the PEFT model is left as it was


@pytest.mark.parametrize("causal", [True, False])
@torch.no_grad()
def test_a_document_checkpoint_works_as_saved_and_exports_its_direction(checkpoint, tmp_path, causal):
    """Trained on packed rows, used as saved: a row without boundaries is one document (causal, or bidirectional
    with causal=False): forward, generate and pipeline equal stock on the same weights; the export is that form."""
    from transformers import pipeline

    spec = {"name": "document", "causal": causal}
    CustomQwen3ForCausalLM.from_pretrained(checkpoint, mask_strategy=spec).save_pretrained(tmp_path / "saved")
    model = CustomQwen3ForCausalLM.from_pretrained(tmp_path / "saved").eval()
    stock = Qwen3ForCausalLM.from_pretrained(checkpoint, attn_implementation="sdpa").eval()
    if not causal:
        stock.config.is_causal = False  # stock's bidirectional switch
    ids, mask, _ = left_padded()
    real = mask.bool()  # padding rows carry no meaning
    torch.testing.assert_close(model(ids, attention_mask=mask).logits[real], stock(ids, attention_mask=mask).logits[real], atol=1e-5, rtol=1e-5)
    if causal:
        kwargs = dict(attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=255)
        assert torch.equal(model.generate(ids, **kwargs), stock.generate(ids, **kwargs))
        from transformers import AutoTokenizer

        from qwen3_custom_mask.cli.default import default_checkpoint

        path = default_checkpoint()  # the real Qwen3 tokenizer and vocabulary
        tokenizer = AutoTokenizer.from_pretrained(path)
        ours = pipeline("text-generation", model=CustomQwen3ForCausalLM.from_pretrained(path, mask_strategy=spec), tokenizer=tokenizer)
        theirs = pipeline("text-generation", model=Qwen3ForCausalLM.from_pretrained(path), tokenizer=tokenizer)
        prompts = ["Hello there", "A longer prompt than the other"]
        run = lambda pipe: pipe(prompts, max_new_tokens=4, do_sample=False, batch_size=2)  # noqa: E731
        assert run(ours) == run(theirs)
    export_stock(model, tmp_path / "stock")
    exported = json.loads((tmp_path / "stock" / "config.json").read_text())
    assert exported.get("is_causal", True) is causal
    again = Qwen3ForCausalLM.from_pretrained(tmp_path / "stock", attn_implementation="sdpa").eval()
    torch.testing.assert_close(again(ids, attention_mask=mask).logits[real], model(ids, attention_mask=mask).logits[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "spec,match",
    [
        ("prefix_lm", r"\['prefix_lm'\] has no standard form"),
        ({"name": "global_tokens", "tokens": [0], "window": 4}, "no standard form"),
        ({"layers": {"0": "bidirectional", "1": "causal"}}, "direction for the whole model"),
        ({"layers": {"0": {"name": "sliding_window", "window": 3}, "1": {"name": "sliding_window", "window": 5}}}, r"windows \[3, 5\]"),
    ],
)
def test_export_refuses_what_stock_cannot_express(checkpoint, tmp_path, spec, match):
    model = CustomQwen3ForCausalLM.from_pretrained(checkpoint, mask_strategy=spec)
    with pytest.raises(ValueError, match=match):
        export_stock(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_stock_bidirectional_checkpoint_loads_as_the_bidirectional_strategy(tmp_path):
    config = tiny_qwen3_config(is_causal=False)
    Qwen3Model(config).save_pretrained(tmp_path)
    assert CustomQwen3Model.from_pretrained(tmp_path).mask_strategy.name == "bidirectional"


# ------------------------------------------------------------------- generate paths an outside review walked
@pytest.mark.parametrize("case", ["prefix_lm", "document", "sliding_window", "and", "layers_cacheable"])
def test_chunked_prefill_and_continuing_a_cache_give_the_same_tokens(model_for, case):
    spec, inputs = CASES[case]
    model = model_for("sdpa", spec)
    ids, mask, _ = left_padded()
    whole = model.generate(ids, attention_mask=mask, **GREEDY, **inputs)
    chunked = model.generate(ids, attention_mask=mask, prefill_chunk_size=8, **GREEDY, **inputs)  # prefixes in chunk 1
    assert torch.equal(chunked, whole)
    # Continue a cache with only the new tokens and the full 2D mask (a form stock supports).
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    first = model.generate(ids[:, :10], attention_mask=mask[:, :10], max_new_tokens=1, do_sample=False, past_key_values=cache,
                           **{k: (v[:, :10] if k == "document_ids" else v) for k, v in inputs.items()})
    assert first.shape[1] == 11 and cache.get_seq_length() == 10  # the prompt's first 10 tokens are cached
    rest = model.generate(ids[:, 10:], attention_mask=mask, past_key_values=cache, **GREEDY, **inputs)
    assert torch.equal(rest[:, -GREEDY["max_new_tokens"]:], whole[:, 12:])


def test_a_prefix_split_across_prefill_chunks_is_refused(model_for):
    """Prefill chunks are cached one after the other: a bidirectional prefix spanning two cannot be honoured."""
    model = model_for("sdpa", "prefix_lm")
    ids, mask, _ = left_padded(pads=(0, 0))
    with pytest.raises(ValueError, match="attend to tokens generated after it|exceed the number of tokens"):
        model.generate(ids, attention_mask=mask, prefill_chunk_size=4, prefix_lengths=torch.tensor([6, 6]), **GREEDY)
    with pytest.raises(ValueError, match="inside the first chunk"):  # one token past the first chunk
        model.generate(ids, attention_mask=mask, prefill_chunk_size=4, prefix_lengths=torch.tensor([5, 5]), **GREEDY)
    # A prefix inside the first chunk is fine.
    inside = model.generate(ids, attention_mask=mask, prefill_chunk_size=4, prefix_lengths=torch.tensor([4, 4]), **GREEDY)
    assert torch.equal(inside, model.generate(ids, attention_mask=mask, prefix_lengths=torch.tensor([4, 4]), **GREEDY))


@pytest.mark.parametrize("case", ["prefix_lm", "document", "sliding_window"])
def test_assisted_decoding_gives_the_greedy_tokens(model_for, case):
    spec, inputs = CASES[case]
    model = model_for("sdpa", spec)
    ids, _, _ = left_padded(pads=(0, 0))
    row = {k: v[1:2] for k, v in inputs.items()}
    greedy = model.generate(ids[1:2], **GREEDY, **row)
    assert torch.equal(model.generate(ids[1:2], assistant_model=model, **GREEDY, **row), greedy)
    assert torch.equal(model.generate(ids[1:2], prompt_lookup_num_tokens=2, **GREEDY, **row), greedy)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@torch.no_grad()
def test_stock_bidirectional_checkpoint_with_sliding_layers_runs_as_stock(tmp_path, backend):
    """is_causal: false on a config with sliding layers: stock's bidirectional window |q - kv| <= w."""
    config = tiny_qwen3_config(is_causal=False, use_sliding_window=True, sliding_window=4, max_window_layers=1)
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(tmp_path / "stock")
    stock = Qwen3ForCausalLM.from_pretrained(tmp_path / "stock", attn_implementation=backend).eval()
    ours = CustomQwen3ForCausalLM.from_pretrained(tmp_path / "stock", attn_implementation=backend).eval()
    assert ours.mask_strategy.name == "bidirectional"
    ids, mask, _ = left_padded(pads=(0, 0))
    torch.testing.assert_close(ours(ids).logits, stock(ids).logits, atol=1e-5, rtol=1e-5)
    export_stock(ours, tmp_path / "again")
    again = Qwen3ForCausalLM.from_pretrained(tmp_path / "again", attn_implementation=backend).eval()
    torch.testing.assert_close(again(ids).logits, stock(ids).logits, atol=1e-5, rtol=1e-5)
