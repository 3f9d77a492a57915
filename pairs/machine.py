"""The machine a run trains on: the device asked for, its float32 matmul ceiling (the yardstick of "the limit"),
and the words every timing is quoted with."""
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from .config import DEVICES

def resolve_device(device="cpu"):
    if isinstance(device, torch.device):
        return device
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose from {', '.join(DEVICES)}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(device)


def matmul_gflops(device, n=2048, reps=10):
    """The practical float32 ceiling of `device`: GFLOP/s of a 2048x2048 matmul, the median of `reps`. Timed here,
    not with torch.utils.benchmark: importing it on a machine without CUDA prints a CUDA_HOME warning at the end
    of every full pipeline call (it imports torch.utils.cpp_extension)."""
    g = torch.Generator(device=device).manual_seed(0)  # (the global generator is left as it is)
    a, b = (torch.randn(n, n, device=device, generator=g) for _ in range(2))
    a @ b
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def describe_machine(device="cpu"):
    """Cores, CPU model, GPU, torch threads and versions: what every timing is quoted with."""
    cpu = platform.processor()
    if Path("/proc/cpuinfo").exists():
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), cpu)
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.device(device).type == "cuda" else ""
    return (f"{os.cpu_count()} cores ({cpu}){gpu}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"Python {platform.python_version()}")
