"""The embedded tokenizer's chat template renders Qwen3's format: multi-turn, tools, thinking on and off."""

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from qwen3_custom_mask.cli.tokenizer import CHAT_TEMPLATE

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def render(messages, **kwargs) -> str:
    return render_jinja_template([messages], chat_template=CHAT_TEMPLATE, **kwargs)[0][0]


@pytest.mark.parametrize("thinking,opening", [(None, ""), (True, ""), (False, "<think>\n\n</think>\n\n")])
def test_generation_prompt_and_enable_thinking(thinking, opening):
    extra = {} if thinking is None else {"enable_thinking": thinking}
    text = render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], add_generation_prompt=True, **extra)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n" + opening


def test_reasoning_of_earlier_turns_is_dropped_and_the_last_turn_keeps_it():
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<think>\ngreet back\n</think>\n\nHello!"},
        {"role": "user", "content": "Again"},
        {"role": "assistant", "content": "Hello again!", "reasoning_content": "\nsame\n"},
    ]
    assert render(messages) == (
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"  # before the last query: no <think>
        "<|im_start|>user\nAgain<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nsame\n</think>\n\nHello again!<|im_end|>\n"
    )


def test_tools_tool_calls_and_tool_responses():
    messages = [
        {"role": "system", "content": "You help."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
        ]},
        {"role": "tool", "content": "sunny"},
        {"role": "tool", "content": "rain"},
        {"role": "assistant", "content": "<think>\nboth known\n</think>\n\nParis: sunny. Rome: rain."},
    ]
    tools_json = '{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city", ' \
                 '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}'
    assert render(messages, tools=[WEATHER]) == (
        "<|im_start|>system\nYou help.\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n" + tools_json + "\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments within <tool_call></tool_call> "
        'XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nWeather in Paris and Rome?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n<tool_response>\nrain\n</tool_response><|im_end|>\n"
        # after the last real query (tool results do not count as one): the reasoning stays
        "<|im_start|>assistant\n<think>\nboth known\n</think>\n\nParis: sunny. Rome: rain.<|im_end|>\n"
    )


def test_tool_call_after_text_and_a_tools_block_without_system():
    messages = [{"role": "user", "content": "Q"},
                {"role": "assistant", "content": "Let me check.", "tool_calls": [{"name": "f", "arguments": {"a": 1}}]}]
    text = render(messages, tools=[WEATHER], add_generation_prompt=True, enable_thinking=False)
    assert text.startswith("<|im_start|>system\n# Tools\n\n")
    assert text.endswith(
        # the last assistant turn after the query always opens a (here empty) think block
        '<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nLet me check.\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n'
        "</tool_call><|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
