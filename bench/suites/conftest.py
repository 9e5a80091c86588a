"""Benchmark session set-up: pin torch's thread count once, and record what the report needs to
describe the machine (library versions, threads, smoke mode) in the benchmark JSON."""

import os
import platform

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # importing prag_kernels must not need a GPU

from common import SMOKE, THREADS  # noqa: E402

torch.set_num_threads(THREADS)


def _cpu_model():
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pytest_benchmark_update_machine_info(config, machine_info):
    import transformers
    import triton

    machine_info.update(
        {
            "cpu_model": _cpu_model(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "triton": triton.__version__,
            "transformers": transformers.__version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "smoke": SMOKE,
            "note": os.environ.get("PRAG_BENCH_NOTE", ""),
        }
    )
