"""Trainer with its default arguments (remove_unused_columns=True), and PEFT: the strategy's per-call inputs
reach forward(), and one training step's loss and gradients are the brute-force reference's."""

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments, default_data_collator

from qwen3_custom_mask import CustomQwen3ForCausalLM
from qwen3_custom_mask.training.finetune import with_prompt_columns
from qwen3_custom_mask.training.packing import pack_examples
from qwen3_custom_mask.strategy.reference import reference_logits, reference_mask
from qwen3_custom_mask.training.collators import CausalLMCollator, PrefixLMCollator


def packed_rows(continuous_positions: bool) -> Dataset:
    g = torch.Generator().manual_seed(0)
    examples = [torch.randint(0, 250, (n,), generator=g).tolist() for n in (5, 9, 3, 7, 6, 4, 8, 2)]
    rows = pack_examples({"input_ids": examples}, max_length=16, pad_token_id=0)
    if continuous_positions:  # the boundaries then live in document_ids alone
        rows["position_ids"] = [list(range(16)) for _ in rows["position_ids"]]
    return Dataset.from_dict(rows)


def trainer_for(model, dataset, tmp_path, collator=default_data_collator) -> Trainer:
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=1, report_to="none", use_cpu=True)
    assert args.remove_unused_columns  # Trainer's default, which drops every column forward() does not name
    return Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)


def reference_loss(model, batch):
    """The loss of the brute-force reference forward on the same weights, with the document mask."""
    ids, padding = batch["input_ids"], batch["attention_mask"].bool()
    strategy = model.mask_strategy
    mask_mod = strategy.mask_mod(document_ids=batch["document_ids"], padding_mask=padding, num_heads=4)
    dense = reference_mask(mask_mod, ids.shape[0], 4, ids.shape[1], padding)
    logits = reference_logits(model, ids, dense, batch["position_ids"])
    return model.loss_function(logits=logits, labels=batch["labels"], vocab_size=model.config.vocab_size)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_trainer_defaults_keep_document_ids_and_train_on_the_document_mask(checkpoint, tmp_path, backend):
    model = CustomQwen3ForCausalLM.from_pretrained(checkpoint, mask_strategy="document", attn_implementation=backend)
    model.config.attention_dropout = 0.0
    trainer = trainer_for(model, packed_rows(continuous_positions=True), tmp_path)
    batch = next(iter(trainer.get_train_dataloader()))
    assert {"document_ids", "position_ids", "labels", "attention_mask"} <= set(batch)

    model.train()
    model.zero_grad()
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    expected = reference_loss(model, batch)
    expected.backward()
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)
    # Without document_ids the same rows are one causal document each: another loss.
    with torch.no_grad():
        model.set_mask_strategy("causal")
        causal = model(**{k: v for k, v in batch.items() if k != "document_ids"}).loss
    assert abs(causal.item() - loss.item()) > 1e-3


def test_trainer_defaults_keep_document_ids_through_peft(checkpoint, tmp_path):
    from peft import LoraConfig, get_peft_model

    model = CustomQwen3ForCausalLM.from_pretrained(checkpoint, mask_strategy="document")
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    trainer = trainer_for(model, packed_rows(continuous_positions=True), tmp_path)
    batch = next(iter(trainer.get_train_dataloader()))
    assert "document_ids" in batch
    seen = []
    hook = model.get_base_model().model.register_forward_pre_hook(lambda m, a, k: seen.append(k.get("document_ids")), with_kwargs=True)
    try:
        with torch.no_grad():
            loss = trainer.compute_loss(model, batch)
    finally:
        hook.remove()
    assert seen and torch.equal(seen[0], batch["document_ids"])
    with torch.no_grad():
        torch.testing.assert_close(loss, reference_loss(model.get_base_model(), batch), atol=1e-5, rtol=1e-5)


def test_prompt_labels_and_prefix_lengths_survive_trainer_defaults(checkpoint, tmp_path):
    """scripts/finetune.py turns prompt_length into labels (-100 on the prompt) and prefix_lengths, both
    forward() inputs, so Trainer's defaults keep them."""
    rows = [{"input_ids": [5, 6, 7, 8, 9], "prompt_length": 2}, {"input_ids": [10, 11, 12], "prompt_length": 1}]
    dataset = Dataset.from_list(rows).map(with_prompt_columns, remove_columns=["prompt_length"])
    model = CustomQwen3ForCausalLM.from_pretrained(checkpoint, mask_strategy="prefix_lm")
    trainer = trainer_for(model, dataset, tmp_path, collator=PrefixLMCollator(pad_token_id=0))
    batch = next(iter(trainer.get_train_dataloader()))
    by_length = sorted(zip(batch["prefix_lengths"].tolist(), batch["labels"].tolist()))
    assert by_length == [(1, [-100, 11, 12, -100, -100]), (2, [-100, -100, 7, 8, 9])]


