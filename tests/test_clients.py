"""Clients that rebuild the model from its path (TRL, PEFT's AutoPeftModel): the same model, or a warning with the
fix; never a silently different one. Small models, a step or two each, on the embedded default (the real Qwen3
tokenizer: TRL tokenizes text)."""

import json
import logging
import math

import pytest
import torch
from datasets import Dataset

from qwen3_custom_mask import CustomQwen3ForCausalLM
from qwen3_custom_mask.cli.default import default_checkpoint

trl = pytest.importorskip("trl")  # in the test extra; skipped where a user's stack lacks it

WARNS = "qwen3_custom_mask.model.body"


@pytest.fixture(scope="module")
def stock_dir():
    return default_checkpoint()


@pytest.fixture(scope="module")
def plugin_dir(stock_dir, tmp_path_factory):
    """A saved plugin checkpoint (bidirectional: a mask no stock rebuild would give) with its tokenizer."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("plugin")
    CustomQwen3ForCausalLM.from_pretrained(stock_dir, mask_strategy={"name": "sliding_window", "window": 2}).save_pretrained(out)
    AutoTokenizer.from_pretrained(stock_dir).save_pretrained(out)
    return out


def preferences():
    rows = [("The sky is", " blue.", " green."), ("Two and two make", " four.", " five."), ("Water is", " wet.", " dry."),
            ("Fire is", " hot.", " cold.")]
    return Dataset.from_list([{"prompt": p, "chosen": c, "rejected": r} for p, c, r in rows])


def dpo_step0_loss(model, tmp_path, ref_model=None, tokenizer_dir=None):
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=1, learning_rate=0.0, logging_steps=1,
                     report_to="none", use_cpu=True, save_strategy="no", max_length=32)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=preferences(), processing_class=tokenizer)
    trainer.train()
    return trainer, next(log["loss"] for log in trainer.state.log_history if "loss" in log)


def test_config_answers_what_clients_read(plugin_dir):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(plugin_dir)
    assert config.auto_map == {} and config.architectures == ["CustomQwen3ForCausalLM"]
    assert "auto_map" not in json.loads((plugin_dir / "config.json").read_text())  # nothing claims remote code


def test_dpo_by_path_builds_a_reference_equal_to_the_policy(plugin_dir, tmp_path):
    trainer, loss = dpo_step0_loss(str(plugin_dir), tmp_path, tokenizer_dir=plugin_dir)
    assert isinstance(trainer.ref_model, CustomQwen3ForCausalLM)
    assert trainer.ref_model.mask_strategy == trainer.model.mask_strategy
    assert abs(loss - math.log(2)) < 1e-3, loss


def test_a_load_time_strategy_warns_that_path_rebuilds_differ_and_ref_model_fixes_it(stock_dir, tmp_path, caplog):
    spec = {"name": "sliding_window", "window": 1}  # a spec this process has not loaded yet: the warning comes once
    with caplog.at_level(logging.WARNING, logger=WARNS):
        policy = CustomQwen3ForCausalLM.from_pretrained(stock_dir, mask_strategy=spec)
    assert "DPO" in caplog.text and "GRPO" in caplog.text and "save_pretrained(dir)" in caplog.text and "ref_model=" in caplog.text
    # What TRL builds without ref_model is the folder's causal model, which the warning said: the loss is not log 2.
    _, loss = dpo_step0_loss(policy, tmp_path / "a", tokenizer_dir=stock_dir)
    assert abs(loss - math.log(2)) > 1e-3
    # The fix the warning names: a reference with the same strategy.
    reference = CustomQwen3ForCausalLM.from_pretrained(stock_dir, mask_strategy=spec)
    _, loss = dpo_step0_loss(CustomQwen3ForCausalLM.from_pretrained(stock_dir, mask_strategy=spec), tmp_path / "b", reference, stock_dir)
    assert abs(loss - math.log(2)) < 1e-3, loss


@pytest.mark.parametrize("packing", [False, True])
def test_sft_by_path_loads_the_plugin_with_its_strategy(plugin_dir, tmp_path, packing):
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=1, report_to="none", use_cpu=True,
                     save_strategy="no", max_length=32, packing=packing)
    data = Dataset.from_list([{"text": t} for t in ("hello world", "the sky is blue", "two and two", "water is wet")])
    trainer = SFTTrainer(model=str(plugin_dir), args=args, train_dataset=data)
    assert isinstance(trainer.model, CustomQwen3ForCausalLM) and trainer.model.mask_strategy.name == "sliding_window"
    assert trainer.train().training_loss > 0


@torch.no_grad()
def test_auto_peft_model_rebuilds_a_plugin_base_and_warns_for_a_stock_one(stock_dir, plugin_dir, tmp_path, caplog):
    from peft import AutoPeftModelForCausalLM, LoraConfig, get_peft_model

    ids = torch.tensor([[9707, 1879, 374, 6303, 13, 576]])
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM")
    # A plugin checkpoint as the base: the adapter records that folder, which carries the strategy.
    model = get_peft_model(CustomQwen3ForCausalLM.from_pretrained(plugin_dir), lora).eval()
    model.save_pretrained(tmp_path / "adapter")
    rebuilt = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter").eval()
    assert isinstance(rebuilt.get_base_model(), CustomQwen3ForCausalLM)
    torch.testing.assert_close(rebuilt(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)
    # A strategy given at load time on a stock folder: the adapter can only record the stock folder. Warned at load.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=WARNS):
        CustomQwen3ForCausalLM.from_pretrained(stock_dir, mask_strategy={"name": "sliding_window", "window": 3})
    assert "AutoPeftModelForCausalLM" in caplog.text


# ------------------------------------------------------------ checkpoints whose strategy needs per-call inputs
@pytest.fixture(scope="module")
def tokenizer(stock_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(stock_dir)


def saved(stock_dir, tmp_path, spec, **config):
    model = CustomQwen3ForCausalLM.from_pretrained(stock_dir, mask_strategy=spec)
    for key, value in config.items():
        setattr(model.config, key, value)
    model.save_pretrained(tmp_path)
    return tmp_path


PROMPTS = ["Hello there", "A longer prompt than the other one"]


def test_a_prefix_lm_checkpoint_generates_as_saved_with_the_prompt_as_prefix(stock_dir, tokenizer, tmp_path):
    from transformers import pipeline

    model = CustomQwen3ForCausalLM.from_pretrained(saved(stock_dir, tmp_path, "prefix_lm")).eval()
    tokenizer.padding_side = "left"
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    greedy = dict(max_new_tokens=4, do_sample=False)
    explicit = model.generate(**batch, prefix_lengths=batch["attention_mask"].sum(-1), **greedy)
    assert torch.equal(model.generate(**batch, **greedy), explicit)
    causal = CustomQwen3ForCausalLM.from_pretrained(stock_dir).eval().generate(**batch, **greedy)
    assert not torch.equal(causal, explicit)  # the prefix changes the tokens: the test can tell
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
    texts = [out[0]["generated_text"] for out in pipe(PROMPTS, batch_size=2, **greedy)]
    assert texts == tokenizer.batch_decode(explicit, skip_special_tokens=True)
    with pytest.raises(ValueError, match="prefix_lengths"):
        model(**batch)  # a forward keeps its clear error


def test_a_bidirectional_checkpoint_under_forced_use_cache(stock_dir, tokenizer, tmp_path):
    from transformers import pipeline

    greedy = dict(max_new_tokens=3, do_sample=False)
    batch = tokenizer(PROMPTS[:1], return_tensors="pt")
    plain = CustomQwen3ForCausalLM.from_pretrained(saved(stock_dir, tmp_path / "a", "bidirectional")).eval()
    with pytest.raises(ValueError, match="recompute_when_uncacheable"):
        plain.generate(**batch, use_cache=True, **greedy)
    opted = CustomQwen3ForCausalLM.from_pretrained(saved(stock_dir, tmp_path / "b", "bidirectional", recompute_when_uncacheable=True)).eval()
    expected = plain.generate(**batch, use_cache=False, **greedy)
    assert torch.equal(opted.generate(**batch, use_cache=True, **greedy), expected)
    pipe = pipeline("text-generation", model=opted, tokenizer=tokenizer)
    assert pipe(PROMPTS[0], use_cache=True, **greedy)[0]["generated_text"] == tokenizer.decode(expected[0], skip_special_tokens=True)


def lm_eval_requests(kind, *pairs):
    from lm_eval.api.instance import Instance

    return [Instance(request_type=kind, doc={}, arguments=args, idx=i) for i, args in enumerate(pairs)]


def test_lm_eval_runs_plugin_checkpoints_by_path(stock_dir, tokenizer, tmp_path):
    """lm-eval's HF model, loading by path in a driver that imports the plugin (lm-eval passes use_cache=True)."""
    pytest.importorskip("lm_eval")
    from lm_eval.models.huggingface import HFLM


    until = {"until": ["\n\n"], "max_gen_toks": 3, "do_sample": False}
    # loglikelihood: a plugin checkpoint (causal) equals stock on the same weights.
    tokenizer.save_pretrained(saved(stock_dir, tmp_path / "causal", "causal"))
    pairs = [("The sky is", " blue"), ("Two and two make", " four")]
    ours = HFLM(pretrained=str(tmp_path / "causal"), batch_size=2, device="cpu").loglikelihood(lm_eval_requests("loglikelihood", *pairs))
    stock = HFLM(pretrained=str(stock_dir), batch_size=2, device="cpu").loglikelihood(lm_eval_requests("loglikelihood", *pairs))
    assert ours == stock
    for spec, config in (("prefix_lm", {}), ("bidirectional", {"recompute_when_uncacheable": True})):
        folder = saved(stock_dir, tmp_path / spec, spec, **config)
        tokenizer.save_pretrained(folder)
        lm = HFLM(pretrained=str(folder), batch_size=1, device="cpu")
        assert isinstance(lm.model, CustomQwen3ForCausalLM) and lm.model.mask_strategy.name == spec
        texts = lm.generate_until(lm_eval_requests("generate_until", *[(p, until) for p in PROMPTS]))
        for prompt, text in zip(PROMPTS, texts):
            batch = tokenizer(prompt, return_tensors="pt")
            expected = lm.model.generate(**batch, max_new_tokens=3, do_sample=False, use_cache=spec == "prefix_lm")
            assert text == tokenizer.decode(expected[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)


# ------------------------------------------------------------------------------------------------- ONNX
def test_pairwise_document_positions_equal_the_sorted_ones():
    from qwen3_custom_mask.masks.document import document_positions, pairwise_document_positions

    ids = torch.tensor([[0, 0, 1, 1, 0, 2, 2, 1], [3, 3, 3, 1, 1, 1, 1, 1]])  # interleaved runs, and plain ones
    real = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1, 1]])
    expected = document_positions(ids, real.bool(), training=True)
    assert expected[0].tolist() == [0, 1, 0, 1, 2, 0, 1, 2]
    assert torch.equal(pairwise_document_positions(ids, real), expected)


