"""scripts/finetune.py end to end on the tiny checkpoint: single process, LoRA, and 2-process DDP (gloo)."""

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qwen3_custom_mask import CustomQwen3ForCausalLM, resolve_strategy
from qwen3_custom_mask.training.collators import MNTPCollator, PrefixLMCollator, collator_for

ROOT = Path(__file__).parent.parent
SCRIPT = ROOT / "scripts" / "finetune.py"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    rng = random.Random(0)
    with path.open("w") as f:
        for _ in range(48):
            n = rng.randint(4, 40)
            f.write(json.dumps({"input_ids": [rng.randrange(250) for _ in range(n)], "prompt_length": rng.randint(1, n - 1)}) + "\n")
    return path


def run(args, cwd, launcher=(sys.executable,)):
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*launcher, str(SCRIPT), *map(str, args)], cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr + proc.stdout


@pytest.mark.parametrize(
    "recipe,extra",
    [("packed_sft", []), ("prefix_lm", ["--lora"]), ("bidirectional_llm2vec", ["--gradient-checkpointing"])],
)
def test_recipe_trains_and_saves_a_checkpoint_that_reloads_with_its_strategy(checkpoint, data, tmp_path, recipe, extra):
    out = tmp_path / "out"
    log = run(["--model", checkpoint, "--recipe", ROOT / "configs" / f"{recipe}.yaml", "--data", data, "--max-length", 64,
               "--max-steps", 3, "--batch-size", 4, "--lr", 1e-3, "--output-dir", out, *extra], tmp_path)
    assert "train loss" in log and "loss_chunk_size 512" in log  # the recipes train on the chunked loss
    assert json.loads((out / "config.json").read_text()).get("loss_chunk_size") is None  # a training setting only
    trained = CustomQwen3ForCausalLM.from_pretrained(out)
    assert trained.mask_strategy == resolve_strategy(ROOT / "configs" / f"{recipe}.yaml")
    assert json.loads((out / "config.json").read_text())["mask_strategy"] == trained.mask_strategy.to_dict()
    before = CustomQwen3ForCausalLM.from_pretrained(checkpoint)
    assert not torch.equal(trained.model.layers[0].self_attn.q_proj.weight, before.model.layers[0].self_attn.q_proj.weight)


def test_the_chunked_loss_trains_as_the_full_logits_loss(checkpoint, data, tmp_path):
    common = ["--model", checkpoint, "--recipe", "packed_sft", "--data", data, "--max-length", 64, "--max-steps", 3,
              "--batch-size", 4, "--lr", 1e-3, "--data-order", "sequential"]
    chunked = run([*common, "--loss-chunk-size", 16, "--output-dir", tmp_path / "chunked"], tmp_path)
    full = run([*common, "--loss-chunk-size", 0, "--output-dir", tmp_path / "full"], tmp_path)
    assert "loss_chunk_size None" in full
    assert abs(float(train_loss(chunked).split()[0]) - float(train_loss(full).split()[0])) < 1e-4
    a, b = (CustomQwen3ForCausalLM.from_pretrained(tmp_path / name).state_dict() for name in ("chunked", "full"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4, msg=name)


ACCELERATE = ("accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no")
TORCHRUN = ("torchrun", "--nproc_per_node", "2")


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def train_loss(log: str) -> str:
    return [line for line in log.splitlines() if "train loss" in line][-1].split("train loss ")[1]


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory, data):
    """The reference: one process, Trainer, global batch 4, packed rows, the document strategy."""
    from qwen3_custom_mask.cli.default import default_checkpoint

    folder = tmp_path_factory.mktemp("one-process")
    model = default_checkpoint(folder / "embedded")  # the embedded default (real Qwen3 vocabulary, 2 layers)
    common = ["--model", model, "--recipe", ROOT / "configs" / "packed_sft.yaml", "--data", data, "--max-length", 64,
              "--max-steps", 3, "--lr", 1e-3, "--data-order", "sequential", "--cpu", "--seed", 0]
    log = run([*common, "--batch-size", 4, "--output-dir", folder / "out"], folder)
    return common, log, weights(folder / "out")


@pytest.mark.skipif(shutil.which("accelerate") is None or shutil.which("torchrun") is None, reason="launchers not installed")
@pytest.mark.parametrize("mode,launcher,per_rank", [("fsdp2", TORCHRUN, ["--batch-size", 2]), ("fsdp2", ACCELERATE, ["--batch-size", 2]),
                                                     ("ddp", ACCELERATE, ["--batch-size", 2]),
                                                     ("fsdp2", TORCHRUN, ["--batch-size", 1, "--grad-accum", 2])],
                         ids=["fsdp2-torchrun", "fsdp2-accelerate", "ddp-accelerate", "fsdp2-torchrun-grad-accum"])