@pytest.mark.parametrize("peft", [False, True])
def test_a_raw_prompt_length_column_survives_trainer_defaults(checkpoint, tmp_path, peft):
    """The issue's row: [10, 11, 12, 13] with prompt_length=2 trains on [-100, -100, 12, 13] under Trainer's
    defaults, because forward() names prompt_length (and refuses it, should a collator pass it on)."""
    rows = [{"input_ids": [10, 11, 12, 13], "prompt_length": 2}, {"input_ids": [20, 21, 22], "prompt_length": 1}]
    model = CustomQwen3ForCausalLM.from_pretrained(checkpoint)
    if peft:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    seen = []
    trainer = trainer_for(model, Dataset.from_list(rows), tmp_path, collator=lambda f: seen.append(f) or CausalLMCollator(pad_token_id=0)(f))
    batch = next(iter(trainer.get_train_dataloader()))
    assert all("prompt_length" in f for f in seen[0])
    assert sorted(batch["labels"].tolist()) == [[-100, -100, 12, 13], [-100, 21, 22, -100]]
    trainer.train()  # and the step runs on those labels
    # A collator that hands the column to forward() gets an error, not a silently ignored input.
    trainer = trainer_for(model, Dataset.from_list(rows[:1]), tmp_path)
    with pytest.raises(ValueError, match="prompt_length.*not a model input"):
        trainer.train()


@pytest.mark.parametrize("chunked", [False, True], ids=["full-logits", "loss_chunk_size"])
@pytest.mark.parametrize("peft", [False, True])
def test_label_smoothing_shifts_labels_as_for_stock(checkpoint, tmp_path, chunked, peft):
    """Trainer's label smoother shifts the labels only for class names in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES: the
    plugin's causal LM must get the shifted, stock loss (it was scored against its own input tokens)."""
    from transformers import Qwen3ForCausalLM

    def smoothed_loss(model):
        if peft:
            from peft import LoraConfig, get_peft_model
            model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
        args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=1, report_to="none",
                                 use_cpu=True, label_smoothing_factor=0.1)
        rows = Dataset.from_dict({"input_ids": [[5, 9, 3, 7, 6, 4], [8, 2, 11, 12, 13, 14]],
                                  "labels": [[5, 9, 3, 7, 6, 4], [8, 2, 11, 12, 13, 14]]})
        trainer = Trainer(model=model, args=args, train_dataset=rows)
        batch = next(iter(trainer.get_train_dataloader()))
        model.train()
        return trainer.compute_loss(model, batch)

    stock = Qwen3ForCausalLM.from_pretrained(checkpoint)
    custom = CustomQwen3ForCausalLM.from_pretrained(checkpoint)
    stock.config.attention_dropout = custom.config.attention_dropout = 0.0
    if chunked:
        custom.config.loss_chunk_size = 4
    torch.testing.assert_close(smoothed_loss(custom), smoothed_loss(stock), atol=1e-5, rtol=1e-5)


def test_auto_lookups_unchanged_by_the_name_tables(checkpoint):
    """The class names sit under the plugin's own model_type: the Auto classes still map stock Qwen3 to stock."""
    from transformers import AutoConfig, AutoModelForCausalLM, Qwen3Config, Qwen3ForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    assert MODEL_FOR_CAUSAL_LM_MAPPING_NAMES["qwen3_custom_mask"] == "CustomQwen3ForCausalLM"
    assert MODEL_FOR_CAUSAL_LM_MAPPING[Qwen3Config] is Qwen3ForCausalLM
    assert type(AutoModelForCausalLM.from_pretrained(checkpoint)) is Qwen3ForCausalLM
    custom = AutoConfig.for_model("qwen3_custom_mask")
    assert MODEL_FOR_CAUSAL_LM_MAPPING[type(custom)] is CustomQwen3ForCausalLM


@pytest.mark.parametrize("kind", ["lora", "ia3"])
def test_peft_default_target_modules_are_qwen3s(checkpoint, tmp_path, kind):
    """PEFT picks default target modules by model_type: a saved plugin checkpoint gets Qwen3's (it raised)."""
    from peft import IA3Config, LoraConfig, get_peft_model
    from transformers import Qwen3ForCausalLM

    saved = tmp_path / "plugin"
    CustomQwen3ForCausalLM.from_pretrained(checkpoint, mask_strategy={"name": "sliding_window", "window": 3}).save_pretrained(saved)
    config = {"lora": LoraConfig, "ia3": IA3Config}[kind]
    stock = get_peft_model(Qwen3ForCausalLM.from_pretrained(checkpoint), config())
    plugin = get_peft_model(CustomQwen3ForCausalLM.from_pretrained(saved), config())
    assert plugin.base_model.model.config.model_type == "qwen3_custom_mask"
    assert sorted(plugin.peft_config["default"].target_modules) == sorted(stock.peft_config["default"].target_modules)
