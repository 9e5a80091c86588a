"""The compile gate (prag_kernels.compile_gate): every Triton launch prag_kernels can make, compiled for sm_80 and
sm_90 on this CPU, spills nothing, fits the target's shared memory, loads W, B and A 16 bytes at a time in
fp16/bf16, pipelines its K-loop (cp.async) and, in the fused prefill on sm_90, uses wgmma; writes
bench/results/kernel-compile.md. Its PTX readers are checked on hand-written PTX, and on one real compile of the
old row-major b_cat, whose 2-byte B gathers the gate must report.

Compiles run in subprocesses because the test session runs Triton in its interpreter (TRITON_INTERPRET=1), under
which triton.jit gives interpreted functions that cannot be compiled. Cold (empty Triton cache) the gate takes
about 3 minutes on 2 cores; compiles are cached in ~/.triton/cache, so a rerun on unchanged kernels takes seconds.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from prag_kernels import compile_gate as gate
from prag_kernels.fused_lora_triton import DECODE_CONFIGS, DELTA_CONFIGS, PREFILL_CONFIGS, REDUCE_BLOCK_N

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "bench" / "results" / "kernel-compile.md"
COMPILING = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def config_cell(config):
    blocks = ", ".join(
        f"{name} {config.kwargs[name]}" for name in ("BLOCK_M", "BLOCK_N", "BLOCK_K") if name in config.kwargs
    )
    return f"{blocks} / {config.num_warps} / {config.num_stages}"


def table_rows(text):
    """The table's kernel rows as {column header: cell}."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines if line[2] == "_"]


