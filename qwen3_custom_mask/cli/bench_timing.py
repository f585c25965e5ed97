"""How `qwen3-mask bench` times and weighs: medians over repeats (synchronised on CUDA), interleaved A/B pairs,
peak memory (CUDA allocator peak; Linux CPU resident-set high-water mark, reset per run), a mask's bytes."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from ..model.masking import LayerMasks


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats: int, warmup: int = 1):
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), max(times)


def timed_pair(fn_a, fn_b, device, repeats: int):
    """Times two functions alternately (a, b, a, b, ...) so that machine drift hits both alike."""
    fn_a(), fn_b()
    _sync(device)
    times = ([], [])
    for _ in range(repeats):
        for fn, out in ((fn_a, times[0]), (fn_b, times[1])):
            start = time.perf_counter()
            fn()
            _sync(device)
            out.append(time.perf_counter() - start)
    return tuple((statistics.median(t), min(t), max(t)) for t in times)


class PeakMemory:
    """Peak memory of a block: CUDA allocator peak, or on Linux the RSS high-water mark (reset first)."""

    def __init__(self, device):
        self.device = device
        self.mib = float("nan")

    @staticmethod
    def _rss_hwm() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated() / 2**20
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
                self.base = self._rss_hwm()
            except OSError:
                self.base = float("nan")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.mib = torch.cuda.max_memory_allocated() / 2**20 - self.base
        else:
            self.mib = self._rss_hwm() - self.base


def mask_bytes(mask) -> int:
    if mask is None:
        return 0
    if isinstance(mask, torch.Tensor):
        return mask.numel() * mask.element_size()
    if isinstance(mask, LayerMasks):  # {layer_idx: (mask, kwargs)} (shared masks counted once)
        return sum(mask_bytes(m) for m in {id(m): m for m, _ in mask.values()}.values())
    if isinstance(mask, dict):  # {layer_type: mask} (shared objects counted once)
        return sum(mask_bytes(m) for m in {id(m): m for m in mask.values()}.values())
    tensors = [getattr(mask, name) for name in dir(mask) if isinstance(getattr(mask, name, None), torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)  # BlockMask: its index tensors
