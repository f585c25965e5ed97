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
from qwen3_custom_mask.default import default_checkpoint

trl = pytest.importorskip("trl")  # in the test extra; skipped where a user's stack lacks it

WARNS = "qwen3_custom_mask.modeling"


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
    assert "DPOTrainer" in caplog.text and "save_pretrained" in caplog.text and "ref_model=" in caplog.text
    # What TRL builds without ref_model is the folder's causal model, which the warning said: the loss is not log 2.
    _, loss = dpo_step0_loss(policy, tmp_path / "a", tokenizer_dir=stock_dir)
    assert abs(loss - math.log(2)) > 1e-3
    # The fix the warning names: a reference with the same strategy.
    reference = CustomQwen3ForCausalLM.from_pretrained(stock_dir, mask_strategy=spec)
    _, loss = dpo_step0_loss(CustomQwen3ForCausalLM.from_pretrained(stock_dir, mask_strategy=spec), tmp_path / "b", reference, stock_dir)
    assert abs(loss - math.log(2)) < 1e-3, loss


def test_sft_by_path_loads_the_plugin_with_its_strategy(plugin_dir, tmp_path):
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=1, report_to="none", use_cpu=True,
                     save_strategy="no", max_length=32)
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
