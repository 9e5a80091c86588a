"""Run the benchmark suites and write bench/results/<machine>.md, its JSON and its plots.

    python bench/suites/run_all.py                      every suite, full size (about 15 minutes on 2 CPU cores)
    python bench/suites/run_all.py --smoke --out DIR    tiny shapes, one round each (CI; under a minute)
    python bench/suites/run_all.py --suites kernel,update --threads 1 --note "shared machine"

Suites (one file each): kernel (bench_kernel.py), update (bench_update.py), e2e (bench_e2e.py),
offline (bench_offline.py). With a CUDA GPU present, bench/gpu/kernel_report.py also runs and its
table goes into the report. Exits non-zero if any benchmark failed (the report is still written).
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent  # bench/suites
BENCH = HERE.parent
ROOT = BENCH.parent
SUITES = {
    "kernel": "bench_kernel.py",
    "update": "bench_update.py",
    "e2e": "bench_e2e.py",
    "offline": "bench_offline.py",
}
# Full runs: fast calls (the kernel suite) repeat for up to 0.5 s after a warm-up; the slow suites set their
# own rounds. Smoke runs: one round of everything.
FULL_OPTIONS = [
    "--benchmark-max-time=0.5",
    "--benchmark-min-rounds=5",
    "--benchmark-warmup=on",
    "--benchmark-warmup-iterations=3",
]
SMOKE_OPTIONS = ["--benchmark-max-time=0", "--benchmark-min-rounds=1", "--benchmark-warmup=off"]


def run_gpu_script(env, out_file):
    """bench/gpu/kernel_report.py's markdown, when a GPU and the script are there; returns the file or None."""
    script = BENCH / "gpu" / "kernel_report.py"
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
        capture_output=True,
        text=True,
        env=env,
    )
    if not script.is_file() or probe.stdout.strip() != "True":
        return None
    md = out_file.with_suffix(".md")
    done = subprocess.run(
        [sys.executable, str(script), "--out", str(out_file.with_suffix(".json")), "--md", str(md)],
        capture_output=True,
        text=True,
        env=env,
    )
    report = md.read_text() if md.is_file() else ""
    failed = f"\n\nkernel_report.py exited {done.returncode}:\n\n```\n{done.stderr[-2000:]}\n```\n"
    out_file.write_text(report + (failed if done.returncode else ""))
    return out_file


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, one round (CI)")
    parser.add_argument("--suites", default=",".join(SUITES), help=f"comma-separated subset of {','.join(SUITES)}")
    parser.add_argument("--threads", type=int, help="torch threads for every suite (default: all cores)")
    parser.add_argument("--out", default=str(BENCH / "results"), help="folder for <machine>.md/.json/.png")
    parser.add_argument("--note", default="", help="a line about the machine for the report (e.g. 'shared')")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    unknown = [s for s in args.suites.split(",") if s not in SUITES]
    if unknown:
        parser.error(f"unknown suite(s) {','.join(unknown)}; choose from {','.join(SUITES)}")

    env = dict(os.environ, PRAG_BENCH_SMOKE="1" if args.smoke else "0", PRAG_BENCH_NOTE=args.note)
    if args.threads:
        env["PRAG_BENCH_THREADS"] = str(args.threads)
    sys.path.insert(0, str(HERE))
    from report import write_report

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "benchmarks.json"
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "python_files=bench_*.py",
            *[str(HERE / SUITES[s]) for s in args.suites.split(",")],
            f"--benchmark-json={raw}",
            "--benchmark-columns=median,iqr,rounds",
            *(SMOKE_OPTIONS if args.smoke else FULL_OPTIONS),
            *args.pytest_args,
        ]
        print("+", " ".join(cmd), flush=True)
        code = subprocess.run(cmd, cwd=ROOT, env=env).returncode
        if not raw.is_file():
            print("run_all: no benchmark results were written", file=sys.stderr)
            return code or 1
        gpu = None if args.smoke else run_gpu_script(env, Path(tmp) / "gpu.txt")
        print(f"report: {write_report(raw, args.out, gpu)}")
    return code


if __name__ == "__main__":
    sys.exit(main())
