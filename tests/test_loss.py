"""The chunked training loss (loss.py, ``config.loss_chunk_size``): the same loss and every gradient as stock's
full-logits loss (fp32, 1e-5) for each objective, and never a (tokens, vocab) tensor larger than one chunk."""

import pytest
import torch
from datasets import Dataset
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import Trainer, TrainingArguments, default_data_collator

from qwen3_custom_mask import CustomQwen3ForCausalLM
from qwen3_custom_mask.model.loss import chunked_causal_lm_loss
from qwen3_custom_mask.training.packing import pack_examples
from qwen3_custom_mask.training.collators import CausalLMCollator, MNTPCollator, PrefixLMCollator


def examples(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 250, (n,), generator=g).tolist() for n in lengths]


def batches():
    """One batch per objective, as the recipes' collators build them."""
    torch.manual_seed(0)
    rows = examples([9, 5, 12])
    prompts = [{"input_ids": r, "prefix_lengths": p} for r, p in zip(rows, (3, 1, 6))]
    packed = pack_examples({"input_ids": examples([5, 9, 3, 7, 6, 4, 8, 2], seed=1)}, max_length=16, pad_token_id=0)
    return {
        "causal_lm": ("causal", CausalLMCollator(pad_token_id=0)([{"input_ids": r} for r in rows])),
        "causal_lm, prompt labels -100": ("causal", CausalLMCollator(pad_token_id=0)(prompts)),
        "causal_lm+pack": ("document", default_data_collator([{k: v[i] for k, v in packed.items()} for i in range(len(packed["input_ids"]))])),
        "prefix_lm_sft": ("prefix_lm", PrefixLMCollator(pad_token_id=0)(prompts)),
        "mntp": ("bidirectional", MNTPCollator(mask_token_id=7, mask_probability=0.4, pad_token_id=0)([{"input_ids": r} for r in rows])),
    }


BATCHES = batches()


def loss_and_grads(model, batch, chunk_size, **kwargs):
    model.config.loss_chunk_size = chunk_size
    model.zero_grad()
    out = model(**batch, **kwargs)
    out.loss.backward()
    return out, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.fixture
def train_model(checkpoint):
    def load(strategy, **kwargs):
        model = CustomQwen3ForCausalLM.from_pretrained(checkpoint, mask_strategy=strategy, **kwargs).train()
        model.config.attention_dropout = 0.0
        return model

    return load


@pytest.mark.parametrize("objective", list(BATCHES))
@pytest.mark.parametrize("chunk_size", [1, 7, 4096])
def test_chunked_loss_and_every_gradient_equal_the_full_logits_loss(train_model, objective, chunk_size):
    strategy, batch = BATCHES[objective]
    assert (batch["labels"] == -100).any()  # every objective here ignores some positions
    model = train_model(strategy)
    plain, expected = loss_and_grads(model, batch, None)
    chunked, grads = loss_and_grads(model, batch, chunk_size)
    assert plain.logits is not None and chunked.logits is None  # a training forward with labels: no logits
    torch.testing.assert_close(chunked.loss, plain.loss, atol=1e-5, rtol=1e-5)
    assert grads.keys() == expected.keys() and "model.embed_tokens.weight" in grads  # tied head: one weight
    for name in expected:
        torch.testing.assert_close(grads[name], expected[name], atol=1e-5, rtol=1e-5, msg=name)


def test_num_items_in_batch_and_shift_labels_as_stock(train_model):
    strategy, batch = BATCHES["causal_lm, prompt labels -100"]
    model = train_model(strategy)
    for kwargs in ({"num_items_in_batch": torch.tensor(40)}, {"num_items_in_batch": 40}):
        plain, expected = loss_and_grads(model, batch, None, **kwargs)
        chunked, grads = loss_and_grads(model, batch, 5, **kwargs)
        torch.testing.assert_close(chunked.loss, plain.loss, atol=1e-5, rtol=1e-5)
        for name in expected:
            torch.testing.assert_close(grads[name], expected[name], atol=1e-5, rtol=1e-5, msg=name)
    shifted = torch.nn.functional.pad(batch["labels"], (0, 1), value=-100)[:, 1:].contiguous()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    plain, _ = loss_and_grads(model, inputs, None, shift_labels=shifted, labels=batch["labels"])
    chunked, _ = loss_and_grads(model, inputs, 5, shift_labels=shifted)
    torch.testing.assert_close(chunked.loss, plain.loss, atol=1e-5, rtol=1e-5)


def test_logits_when_asked_and_in_eval(train_model):
    strategy, batch = BATCHES["causal_lm"]
    model = train_model(strategy)
    model.config.loss_chunk_size = 4
    asked = model(**batch, skip_logits=False)
    assert asked.logits.shape == (*batch["input_ids"].shape, model.config.vocab_size)
    skipped = model(**batch)
    torch.testing.assert_close(skipped.loss, asked.loss, atol=1e-5, rtol=1e-5)
    as_tuple = model(**batch, return_dict=False)
    torch.testing.assert_close(as_tuple[0], asked.loss)
    with torch.no_grad():
        evaluated = model.eval()(**batch)
    assert evaluated.logits is not None
    torch.testing.assert_close(evaluated.loss, asked.loss, atol=1e-5, rtol=1e-5)
    assert model(input_ids=batch["input_ids"]).logits is not None  # no labels: logits as always


def test_no_labelled_token_gives_zero_not_nan(train_model):
    strategy, batch = BATCHES["causal_lm"]
    model = train_model(strategy)
    model.config.loss_chunk_size = 4
    out = model(**{**batch, "labels": torch.full_like(batch["labels"], -100)})
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