@pytest.mark.parametrize("spec", ["document", "bidirectional", "prefix_lm"])
def test_onnx_export_without_position_ids_matches_onnxruntime(checkpoint, tmp_path, spec):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = CustomQwen3ForCausalLM.from_pretrained(checkpoint, mask_strategy=spec, attn_implementation="sdpa").eval()
    name = model.mask_strategy.inputs[0] if model.mask_strategy.inputs else None

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, *extra):
            inputs = {name: extra[0]} if name else {}
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **inputs).logits

    ids = torch.randint(0, 250, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    extra = {"document_ids": (torch.tensor([[0] * 5 + [1] * 7, [0] * 6 + [1] * 6]),), "prefix_lengths": (torch.tensor([4, 6]),)}.get(name, ())
    path = tmp_path / "model.onnx"
    torch.onnx.export(Logits(), (ids, mask, *extra), path, dynamo=True, input_names=["input_ids", "attention_mask", *([name] if name else [])])
    session = ort.InferenceSession(str(path))
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), **({name: extra[0].numpy()} if name else {})}
    with torch.no_grad():
        expected = Logits()(ids, mask, *extra)
    got = torch.from_numpy(session.run(None, feeds)[0])
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-4, rtol=1e-4)


def test_prefix_default_reads_padding_from_the_pad_id_without_a_mask(checkpoint):
    model = CustomQwen3ForCausalLM.from_pretrained(checkpoint, mask_strategy="prefix_lm").eval()
    ids = torch.tensor([[0, 0, 0, 0, 5, 6, 7, 8, 9, 10], list(range(20, 30))])  # row 0 left-padded with pad id 0
    greedy = dict(max_new_tokens=3, do_sample=False, pad_token_id=0)
    mask = (ids != 0).long()
    expected = model.generate(ids, attention_mask=mask, prefix_lengths=mask.sum(-1), **greedy)
    assert torch.equal(model.generate(ids, **greedy), expected)


