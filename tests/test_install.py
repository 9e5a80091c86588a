"""The package installs under its own names and does not disturb transformers."""

import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_repository_root_does_not_shadow_hf_kernels():
    """Started in the repository root (which `python -m` puts first on sys.path), transformers still gets
    Hugging Face's `kernels`: ours lives in kernels/prag_kernels/ and kernels/ is no package."""
    assert not (ROOT / "kernels" / "__init__.py").exists()
    code = (
        "import importlib.metadata as md, pathlib, sys\n"
        "from transformers import LlamaConfig\n"
        "import kernels, prag_kernels\n"
        "md.version('kernels')\n"  # Hugging Face's package is installed (the test extra asks for it)
        "assert not pathlib.Path(kernels.__file__).is_relative_to(sys.argv[1] + '/kernels'), kernels.__file__\n"
        "print(pathlib.Path(prag_kernels.__file__).parent.relative_to(sys.argv[1]))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [str(Path("kernels") / "prag_kernels")]
    out = subprocess.run(
        [sys.executable, "-m", "prag_core.cli", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert out.returncode == 0 and "demo" in out.stdout, out.stderr[-2000:]


def _importable_names(folder):
    """Top-level names a folder provides when it is on sys.path: modules and regular packages. A folder without
    __init__.py is a namespace portion, which any regular package or module of that name outranks."""
    return {p.stem for p in folder.glob("*.py")} | {p.name for p in folder.iterdir() if (p / "__init__.py").exists()}


def test_no_folder_of_ours_shares_a_name_with_an_installed_module():
    """The root (python -m, Ray workers), tests/ (pytest), bench/ folders (scripts run from them), prag_core/ and
    the kernel package (a file run from them) name nothing that the standard library or site-packages provide."""
    ours = [
        ROOT,
        ROOT / "tests",
        ROOT / "prag_core",
        ROOT / "kernels" / "prag_kernels",
        *[p for p in [ROOT / "bench", *(ROOT / "bench").rglob("*")] if p.is_dir() and "__pycache__" not in p.parts],
    ]
    mine = {p.resolve() for p in ours}
    others = [p for p in map(Path, filter(None, sys.path)) if p.is_dir() and p.resolve() not in mine]
    installed = set(sys.stdlib_module_names) | {m.name for m in pkgutil.iter_modules(map(str, others))}
    installed |= {p.name for d in others for p in d.iterdir() if p.is_dir() and p.name.isidentifier()}
    assert "transformers" in installed and "kernels" in installed
    clashes = {str(folder.relative_to(ROOT)): sorted(_importable_names(folder) & installed) for folder in ours}
    assert not any(clashes.values()), clashes


def test_cli_version_and_help():
    from prag_core import __version__

    out = subprocess.run([sys.executable, "-m", "prag_core.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and __version__ in out.stdout
    out = subprocess.run([sys.executable, "-m", "prag_core.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "demo" in out.stdout


def test_import_and_every_help_do_not_import_torch():
    """`import prag_core` and `prag [COMMAND] --help` stay under a second: they import neither torch nor
    transformers (the parser's defaults and choices live in torch-free modules: offline/train_config.py,
    answer/config.py, pairs/choices.py); load_model is imported on first use."""
    commands = ["build", "demo", "ask", "eval", "export-peft", "store", "serve", "store verify".split()]
    probe = (
        f"COMMANDS = {commands!r}\n"
        "import sys, contextlib, io\n"
        "import prag_core\n"
        "from prag_core.cli import build_parser\n"
        "parser = build_parser()\n"
        "for command in ([], *([c] if isinstance(c, str) else c for c in COMMANDS)):\n"
        "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "        parser.parse_args([*command, '--help'])\n"
        "print(sorted(m for m in ('torch', 'transformers', 'prag_kernels') if m in sys.modules))\n"
        "print(callable(prag_core.load_model), 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["[]", "True True"]


@pytest.mark.slow
def test_wheel_installs_and_imports(tmp_path):
    """A non-editable wheel provides prag_kernels and prag_core (the package_dir mapping works)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(ROOT)], check=True
    )
    wheel = next((tmp_path / "dist").glob("prag-*.whl"))
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True
    )
    code = "import prag_kernels, prag_core; print(prag_kernels.__file__); print(prag_core.__file__)"
    # PYTHONPATH comes before the editable install's finder, so the wheel's copy is imported.
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(target)},
        check=True,
    )
    kernels_file, core_file = map(Path, out.stdout.split())
    assert kernels_file.parent == target / "prag_kernels"
    assert core_file.parent == target / "prag_core"
    assert (target / "prag_core" / "data").is_dir(), "package data missing from the wheel"