class VocabRows(TorchDispatchMode):
    """The most rows of any vocabulary-wide tensor (last dimension = vocab) an op produced while active."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab, self.rows = vocab, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dim() and t.shape[-1] == self.vocab:
                self.rows = max(self.rows, t.numel() // self.vocab)
        return out


def test_never_holds_more_than_one_chunk_of_logits(train_model):
    rows = pack_examples({"input_ids": examples([100, 90, 120, 60, 80, 40], seed=2)}, max_length=128, pad_token_id=0)
    batch = default_data_collator([{k: v[i] for k, v in rows.items()} for i in range(len(rows["input_ids"]))])
    model = train_model("document")
    vocab, hidden, tokens = model.config.vocab_size, model.config.hidden_size, batch["input_ids"].numel()
    assert tokens > 4 * hidden
    for chunk_size in (None, 4):
        model.config.loss_chunk_size = chunk_size
        with VocabRows(vocab) as seen:
            model(**batch).loss.backward()
        # Chunked: a chunk's logits (4 rows) and the head's weight seen transposed (hidden rows), never more.
        assert seen.rows >= tokens if chunk_size is None else seen.rows <= hidden, (chunk_size, seen.rows)


def test_lora_frozen_head_and_bf16_autocast(train_model):
    from peft import LoraConfig, get_peft_model

    strategy, batch = BATCHES["prefix_lm_sft"]
    model = get_peft_model(train_model(strategy), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    model.config.attention_dropout = 0.0
    plain, expected = loss_and_grads(model, batch, None)
    chunked, grads = loss_and_grads(model, batch, 3)
    assert expected and grads.keys() == expected.keys()  # the adapters only: the frozen head gets no gradient
    torch.testing.assert_close(chunked.loss, plain.loss, atol=1e-5, rtol=1e-5)
    for name in expected:
        torch.testing.assert_close(grads[name], expected[name], atol=1e-5, rtol=1e-5, msg=name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain, expected = loss_and_grads(model, batch, None)
        chunked, grads = loss_and_grads(model, batch, 3)
    torch.testing.assert_close(chunked.loss, plain.loss, atol=2e-2, rtol=1e-2)
    for name in expected:
        torch.testing.assert_close(grads[name], expected[name], atol=2e-2, rtol=5e-2, msg=name)


def test_trainer_on_its_defaults_uses_it(train_model, tmp_path):
    strategy, batch = BATCHES["causal_lm+pack"]
    model = train_model(strategy)
    rows = pack_examples({"input_ids": examples([5, 9, 3, 7, 6, 4, 8, 2], seed=1)}, max_length=16, pad_token_id=0)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=1, report_to="none", use_cpu=True)
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict(rows), data_collator=default_data_collator)
    batch = next(iter(trainer.get_train_dataloader()))
    losses = {}
    for chunk_size in (None, 3):
        model.config.loss_chunk_size = chunk_size
        losses[chunk_size] = trainer.compute_loss(model, batch, num_items_in_batch=(batch["labels"][:, 1:] != -100).sum())
    torch.testing.assert_close(losses[3], losses[None], atol=1e-5, rtol=1e-5)
    model.config.loss_chunk_size = 3
    assert trainer.train().training_loss > 0


def test_bad_settings_are_refused_with_the_fix(train_model):
    strategy, batch = BATCHES["causal_lm"]
    model = train_model(strategy)
    model.config.loss_chunk_size = 0
    with pytest.raises(ValueError, match="positive number of tokens"):
        model(**batch)
    model.config.loss_chunk_size = 4
    with pytest.raises(ValueError, match="needs labels"):
        model(input_ids=batch["input_ids"], skip_logits=True)
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(**batch, logits_to_keep=1)
    with pytest.raises(ValueError, match="do not match"):
        chunked_causal_lm_loss(torch.zeros(2, 5, 64), model.lm_head, torch.zeros(2, 4, dtype=torch.long))


def test_a_wrapped_head_takes_the_full_logits_loss(checkpoint, tmp_path, caplog):
    """LoRA on lm_head (untied head): reading lm_head.weight would train without the adapter, so the plain loss."""
    from peft import LoraConfig, get_peft_model

    from qwen3_custom_mask.cli.tiny import save_tiny_checkpoint

    path = save_tiny_checkpoint(tmp_path / "untied", tie_word_embeddings=False)
    strategy, batch = BATCHES["causal_lm"]
    grads = {}
    for chunk_size in (None, 4):
        torch.manual_seed(0)  # the same random adapters both times
        model = get_peft_model(CustomQwen3ForCausalLM.from_pretrained(path).train(),
                               LoraConfig(r=4, target_modules=["q_proj", "lm_head"], init_lora_weights=False))
        model.config.loss_chunk_size = chunk_size
        with caplog.at_level("WARNING"):
            out = model(**batch)
        out.loss.backward()
        grads[chunk_size] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert "the loss is computed from the full logits instead" in caplog.text
    assert any("lm_head.lora_B" in n for n in grads[4])
    for name in grads[None]:
        torch.testing.assert_close(grads[4][name], grads[None][name], atol=1e-5, rtol=1e-5, msg=name)


def test_fp16_under_a_large_loss_scale_stays_finite(checkpoint):
    strategy, batch = BATCHES["causal_lm"]
    model = CustomQwen3ForCausalLM.from_pretrained(checkpoint, dtype=torch.float16).train()
    for chunk_size in (None, 4):
        model.config.loss_chunk_size = chunk_size
        model.zero_grad()
        (model(**batch).loss * 131072).backward()  # GradScaler's scale grows past fp16's 65504
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None), chunk_size