def test_recompute_does_not_retry_on_a_cache_the_caller_passed(stock_dir, tokenizer, tmp_path):
    from transformers import DynamicCache

    model = CustomQwen3ForCausalLM.from_pretrained(saved(stock_dir, tmp_path, "bidirectional", recompute_when_uncacheable=True)).eval()
    batch = tokenizer(PROMPTS[:1], return_tensors="pt")
    with pytest.raises(ValueError, match="cannot honour"):  # the cache check's own error, not a confusing later one
        model.generate(**batch, max_new_tokens=2, do_sample=False, use_cache=True, cache=DynamicCache(config=model.config))


def test_the_rebuild_warning_also_comes_with_output_loading_info(checkpoint, caplog):
    with caplog.at_level(logging.WARNING, logger=WARNS):
        model, info = CustomQwen3ForCausalLM.from_pretrained(checkpoint, mask_strategy={"name": "sliding_window", "window": 5},
                                                             output_loading_info=True)
    assert model.mask_strategy.name == "sliding_window" and "AutoPeftModelForCausalLM" in caplog.text


PADDING_FREE_SPECS = [
    "causal",
    {"name": "sliding_window", "window": 3},
    {"name": "chunked", "chunk_size": 2},
    {"name": "attention_sinks", "sinks": 1, "window": 2},
    {"name": "dilated_sliding_window", "window": 4, "dilation": 2},
    {"name": "global_tokens", "tokens": [0], "window": 2},
    {"or": [{"name": "sliding_window", "window": 2}, {"name": "attention_sinks", "sinks": 1, "window": 1}]},
    {"and": ["document", {"name": "sliding_window", "window": 2}]},
    {"and": ["document", {"name": "attention_sinks", "sinks": 1, "window": 2}]},
    {"and": ["document", {"name": "chunked", "chunk_size": 2}]},
    {"or": ["document", {"name": "sliding_window", "window": 2}]},
    {"layers": {"0": "document", "1": {"name": "chunked", "chunk_size": 3}}},
]


