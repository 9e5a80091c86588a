"""The compile gate: every Triton launch prag_kernels can make, compiled for sm_80 and sm_90 on this CPU, spills
nothing and fits the target's shared memory (prag_kernels.compile_gate); writes bench/results/kernel-compile.md.

It runs as a subprocess because the test session runs Triton in its interpreter (TRITON_INTERPRET=1), under
which triton.jit gives interpreted functions that cannot be compiled. Cold (empty Triton cache) it takes about
3 minutes on 2 cores; compiles are cached in ~/.triton/cache, so a rerun on unchanged kernels takes seconds.
"""

import os
import subprocess
import sys
from pathlib import Path

from prag_kernels.fused_lora_triton import DECODE_CONFIGS, PREFILL_CONFIGS, REDUCE_BLOCK_N

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "bench" / "results" / "kernel-compile.md"


def config_cell(config):
    blocks = ", ".join(
        f"{name} {config.kwargs[name]}" for name in ("BLOCK_M", "BLOCK_N", "BLOCK_K") if name in config.kwargs
    )
    return f"{blocks} / {config.num_warps} / {config.num_stages}"


def test_every_kernel_config_compiles_without_spills_and_fits_shared_memory():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "prag_kernels.compile_gate", "--out", str(TABLE)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = TABLE.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| _")]
    # one row per autotune config of each kernel (decode rows show the fixed 16-wide x tile), all passing
    want = {f"_fused_lora_kernel | {config_cell(c)}" for c in PREFILL_CONFIGS}
    want |= {f"_decode_kernel | BLOCK_M 16, {config_cell(c)}" for c in DECODE_CONFIGS}
    want |= {f"_reduce_kernel | BLOCK_M 16, BLOCK_N {REDUCE_BLOCK_N} / 4 / 3"}
    assert {" | ".join(c.strip() for c in row.strip("|").split("|")[:2]) for row in rows} == want
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        sm80, sm90 = cells[3:6], cells[6:9]
        assert cells[-1] == "yes" and sm80[2] == sm90[2] == "0", row
        assert int(sm80[1]) <= 163 and int(sm90[1]) <= 227 and 0 < int(sm80[0]) <= 255, row
    total, passed = text.splitlines()[0].split(", ")[-1].split(" pass")[0].split(" of ")[::-1]
    assert int(total) == int(passed) > 100
