"""The package installs under its own names and does not disturb transformers."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_kernels_name_does_not_shadow_hf_kernels(tmp_path):
    """Outside the source tree, `kernels` is Hugging Face's package or nothing, never ours."""
    code = ("import importlib.util, importlib.metadata as md, prag_kernels\n"
            "from transformers.utils import import_utils\n"
            "spec = importlib.util.find_spec('kernels')\n"
            "try:\n    md.version('kernels'); hf = True\nexcept md.PackageNotFoundError:\n    hf = False\n"
            "assert (spec is not None) == hf, spec\n"
            "print(import_utils.is_kernels_available(), hf)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    available, hf_installed = out.stdout.split()
    if hf_installed == "False":
        assert available == "False"


def test_cli_version_and_help():
    from prag_core import __version__
    out = subprocess.run([sys.executable, "-m", "prag_core.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and __version__ in out.stdout
    out = subprocess.run([sys.executable, "-m", "prag_core.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "demo" in out.stdout


@pytest.mark.slow
def test_wheel_installs_and_imports(tmp_path):
    """A non-editable wheel provides prag_kernels and prag_core (the package_dir mapping works)."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(ROOT)],
                   check=True)
    wheel = next((tmp_path / "dist").glob("prag-*.whl"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True)
    code = "import prag_kernels, prag_core; print(prag_kernels.__file__); print(prag_core.__file__)"
    # PYTHONPATH comes before the editable install's finder, so the wheel's copy is imported.
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(target)}, check=True)
    kernels_file, core_file = map(Path, out.stdout.split())
    assert kernels_file.parent == target / "prag_kernels"
    assert core_file.parent == target / "prag_core"
    assert (target / "prag_core" / "data").is_dir(), "package data missing from the wheel"