def padding_free_batch(model, tmp_path):
    """A batch exactly as TRL's SFTTrainer feeds it with packing=True (bfd, which turns padding-free on)."""
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=1, max_steps=1, report_to="none", use_cpu=True,
                     save_strategy="no", max_length=48, packing=True, padding_free=True)
    texts = ["the sky is blue today", "two and two make four", "water is wet", "fire is hot and bright"]
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list([{"text": t} for t in texts]),
                         processing_class=AutoTokenizer.from_pretrained(default_checkpoint()))
    batch = next(iter(trainer.get_train_dataloader()))
    return trainer, batch


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("spec", PADDING_FREE_SPECS, ids=lambda s: json.dumps(s)[:60])
@torch.no_grad()
def test_trl_padding_free_packing_keeps_each_document_alone(stock_dir, tmp_path, spec, backend):
    """TRL 1.16's default packing (bfd + padding-free): position_ids restart per document, no attention_mask.
    Every strategy sees each document as if it stood alone, as stock's builders do (a windowed strategy leaked
    across documents: logits off by 3.8)."""
    model = CustomQwen3ForCausalLM.from_pretrained(stock_dir, attn_implementation=backend)
    model.set_mask_strategy(spec)
    model.config.attention_dropout = 0.0
    _, batch = padding_free_batch(model, tmp_path)
    assert "attention_mask" not in batch and "position_ids" in batch
    positions = batch["position_ids"][0]
    starts = (positions == 0).nonzero().view(-1).tolist() + [positions.numel()]
    assert len(starts) > 2, "TRL packed at least two documents into the row"
    model.eval()
    packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    for start, end in zip(starts, starts[1:]):
        alone = model(input_ids=batch["input_ids"][:, start:end], position_ids=torch.arange(end - start)[None], use_cache=False).logits
        torch.testing.assert_close(packed[:, start:end], alone, atol=2e-4, rtol=2e-4)


def test_trl_padding_free_packing_refuses_a_per_row_input(stock_dir, tmp_path):
    model = CustomQwen3ForCausalLM.from_pretrained(stock_dir, mask_strategy="prefix_lm")
    _, batch = padding_free_batch(model, tmp_path)
    with pytest.raises(ValueError, match="position_ids restart inside a row .* 'prefix_lm' takes \\['prefix_lengths'\\]"):
        model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], prefix_lengths=torch.tensor([3]), use_cache=False)