def test_two_processes_train_exactly_like_one(one_process_run, tmp_path, mode, launcher, per_rank):
    """2 CPU processes (gloo), 2 examples each (or 1 twice, accumulated), vs 1 process with the same 4: the same
    loss and, after three AdamW steps, the same weights (float tolerance), with the document strategy on every
    rank; the checkpoint (full state gathered on rank 0, official layout) reloads with its strategy."""
    common, single_log, single = one_process_run
    extra = ["--fsdp"] if mode == "fsdp2" else []
    log = run([*common, *per_rank, "--output-dir", tmp_path / "out", *extra], tmp_path, launcher)
    if mode == "fsdp2":
        assert log.count("fsdp2: 2 decoder layers sharded (fully_shard) over 2 processes") == 2
    else:
        assert log.count("processes: 2 (distributed)") == 2
    assert train_loss(log) == train_loss(single_log)
    trained = weights(tmp_path / "out")
    assert sorted(trained) == sorted(single)  # the official layout: a tied head is stored once
    moved = max((single[k] - weights_of_base(common)[k]).abs().max().item() for k in single)
    assert moved > 1e-3  # training changed the weights...
    for name, tensor in single.items():  # ...and both runs changed them alike
        torch.testing.assert_close(trained[name], tensor, atol=2e-5, rtol=1e-4, msg=name)
    assert CustomQwen3ForCausalLM.from_pretrained(tmp_path / "out").mask_strategy.name == "document"


def weights_of_base(common) -> dict:
    return weights(Path(common[1]))


def test_objective_collators():
    features = [{"input_ids": [5, 6, 7, 8], "prompt_length": 2}, {"input_ids": [9, 10, 11], "prompt_length": 1}]
    batch = PrefixLMCollator(pad_token_id=0)(features)
    assert batch["prefix_lengths"].tolist() == [2, 1]
    assert batch["labels"].tolist() == [[-100, -100, 7, 8], [-100, 10, 11, -100]]
    torch.manual_seed(0)
    mntp = MNTPCollator(mask_token_id=99, mask_probability=0.5, pad_token_id=0)(features * 8)
    masked = mntp["input_ids"] == 99
    assert masked.any() and not masked[:, 0].any()
    assert torch.equal(mntp["labels"] != -100, masked)  # labels exactly where a token was masked
    with pytest.raises(ValueError, match="Unknown training objective 'mlm'; known: causal_lm, prefix_lm_sft, mntp"):
        collator_for("mlm", pack=False, max_length=8, pad_token_id=0)
    with pytest.raises(ValueError, match="Packing works with the causal_lm objective"):
        collator_for("mntp", pack=True, max_length=8, pad_token_id=0)


def test_flex_training_on_cpu_is_refused_with_the_fix(checkpoint, data, tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--model", str(checkpoint), "--data", str(data), "--attn", "flex_attention", "--cpu"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode != 0 and "no backward pass on CPU; use --attn sdpa" in proc.stderr


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not installed")
def test_fsdp_runs_repeat_with_a_seed(one_process_run, tmp_path):
    """The MNTP recipe masks tokens at random: two --fsdp runs with the same --seed train alike."""
    common, _, _ = one_process_run
    common = [*common[:2], "--recipe", ROOT / "configs" / "bidirectional_llm2vec.yaml", *common[4:]]
    logs = [run([*common, "--batch-size", 2, "--max-steps", 2, "--fsdp", "--output-dir", tmp_path / f"out{i}"], tmp_path,
                ("torchrun", "--nproc_per_node", "1")) for i in range(2)]
    assert train_loss(logs[0]) == train_loss(logs[1])


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not installed")
def test_fsdp_refuses_more_accumulation_than_an_epoch_has(one_process_run, tmp_path):
    """Fewer micro-batches per epoch than --grad-accum would never make a step: refused, naming the fix."""
    common, _, _ = one_process_run
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    args = [*common, "--batch-size", 4, "--grad-accum", 1000, "--fsdp", "--output-dir", tmp_path / "out"]
    proc = subprocess.run(["torchrun", "--nproc_per_node", "1", str(SCRIPT), *map(str, args)],
                          cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode != 0 and "fewer than --grad-accum 1000; lower --grad-accum" in proc.stderr, proc.stderr[-3000:]
