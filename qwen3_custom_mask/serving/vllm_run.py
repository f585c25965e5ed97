"""Runs checkpoints on vLLM's offline engine, one after another, and writes what each returned as JSON.

    python -m qwen3_custom_mask.serving.vllm_run JOBS.json OUT.json

JOBS.json: ``{"prompts": [[token ids], ...], "max_tokens": 32, "repeats": 1, "engine": {LLM kwargs}, "runs":
[{"model": PATH, "task": "generate" | "embed", "engine": {more LLM kwargs}}, ...]}``. Each run gets ``tokens``
(greedy, per prompt) or ``embeddings``, ``seconds`` (one per repeat: the requests alone, engine start excluded;
with ``repeats`` > 1 a first, untimed pass warms the engine up) or ``error`` (the first line of a refusal). With
``"interleave": true`` every engine is started first (in this process) and the timed passes go round them, one
pass per engine per round in a rotated order, so that a case and its baseline are timed seconds apart, not
minutes: ``qwen3-mask bench --only vllm`` pairs them by round. The tests and the bench use this runner: vLLM's
engine is a process tree with a ``__main__`` guard, best kept out of the caller's process.
"""

from __future__ import annotations

import gc
import json
import sys
import time


def _start(run: dict, engine: dict):
    """The run's engine, or ``{"error": line}`` when it refuses: a refusal surfaces as the engine's start-up failure."""
    from vllm import LLM

    kwargs = {**engine, **run.get("engine", {})}
    if run.get("task") == "embed":
        kwargs["runner"] = "pooling"
    try:
        return LLM(run["model"], **kwargs)
    except Exception as err:  # keep the refusal's own line
        return {"error": _refusal_line(err)}


def _greedy(prompts: list[list[int]], max_tokens: int):
    """The prompts as vLLM inputs, and greedy sampling of exactly ``max_tokens`` each."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True, detokenize=False)
    return [TokensPrompt(prompt_token_ids=p) for p in prompts], params


def run_one(prompts: list[list[int]], max_tokens: int, run: dict, engine: dict, repeats: int = 1) -> dict:
    llm = _start(run, engine)
    if isinstance(llm, dict):
        return llm
    inputs, params = _greedy(prompts, max_tokens)
    seconds = []
    for _ in range(repeats + (repeats > 1)):
        start = time.perf_counter()
        if run.get("task") == "embed":
            outputs = llm.embed(inputs, use_tqdm=False)
            result = {"embeddings": [o.outputs.embedding for o in outputs]}
        else:
            outputs = llm.generate(inputs, params, use_tqdm=False)
            result = {"tokens": [list(o.outputs[0].token_ids) for o in outputs]}
        seconds.append(time.perf_counter() - start)
    result["seconds"] = seconds[-repeats:]
    del llm
    gc.collect()
    return result


def run_interleaved(prompts: list[list[int]], max_tokens: int, runs: list[dict], engine: dict, repeats: int) -> list[dict]:
    """Every run's engine at once; ``repeats`` (>= 1) rounds of one timed pass each, in a rotated order (generate
    only). ``tokens`` are the last round's."""
    inputs, params = _greedy(prompts, max_tokens)
    engines, results = {}, []
    for idx, run in enumerate(runs):
        llm = _start(run, engine)
        if isinstance(llm, dict):  # a refusal: this run's error, the others go on
            results.append(llm)
            continue
        llm.generate(inputs, params, use_tqdm=False)  # the warm-up pass
        engines[idx] = llm
        results.append({"seconds": []})
    order = list(engines)
    for round_ in range(repeats):
        shift = round_ % max(len(order), 1)
        for idx in order[shift:] + order[:shift]:
            start = time.perf_counter()
            outputs = engines[idx].generate(inputs, params, use_tqdm=False)
            results[idx]["seconds"].append(time.perf_counter() - start)
            # the last round's tokens: every engine was up by then, so a state one leaked into another shows here
            results[idx]["tokens"] = [list(o.outputs[0].token_ids) for o in outputs]
    return results


def _refusal_line(err: BaseException) -> str:
    """The plugin's refusal: raised in this process by its config hook (vLLM wraps it in its config's validation
    error) or by an in-process engine; else the error's own first line (a multiprocess engine logs its workers'
    errors instead)."""
    chain = [err]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    for item in chain:
        for line in str(item).splitlines():
            if "vLLM cannot serve" in line:
                return line[line.index("vLLM cannot serve"):].split(" [type=value_error")[0]
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def main(argv: list[str] | None = None) -> None:
    jobs_path, out_path = (argv or sys.argv[1:])[:2]
    jobs = json.loads(open(jobs_path).read())
    if jobs.get("interleave"):
        results = run_interleaved(jobs["prompts"], jobs.get("max_tokens", 32), jobs["runs"], jobs.get("engine", {}), jobs.get("repeats", 1))
        open(out_path, "w").write(json.dumps(results))
        return
    results = []
    for run in jobs["runs"]:
        print(f"vllm_run: {run['model']} ({run.get('task', 'generate')})", flush=True)
        results.append(run_one(jobs["prompts"], jobs.get("max_tokens", 32), run, jobs.get("engine", {}),
                               jobs.get("repeats", 1)))
        open(out_path, "w").write(json.dumps(results))


if __name__ == "__main__":
    main()