def test_trl_padding_free_sft_trains_on_the_isolated_documents(stock_dir, tmp_path):
    """The SFT loss TRL computes on a padding-free packed batch is the mean over each document trained alone."""
    model = CustomQwen3ForCausalLM.from_pretrained(stock_dir, mask_strategy={"name": "sliding_window", "window": 3})
    model.config.attention_dropout = 0.0
    trainer, batch = padding_free_batch(model, tmp_path)
    model.train()
    loss = trainer.compute_loss(model, batch)
    positions = batch["position_ids"][0]
    starts = (positions == 0).nonzero().view(-1).tolist() + [positions.numel()]
    total, count = 0.0, 0
    for start, end in zip(starts, starts[1:]):
        ids = batch["input_ids"][:, start:end]
        labels = batch["labels"][:, start:end]
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
        target = labels[:, 1:]
        keep = target != -100
        total = total + torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum")
        count += int(keep.sum())
    torch.testing.assert_close(loss, total / count, atol=1e-4, rtol=1e-4)


IMPORTED_AFTER = r"""
import sys
import torch
from qwen3_custom_mask import CustomQwen3ForCausalLM
assert "peft" not in sys.modules and "trl" not in sys.modules, "imported too early for this test"
model = CustomQwen3ForCausalLM.from_pretrained(sys.argv[1])
if sys.argv[2] == "peft":
    from peft import IA3Config, LoraConfig, get_peft_model
    lora = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM")).peft_config["default"].target_modules
    model = CustomQwen3ForCausalLM.from_pretrained(sys.argv[1])
    ia3 = get_peft_model(model, IA3Config(task_type="CAUSAL_LM")).peft_config["default"].target_modules
    from transformers import Qwen3ForCausalLM
    stock = [sorted(get_peft_model(Qwen3ForCausalLM.from_pretrained(sys.argv[1]), c(task_type="CAUSAL_LM")).peft_config["default"].target_modules)
             for c in (LoraConfig, IA3Config)]
    print(sorted(lora), sorted(ia3), "stock:", *stock)
else:  # TRL imports PEFT itself, lazily, for peft_config=
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer
    from peft import LoraConfig
    args = SFTConfig(output_dir=sys.argv[3], max_steps=1, report_to="none", use_cpu=True, save_strategy="no", max_length=16)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list([{"text": "The sky is blue."}] * 2),
                         processing_class=AutoTokenizer.from_pretrained(sys.argv[1]), peft_config=LoraConfig(task_type="CAUSAL_LM"))
    print(sorted(trainer.model.peft_config["default"].target_modules))
"""


@pytest.mark.parametrize("client", ["peft", "trl"])
def test_peft_defaults_whatever_the_import_order(stock_dir, tmp_path, client):
    """PEFT imported after the model is built (the usual order in a script, and TRL's lazy import for peft_config=):
    the plugin's model_type still gets Qwen3's default target modules. (This session imports PEFT first: a fresh one.)"""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", IMPORTED_AFTER, str(stock_dir), client, str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    if client == "peft":  # LoRA, IA3: what stock Qwen3 gets in the same process
        plugin, stock = last.split(" stock: ")
        assert plugin == stock and "q_proj" in plugin, last
    else:
        assert last == "['q_proj', 'v_proj']", last


REBUILD_WARNING = r"""
import sys
import torch
from transformers import Trainer  # imports PEFT when installed: not a reason to speak
from qwen3_custom_mask import CustomQwen3ForCausalLM
model = CustomQwen3ForCausalLM.from_pretrained(sys.argv[1], mask_strategy={"name": "sliding_window", "window": 3})
model(torch.tensor([[1, 2, 3]]))
print("loaded", file=sys.stderr, flush=True)
if sys.argv[2] == "peft":  # adapters on the model: AutoPeftModel will rebuild the stock folder
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(model, LoraConfig(target_modules=["q_proj"], task_type="CAUSAL_LM"))
    model(torch.tensor([[1, 2, 3]]))
    model(torch.tensor([[1, 2, 3]]))
else:
    import trl  # noqa: F401  (TRL's trainers rebuild references from the path)
    CustomQwen3ForCausalLM.from_pretrained(sys.argv[1], mask_strategy={"name": "sliding_window", "window": 3})
"""


@pytest.mark.parametrize("client", ["peft", "trl"])
def test_the_rebuild_line_is_said_once_where_a_rebuilding_client_is_at_work(stock_dir, client):
    """Not for a script with Trainer alone (which imports PEFT); once PEFT adapters sit on the model, or TRL is
    imported: one line, once."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", REBUILD_WARNING, str(stock_dir), client], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    before, after = proc.stderr.split("loaded\n")
    assert "records mask_strategy" not in before, before
    lines = [line for line in after.splitlines() if "records mask_strategy" in line]
    assert len(lines) == 1 and len(lines[0]) < 300 and "ref_model=" in lines[0] and "AutoPeftModelForCausalLM" in lines[0], after