def compiling(*args, timeout):
    """python args... without the Triton interpreter; asserts it succeeds, returns the finished process."""
    done = subprocess.run(
        [sys.executable, "-W", "ignore", *args],
        cwd=ROOT,
        env=COMPILING,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_every_kernel_config_compiles_to_wide_pipelined_loads_without_spills():
    compiling("-m", "prag_kernels.compile_gate", "--out", str(TABLE), timeout=900)
    text = TABLE.read_text()
    rows = table_rows(text)
    # one row per autotune config of each kernel (decode rows show the fixed 16-wide x tile), the reduce unpipelined
    want = {("_fused_lora_kernel", config_cell(c)) for c in PREFILL_CONFIGS}
    want |= {("_decode_kernel", f"BLOCK_M 16, {config_cell(c)}") for c in DECODE_CONFIGS}
    want |= {("_delta_kernel", config_cell(c)) for c in DELTA_CONFIGS}
    want |= {("_reduce_kernel", f"BLOCK_M 16, BLOCK_N {REDUCE_BLOCK_N} / 4 / 1")}
    assert {(row["kernel"], row["config (blocks / warps / stages)"]) for row in rows} == want
    for row in rows:
        assert row["pass"] == "yes", row
        sixteen_bit = "fp32" not in row["types"]
        stages = int(row["config (blocks / warps / stages)"].split(" / ")[-1])
        for cap, limit_kb in ((80, 163), (90, 227)):
            cell = {name: row[f"sm_{cap} {name}"] for name in ("regs", "shared KB", "stack B", "W/B/A load B")}
            assert cell["stack B"] == "0" and int(cell["shared KB"]) <= limit_kb, row
            assert 0 < int(cell["regs"]) <= 255, row
            loads = cell["W/B/A load B"].split("/")
            assert len(loads) == 3 and all(w == "–" or int(w) >= 16 for w in loads) or not sixteen_bit, row
            if row["kernel"] in gate.K_LOOPS and stages > 1:
                assert row[f"sm_{cap} cp.async"] == "yes", row
        if row["kernel"] == "_fused_lora_kernel" and sixteen_bit:
            assert row["sm_90 wgmma"] == "yes", row
    head = re.match(r"# Kernel compile gate: (\d+) specialisations × 2 targets, (\d+) of \1 pass", text)
    total, passed = map(int, head.groups())
    assert total == passed > 100


def test_ptx_readers_on_hand_written_ptx():
    """Loads are named by the innermost .loc of fused_lora_triton.py (an inlined helper's line; in an inline asm
    block its first .loc: LLVM numbers the block's further lines 14, 15, ...), sized from the vector and type
    suffixes or cp.async's byte count; other files and line 0 are not named."""
    source = "\n".join(
        [
            "        w = tl.load(w_ptrs, mask=w_mask, other=0.0)",  # line 10
            "        b = tl.load(b_ptrs, mask=b_mask, other=0.0)",
            "        x = tl.load(x_ptrs, mask=x_mask, other=0.0)",
            "    a = tl.load(a_ptr + a_col[:, None] + offs_n[None, :] * stride_an,",
            "                mask=r_ok[:, None] & n_ok[None, :], other=0.0)",
            "        acc += tl.load(y_ptrs, mask=m_ok[:, None] & n_ok[None, :], other=0.0)",
        ]
    )
    lines = gate.source_lines(source, first=10)
    assert lines == {10: "W", 11: "B", 12: "x", 13: "A", 15: "other"}
    ptx = """
	.loc	1 10 13
	@%p1 ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd1 + 0 ];
	.loc	1 11 13, function_name $L__info_string0, inlined_at 1 50 19
	// begin inline asm
	mov.u16 %rs1, %rs2;
	@%p2 ld.global.b16 { %rs1 }, [ %rd2 + 0 ];
	// end inline asm
	.loc	1 12 13, function_name $L__info_string0, inlined_at 1 50 19
	cp.async.cg.shared.global [ %r5 + 0 ], [ %rd3 + 0 ], 0x10, %r6;
	cp.async.commit_group;
	.loc	1 13 9, function_name $L__info_string0, inlined_at 1 60 9
	// begin inline asm
	.loc	1 13 9, function_name $L__info_string0, inlined_at 1 60 9
	mov.u32 %r7, %r0;
	.loc	1 14 9, function_name $L__info_string0, inlined_at 1 60 9
	mov.u32 %r8, %r0;
	.loc	1 15 9, function_name $L__info_string0, inlined_at 1 60 9
	@%p3 ld.global.nc.L1::evict_last.v2.b32 { %r7, %r8 }, [ %rd4 + 0 ];
	// end inline asm
	cp.async.ca.shared.global [ %r9 + 0 ], [ %rd5 + 0 ], 4, %r10;
	.loc	2 11 1
	ld.global.b32 { %r11 }, [ %rd6 + 0 ];
	.loc	1 0 0
	ld.global.v2.b16 { %rs3, %rs4 }, [ %rd7 + 0 ];
	.loc	1 15 16
	ld.global.b16 { %rs5 }, [ %rd8 + 0 ];
	.loc	1 11 13
	cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%r12], [%rd9, {%r13, %r14}], [%r15];
	wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%r16}, %rd10, %rd11, %p4, 1, 1, 0, 0;
}
	.file	1 "/anywhere/prag_kernels/fused_lora_triton.py"
	.file	2 "/venv/triton/language/standard.py"
"""
    assert gate.ptx_loads(ptx, lines) == [
        ("W", 16, False),
        ("B", 2, False),
        ("x", 16, True),
        ("A", 8, False),
        ("A", 4, True),
        (None, 4, False),  # standard.py, not the kernels' file
        (None, 4, False),  # line 0: no source line
        ("other", 2, False),
        ("B", 16, True),  # a bulk (TMA) copy counts as wide
    ]
    assert gate.has_async_copies(ptx) and gate.has_wgmma(ptx)
    plain = "\n".join(line for line in ptx.splitlines() if "cp.async" not in line and "wgmma" not in line)
    assert not gate.has_async_copies(plain) and not gate.has_wgmma(plain)
    facts = gate.machine_code(ptx, lines)
    assert facts["narrowest"] == {"W": 16, "B": 2, "x": 16, "A": 4}
    assert facts["async_operands"] == ["A", "B", "x"] and facts["unnamed"] == 2


def test_problems_name_operand_width_target_and_cause():
    """A bf16 fused prefill job whose sm_90 code has a 4-byte B tile per thread, no cp.async, no wgmma and spills
    fails with each reason named; the same facts pass for fp32 (no width or wgmma check) but for the spills."""
    consts = (("BLOCK_K", 32), ("BLOCK_M", 32), ("BLOCK_N", 32), ("PRECISION", "tf32"), ("R_PAD", 16))
    job = ("_fused_lora_kernel", (("x_ptr", "*bf16"), ("y_ptr", "*bf16")), consts, (), 4, 3)
    result = dict(
        cap=90, regs=255, shared=1024, stack=8, narrowest={"W": 16, "B": 4, "A": 16}, async_copies=False, wgmma=False
    )
    found = gate.problems(job, result)
    assert found[0] == "sm_90: 8 B of stack (spills)"
    assert found[1].startswith("sm_90: B loaded 4 bytes at a time (< 16; cause: the config: its BLOCK_K×R_PAD tile")
    assert "no cp.async" in found[2] and "no wgmma" in found[3] and len(found) == 4
    fp32 = (job[0], (("x_ptr", "*fp32"), ("y_ptr", "*fp32")), *job[2:])
    assert gate.problems(fp32, dict(result, async_copies=True)) == ["sm_90: 8 B of stack (spills)"]
    assert gate.problems(job, dict(result, stack=0, narrowest={"B": 16}, async_copies=True, wgmma=True)) == []


ROW_MAJOR_B = """
import json, torch
from prag_kernels import compile_gate as gate, fused_lora_triton as ft
meta = dict(device="meta", dtype=torch.bfloat16)
k, n, r = 4096, 14336, 6
x, w, out = torch.empty(1, k, **meta), torch.empty(n, k, **meta), torch.empty(1, n, **meta)
a = torch.empty(r, n, **meta).T.unsqueeze(0)
config = dict(BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=4, SPLIT_K=1)  # a DECODE_CONFIGS entry
found = {}
for layout, b in (("row-major", torch.empty(k, r, **meta)), ("b_cat.T contiguous", torch.empty(r, k, **meta).T)):
    (job,) = gate.launch_jobs(ft.launches(x, w, None, a, b.unsqueeze(0), 1.0, None, out, config, sms=gate.SMS))
    (result,) = gate.compile_job(job, targets=(90,))
    found[layout] = dict(result, problems=gate.problems(job, result))
print(json.dumps(found))
"""


def test_row_major_b_cat_is_reported_narrow_and_not_pipelined():
    """The old layout, b_cat (in, R) row-major (stride R along `in`), in the bf16 decode kernel for sm_90: B is
    gathered 2 bytes at a time and is the one K-loop operand left out of the cp.async pipeline; the injection
    layer's layout (stride 1 along `in`) loads it 16 bytes at a time, asynchronously."""
    found = json.loads(compiling("-c", ROW_MAJOR_B, timeout=600).stdout)
    old, new = found["row-major"], found["b_cat.T contiguous"]
    assert old["narrowest"]["B"] == 2 and old["narrowest"]["W"] == 16, old
    assert "B" not in old["async_operands"] and "W" in old["async_operands"], old
    assert any(p.startswith("sm_90: B loaded 2 bytes at a time (< 16; cause: the layout") for p in old["problems"])
    assert new["narrowest"]["B"] == 16 and "B" in new["async_operands"] and new["problems"] == [], new
