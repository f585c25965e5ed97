"""qwen3-mask, run as users run it: a subprocess per subcommand, success and error paths."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).parent.parent
ENV_KEYS = {"TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """Where the embedded default checkpoint is built (once for this module, before the tests read one-line errors)."""
    from qwen3_custom_mask.cli.default import default_checkpoint

    path = tmp_path_factory.mktemp("qwen3-mask-home")
    default_checkpoint(path)
    return path


def cli(*args, home=None, check=True):
    env = {**os.environ, **ENV_KEYS}
    if home is not None:
        env["QWEN3_MASK_HOME"] = str(home)
    proc = subprocess.run([sys.executable, "-m", "qwen3_custom_mask.cli", *map(str, args)], capture_output=True, text=True, env=env, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_list_names_every_strategy_with_params_and_inputs():
    from qwen3_custom_mask import available_masks

    out = cli("list").stdout
    for name in available_masks():
        assert f"\n{name} " in f"\n{out}"
    assert "window=4096" in out and "inputs: prefix_lengths" in out


def test_show_draws_the_mask_and_writes_a_png(tmp_path):
    png = tmp_path / "m.png"
    out = cli("show", "sliding_window", "--param", "window=2", "--length", "4", "--png", png).stdout
    assert "  3   ⬚ ⬚ ■ ■" in out
    assert "density 0.438 (7 of 16 pairs)" in out
    assert min(Image.open(png).size) >= 4 * 24  # 24-pixel cells by default, plus title and labels
    out = cli("show", "prefix_lm", "--input", "prefix_lengths=[2]", "--length", "3").stdout
    assert "  0   ■ ■ ⬚" in out
    out = cli("show", '{"and": ["causal", {"name": "chunked", "chunk_size": 2}]}', "--length", "4").stdout
    assert "  2   ⬚ ⬚ ■ ⬚" in out


@pytest.mark.parametrize(
    "args,message",
    [
        (("show", "nope"), "Unknown mask strategy 'nope'. Known strategies: attention_sinks"),
        (("show", "sliding_window", "--param", "window=-1"), "window must be a positive integer, got -1"),
        (("show", "sliding_window", "--param", "window"), "--param takes key=value"),
        (("show", "configs/missing.yaml"), "missing.yaml"),
        (("show", "{bad json"), "error:"),
        (("show", "prefix_lm"), "add --input prefix_lengths=[3]"),
        (("show", "document", "--length", "4"), "add --input document_ids=0,0,1,2"),
        (("show", "{ARGS}/bad.json"), "Mask strategy file '{ARGS}/bad.json' is not valid JSON"),
        (("bench", "--dtype", "float17"), "argument --dtype: invalid choice: 'float17'"),
        (("bench", "--device", "gpu0"), "'gpu0' is not a device"),
        (("generate", "--strategy", "nope.yaml", "hi"), "Mask strategy file 'nope.yaml' does not exist"),
        (("export", "--strategy", "nope.yaml", "--stock", "out"), "Mask strategy file 'nope.yaml' does not exist"),
        (("export", "--stock", "{ARGS}/a-file"), "a file is there; give a folder"),
        (("generate", "--strategy", "{bad", "hi"), "--strategy '{bad' is not valid JSON"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(args, message, tmp_path):
    (tmp_path / "bad.json").write_text('{"name": ')
    (tmp_path / "a-file").write_text("not a folder")
    args, message = [str(a).replace("{ARGS}", str(tmp_path)) for a in args], message.replace("{ARGS}", str(tmp_path))
    proc = cli(*args, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("qwen3-mask: error:") and message in proc.stderr
    assert proc.stderr.count("\n") == 1


MODEL_MISTAKES = [
    (("generate", "--dtype", "float64x", "hi"), "--dtype 'float64x' is not a torch dtype"),
    (("generate", "--backend", "flesh", "hi"), "--backend 'flesh' is not an attention backend"),
    (("generate", ""), "empty prompt"),
    (("generate", "hi", "  "), "empty prompt"),
    (("generate", "--model", "/nonexistent/qwen3", "hi"), "--model /nonexistent/qwen3: no such folder"),
    (("generate", "--device", "banana", "hi"), "--device 'banana' is not a device"),
    (("export", "--strategy", "prefix_lm", "--stock", "unused-out"), "has no standard form"),
]


@pytest.mark.parametrize("args,message", MODEL_MISTAKES, ids=lambda v: v if isinstance(v, str) else None)
def test_model_command_mistakes_are_one_line_and_exit_2(home, args, message):
    proc = cli(*args, home=home, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("qwen3-mask: error:") and message in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1


@pytest.fixture(scope="module")
def weightless(home, tmp_path_factory):
    """The embedded default's config.json and tokenizer, no weights: a command that loaded the model would fail
    on the weights, so a strategy or device mistake that answers here was caught before any model loads."""
    import shutil

    from qwen3_custom_mask.cli.default import default_checkpoint

    out = tmp_path_factory.mktemp("weightless")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(default_checkpoint(home) / name, out / name)
    return out


@pytest.mark.parametrize("args,message", [
    (("generate", "--strategy", "bidirectional", "hi"), "pass --no-cache"),
    (("generate", "--strategy", '{"name": "global_tokens", "tokens": [0], "causal": false}', "hi"), "pass --no-cache"),
    (("export", "--strategy", "prefix_lm", "--stock", "out"), "has no standard form"),
    (("generate", "--device", "cuda", "hi"), "no CUDA device"),
], ids=["bidirectional", "global", "export", "cuda"])
def test_strategy_and_device_mistakes_answer_before_the_model_loads(weightless, args, message):
    import torch

    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = cli(*args, "--model", weightless, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr[-2000:]


def test_finetune_reports_every_mistake_at_once_before_loading(tmp_path):
    proc = cli("finetune", "--model", tmp_path / "nope", "--data", tmp_path / "nope.jsonl", "--strategy", "slidng_window",
               "--batch-size", "0", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    for part in ("--model", "--data", "--batch-size 0", "Did you mean 'sliding_window'?"):
        assert part in proc.stderr, (part, proc.stderr)


def test_finetune_names_its_extra_before_loading(tmp_path):
    """Without datasets (the [train] extra): one line naming the install, not a model load then a ModuleNotFoundError."""
    blocker = tmp_path / "datasets.py"
    blocker.write_text("raise ImportError('blocked for the test')\n")
    code = ("import importlib.util, sys; real = importlib.util.find_spec; "
            "importlib.util.find_spec = lambda name, *a: None if name == 'datasets' else real(name, *a); "
            "from qwen3_custom_mask.cli import main; sys.exit(main(sys.argv[1:]))")
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "hi"}\n')
    proc = subprocess.run([sys.executable, "-c", code, "finetune", "--model", str(tmp_path), "--data", str(data)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "pip install 'qwen3-custom-mask[train]'" in proc.stderr, proc.stderr


def test_cuda_on_a_cpu_machine_is_one_line(home):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = cli("generate", "--device", "cuda", "hi", home=home, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no CUDA device on this machine" in proc.stderr


def test_finetune_mistakes_are_one_line_and_its_log_is_shown(home, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "hello world"}\n' * 8)
    from qwen3_custom_mask.cli.default import default_checkpoint

    model = default_checkpoint(home)
    proc = cli("finetune", "--model", model, "--data", data, "--attn", "flex_attention", "--cpu", home=home, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no backward pass on CPU" in proc.stderr, proc.stderr[-2000:]
    out = cli("finetune", "--model", model, "--data", data, "--max-steps", "1", "--batch-size", "2", "--max-length", "16",
              "--output-dir", tmp_path / "out", home=home)
    assert f"saved to {tmp_path / 'out'}" in out.stderr


def test_flex_attention_generation_on_cpu_works(home):
    """Two prompts on CPU flex_attention: without the static-shapes workaround torch 2.13's CPU inductor fails
    with a ~1,300-line C++ compile error (README, Known limits)."""
    out = cli("generate", "--backend", "flex_attention", "--max-new-tokens", "2", "a b", "c", home=home).stdout
    assert out.count(" -> ") == 2


def test_list_and_help_do_not_load_torch():
    """`qwen3-mask --help` and `list` answer without importing torch or transformers (they take ~0.1 s)."""
    code = ("import sys; sys.argv = ['qwen3-mask', 'list']; from qwen3_custom_mask.cli import main; main(['list']); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'loaded'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "sliding_window" in proc.stdout


@pytest.mark.parametrize("args,message", [
    (["generate", "--backend", "sdpaa", "hi"], "--backend 'sdpaa' is not an attention backend; did you mean sdpa?"),
    (["generate", "--dtype", "float64x", "hi"], "--dtype 'float64x' is not a torch dtype; did you mean float64?"),
    (["generate", "--device", "gpu0", "hi"], "--device 'gpu0' is not a device"),
    (["generate", "--strategy", "slidng_window", "hi"], "Did you mean 'sliding_window'?"),
    (["generate", "--model", "./no/such/folder", "hi"], "--model ./no/such/folder: no such folder"),
    (["export", "--model", "missing_folder", "--stock", "out"], "--model missing_folder: no such folder"),
    (["show", "no_such"], "Unknown mask strategy 'no_such'"),
    (["show", "document", "--input", "document_ids=a,b"], "give numbers, e.g. document_ids=0,0,1,1"),
    (["demo", "-v", "--backend", "nope"], "--backend 'nope' is not an attention backend"),
    (["generate", "--max-new-tokens", "-1", "hi"], "--max-new-tokens -1: give at least 1"),
    (["show", "sliding_window", "--length", "100000"], "--length 100000: draw between 1 and 1024 tokens"),
    (["show", "document", "--input", "docs=0,1"], "--input docs: not an input of 'document'; it takes document_ids"),
    (["show", "document", "--input", "document_ids=0,0,1,1"], "document_ids has 4 entries, one per token: give 12"),
])
def test_flag_mistakes_answer_before_torch_is_imported(args, message):
    """One line, exit 2, and torch never imported: the answer does not wait for a model load."""
    code = (f"import sys; sys.argv = ['qwen3-mask']; from qwen3_custom_mask.cli import main; rc = main({args!r}); "
            "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


@pytest.mark.parametrize("args,message", [
    (["finetune", "--data", "a.jsonl"], "the following arguments are required: --model"),
    (["finetune", "--model", "/no/such", "--data", "a.jsonl"], "--model /no/such: no such folder"),
    (["finetune", "--model", "{home}", "--data", "missing.jsonl"], "--data missing.jsonl: no such file"),
    (["finetune", "--model", "{home}", "--data", "{data}", "--recipe", "nope"], "no shipped recipe of that name; shipped: bidirectional_llm2vec, packed_sft"),
])
def test_finetune_mistakes_answer_before_torch_is_imported(args, message, checkpoint, tmp_path):
    """From another folder, without torch: never a Hub lookup for a local-looking path that does not exist."""
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "hello"}\n')
    args = [a.format(home=checkpoint, data=data) for a in args]
    code = (f"import sys; sys.argv = ['qwen3-mask']; from qwen3_custom_mask.cli import main; rc = main({args!r}); "
            "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


@pytest.mark.parametrize("args,rc,message", [
    (["qwen3-mask", "bench", "--help"], 0, "usage: qwen3-mask bench"),
    (["qwen3-mask", "bench", "--strategies", "nope"], 2, "invalid choice: 'nope'"),
    (["qwen3-mask", "finetune", "--help"], 0, "--loss-chunk-size"),
    (["scripts/benchmark.py", "--help"], 0, "usage: qwen3-mask bench"),
    (["scripts/benchmark.py", "--lengths", "x"], 2, "error: argument --lengths: invalid int value: 'x'"),
    (["scripts/finetune.py", "--help"], 0, "--recipe"),
    (["scripts/finetune.py", "--data", "a.jsonl"], 2, "error: the following arguments are required: --model"),
    (["scripts/finetune.py", "--model", "./nowhere", "--data", "a.jsonl"], 2, "error: --model ./nowhere: no such folder"),
])
def test_help_and_mistakes_of_bench_and_finetune_never_import_torch(args, rc, message):
    """`-X importtime` lists every module imported: torch must not be among them."""
    script = Path(sys.executable).parent / "qwen3-mask" if args[0] == "qwen3-mask" else ROOT / args[0]
    command = [sys.executable, "-X", "importtime", str(script), *args[1:]]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert proc.returncode == rc, proc.stderr[-2000:]
    assert message in proc.stdout + proc.stderr
    assert "torch" not in imported and "transformers" not in imported
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    assert len(errors) == (1 if rc else 0), errors


def test_recipes_by_name_from_any_folder(tmp_path):
    listed = subprocess.run([sys.executable, "-m", "qwen3_custom_mask.cli", "finetune", "--list-recipes"], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    assert listed.returncode == 0 and "packed_sft" in listed.stdout and "'name': 'document'" in listed.stdout
    from qwen3_custom_mask.strategy.presets import recipe_path
    from qwen3_custom_mask.strategy import resolve_strategy

    old = os.getcwd()
    os.chdir(tmp_path)  # no configs/ folder here
    try:
        assert recipe_path("packed_sft").name == "packed_sft.yaml"
        assert resolve_strategy("configs/prefix_lm.yaml").name == "prefix_lm"  # the README's spelling, elsewhere
        (tmp_path / "mine.yaml").write_text("mask_strategy: bidirectional\n")
        assert resolve_strategy("mine.yaml").name == "bidirectional" and recipe_path("mine.yaml").is_file()
    finally:
        os.chdir(old)


def test_show_takes_comma_separated_inputs():
    out = cli("show", "document", "--input", "document_ids=0,0,1,1", "--length", "4").stdout
    assert "  2   ⬚ ⬚ ■ ⬚" in out


def test_generate_streams_and_batches(home):
    single = cli("generate", "--max-new-tokens", "4", "--strategy", "configs/prefix_lm.yaml", "Hello there", home=home)
    assert single.stdout.strip()  # streamed text
    batch = cli("generate", "--max-new-tokens", "3", "--chat", "a", "bb", home=home).stdout
    assert batch.count(" -> ") == 2
    refused = cli("generate", "--strategy", "bidirectional", "x", home=home, check=False)
    assert refused.returncode == 2 and "--no-cache" in refused.stderr and "Traceback" not in refused.stderr
    ok = cli("generate", "--strategy", "bidirectional", "--no-cache", "--max-new-tokens", "2", "x", home=home)
    assert ok.returncode == 0


def test_demo_is_the_readme_main_job(home):
    out = cli("demo", "--max-new-tokens", "4", home=home).stdout
    assert "logits identical: True, generated tokens identical: True" in out
    for name in ("causal", "prefix_lm", "sliding_window", "attention_sinks", "chunked", "bidirectional"):
        assert f'"name": "{name}"' in out
    files = {p.name for p in home.iterdir()}  # QWEN3_MASK_HOME is the checkpoint folder
    assert {"config.json", "tokenizer.json", "model.safetensors.index.json"} <= files  # official layout, sharded


def test_embedded_tokenizer_is_qwen3():
    from qwen3_custom_mask.cli.tokenizer import qwen3_tokenizer

    tok = qwen3_tokenizer()
    assert tok("Hello world!")["input_ids"] == [9707, 1879, 0]  # as Qwen/Qwen3-* tokenize it
    assert [tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")] == [
        151643, 151644, 151645, 151667, 151668
    ]
    assert tok.pad_token_id == 151643 and tok.eos_token_id == 151645
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def test_bench_quick_prints_ratios_against_stock():
    out = cli("bench", "--vocab", "4096", "--backends", "sdpa", "--strategies", "causal", "sliding_window(256)",
              "--lengths", "64", "--decode-batches", "1", "--new-tokens", "2", "--repeats", "1", "--no-sparse", "--no-compiled").stdout
    assert "| sdpa | 64 | causal |" in out and "| sdpa | 64 | sliding_window(256) |" in out and "stock + 4D mask" in out
    assert "| sdpa | 1 | causal |" in out


def test_finetune_subcommand_help():
    out = cli("finetune", "--help").stdout
    assert "--recipe" in out and "--lora" in out


def test_checkpoint_without_tokenizer_is_one_line(home, checkpoint):
    """A folder with weights but no tokenizer files: transformers would hand back an empty tokenizer."""
    proc = cli("generate", "--model", checkpoint, "hi", home=home, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no tokenizer in the folder" in proc.stderr, proc.stderr[-2000:]
