"""`qwen3-mask serve`: transformers' own OpenAI-compatible server with the plugin, answered by the real `openai`
client on loopback (127.0.0.1, a free port, bounded requests, the server stopped by the test)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

from qwen3_custom_mask import CustomQwen3ForCausalLM
from qwen3_custom_mask.cli.default import default_checkpoint
from qwen3_custom_mask.serving.server import missing_serving_packages

if missing_serving_packages():
    pytest.skip(f"serving packages missing: {missing_serving_packages()}", allow_module_level=True)

SPEC = {"name": "sliding_window", "window": 3}
MESSAGES = [{"role": "user", "content": "The sky is"}]
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    """A saved plugin checkpoint (sliding_window 3) with the embedded default's tokenizer and chat template."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("served")
    model = CustomQwen3ForCausalLM.from_pretrained(default_checkpoint())
    model.set_mask_strategy(SPEC)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(default_checkpoint()).save_pretrained(out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`qwen3-mask serve` in its own process group on 127.0.0.1; stopped (the whole group) on exit."""

    def __init__(self, *args):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/v1"
        # the installed console script, as users run it (its package import differs from `python -m`)
        script = os.path.join(os.path.dirname(sys.executable), "qwen3-mask")
        launcher = [script] if os.path.exists(script) else [sys.executable, "-m", "qwen3_custom_mask.cli"]
        command = [*launcher, "serve", *map(str, args), "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu"]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                     env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})

    def __enter__(self):
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited: {self.proc.stdout.read()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.base}/models", timeout=2) as response:
                    self.models = json.load(response)
                return self
            except OSError:
                time.sleep(1)
        raise AssertionError("the server did not answer within 240 s")

    def __exit__(self, *exc):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def expected_text(path, spec, messages=MESSAGES, prompt=None):
    """What generate() gives for the same (chat) prompt under ``spec``, greedy."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = CustomQwen3ForCausalLM.from_pretrained(path).eval()
    model.set_mask_strategy(spec)
    if prompt is None:
        inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    else:
        inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.mark.parametrize("engine", [[], ["--continuous-batching", "--cb-num-blocks", "64", "--cb-max-batch-tokens", "8"]],
                         ids=["generate", "continuous-batching"])
def test_the_openai_client_gets_the_strategys_text(plugin_dir, engine):
    from openai import OpenAI

    expected = expected_text(plugin_dir, SPEC)
    assert expected != expected_text(plugin_dir, "causal"), "the strategy changes the text (the test can fail)"
    with Server(plugin_dir, *engine) as server:
        assert [m["id"] for m in server.models["data"]] == [str(plugin_dir)]
        client = OpenAI(base_url=server.base, api_key="unused", timeout=120, max_retries=0)
        # the same tokens; Qwen3's response parser (as for a stock Qwen3) trims the answer's leading whitespace
        reply = client.chat.completions.create(model=str(plugin_dir), messages=MESSAGES, max_tokens=NEW_TOKENS, temperature=0.0)
        assert reply.choices[0].message.content.strip() == expected.strip()
        stream = client.chat.completions.create(model=str(plugin_dir), messages=MESSAGES, max_tokens=NEW_TOKENS,
                                                temperature=0.0, stream=True)
        assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices).strip() == expected.strip()
        completion = client.completions.create(model=str(plugin_dir), prompt="The sky is", max_tokens=NEW_TOKENS, temperature=0.0)
        assert completion.choices[0].text.strip() == expected_text(plugin_dir, SPEC, prompt="The sky is").strip()


def test_continuous_batching_serves_prefix_lm_with_the_prompt_as_prefix(plugin_dir):
    """Whole-prompt scheduling (a budget smaller than the chat prompt would split it; here it is raised to fit)."""
    from openai import OpenAI

    from qwen3_custom_mask.model.scheduling import whole_prompts_servable

    if not whole_prompts_servable():
        pytest.skip("this transformers' engine predates whole-prompt scheduling (prefix_lm is refused there)")
    expected = expected_text(plugin_dir, "prefix_lm")
    assert expected != expected_text(plugin_dir, SPEC), "prefix_lm changes the text (the test can fail)"
    with Server(plugin_dir, "--strategy", "prefix_lm", "--continuous-batching", "--cb-num-blocks", "64",
                "--cb-max-batch-tokens", "64") as server:
        client = OpenAI(base_url=server.base, api_key="unused", timeout=120, max_retries=0)
        reply = client.chat.completions.create(model=str(plugin_dir), messages=MESSAGES, max_tokens=NEW_TOKENS, temperature=0.0)
        assert reply.choices[0].message.content.strip() == expected.strip()


def test_strategy_flag_serves_a_stock_checkpoint_under_another_strategy():
    from openai import OpenAI

    path = default_checkpoint()
    expected = expected_text(path, SPEC)
    with Server(path, "--strategy", json.dumps(SPEC)) as server:
        client = OpenAI(base_url=server.base, api_key="unused", timeout=120, max_retries=0)
        reply = client.chat.completions.create(model=str(path), messages=MESSAGES, max_tokens=NEW_TOKENS, temperature=0.0)
        assert reply.choices[0].message.content.strip() == expected.strip()  # trimmed by Qwen3's response parser


@pytest.mark.parametrize("args,message", [
    (["/no/such/folder"], "serve /no/such/folder: no such folder"),
    (["{plugin}", "--strategy", "bidirectional"], "'bidirectional' lets a token see tokens generated after it"),
    (["{plugin}", "--strategy", "slidng_window"], "Did you mean 'sliding_window'?"),
    (["{plugin}", "--continuous-batching", "--attn-implementation", "paged|flex_attention"], "serves the 'causal' strategy only"),
    (["{plugin}", "--continuous-batching", "--attn-implementation=paged|flex_attention"], "serves the 'causal' strategy only"),
    (["{plugin}", "--port", "notaport"], "--port 'notaport': give a port number"),
])
def test_a_server_that_cannot_start_exits_2_with_one_line(plugin_dir, args, message):
    args = [a.replace("{plugin}", str(plugin_dir)) for a in args]
    defaults = [] if "--port" in args else ["--port", "1"]  # never reached: each case stops before it listens
    proc = subprocess.run([sys.executable, "-m", "qwen3_custom_mask.cli", "serve", *args, "--host", "127.0.0.1", *defaults],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


def test_the_server_parses_chat_answers_as_for_stock_qwen3(plugin_dir):
    """transformers serve picks its response parser (<think>, tool calls) by model_type: the plugin's gets Qwen3's."""
    from transformers import AutoConfig
    from transformers.cli.serving.utils import get_response_template

    from qwen3_custom_mask.serving.server import register_with_server

    register_with_server()
    stock = get_response_template(None, AutoConfig.from_pretrained(default_checkpoint()))
    assert stock is not None and get_response_template(None, AutoConfig.from_pretrained(plugin_dir)) == stock
