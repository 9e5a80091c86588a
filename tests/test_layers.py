"""prag_core's layers: a module imports only from its own layer or those below (never upward), so there is
no import cycle between subpackages. The order is prag_core/__init__.py's docstring's. No module of prag_core or
prag_kernels imports another module's private name (one with a leading underscore): what crosses a module
boundary is public. And each package stays within its line budget (LINE_BUDGETS): growth is a visible decision."""

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "prag_core"
LAYERS = [
    {"corpus", "errors", "files", "metrics", "prompts"},
    {"model"},
    {"pairs"},
    {"retrieval"},
    {"storage"},
    {"offline"},
    {"answer"},
    {"", "cli", "commands", "demo"},
]


def layer_of(module):
    """The layer index of a dotted module under prag_core ("prag_core.offline.build" -> 5)."""
    parts = module.split(".")
    name = parts[1] if len(parts) > 1 else ""
    return next(i for i, layer in enumerate(LAYERS) if name in layer)


def imports(path):
    """The prag_core modules `path` imports (anywhere in it, lazy imports included)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "prag_core":
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "prag_core")


MODULES = sorted(CORE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(CORE)))
def test_no_module_imports_upward(path):
    rel = path.relative_to(CORE).with_suffix("")
    me = "prag_core" + (
        ""
        if rel.name == "__init__" and rel.parent == Path(".")
        else "." + ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
    )
    upward = [m for m in imports(path) if layer_of(m) > layer_of(me)]
    assert not upward, f"{me} imports {upward} from a layer above it"


# Lines per package, prag_core's top-level modules as "" and prag_kernels as "kernels": each a little above its size
# when set (2026-12-08), so a change that grows a package past it must raise its budget here, in the same diff.
LINE_BUDGETS = {
    "": 1300,
    "model": 700,
    "pairs": 450,
    "retrieval": 550,
    "storage": 1200,
    "offline": 1450,
    "answer": 2000,
    "kernels": 1700,
}


def package_lines():
    """{package: lines of its modules} as LINE_BUDGETS counts them."""
    lines = {"kernels": sum(len(p.read_text(encoding="utf-8").splitlines()) for p in KERNELS.rglob("*.py"))}
    for path in MODULES:
        rel = path.relative_to(CORE)
        package = rel.parts[0] if len(rel.parts) > 1 else ""
        lines[package] = lines.get(package, 0) + len(path.read_text(encoding="utf-8").splitlines())
    return lines


def test_every_module_is_in_a_layer_and_every_package_within_its_line_budget():
    for path in MODULES:
        rel = path.relative_to(CORE)
        layer_of("prag_core." + (rel.parts[0] if len(rel.parts) > 1 else rel.stem.replace("__init__", "")))
    lines = package_lines()
    assert set(lines) == set(LINE_BUDGETS), f"a package without a line budget: {set(lines) ^ set(LINE_BUDGETS)}"
    over = {p: f"{n} lines, budget {LINE_BUDGETS[p]}" for p, n in lines.items() if n > LINE_BUDGETS[p]}
    assert not over, (
        f"packages over their line budget (raise it in tests/test_layers.py if the growth is meant): {over}"
    )


KERNELS = Path(__file__).resolve().parents[1] / "kernels" / "prag_kernels"


def module_name(path, root, package):
    """The dotted name of the module in `path`, under the package `package` whose folder is `root`."""
    rel = path.relative_to(root).with_suffix("")
    return ".".join((package, *(rel.parts[:-1] if rel.name == "__init__" else rel.parts)))


def private_imports(path, root, package):
    """(module, name) for every `from module import _name` in `path` that names another module's private name
    (relative imports resolved)."""
    me = module_name(path, root, package)
    home = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]  # the package relative imports start from
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.ImportFrom):
            continue
        module = node.module or ""
        if node.level:
            parts = home.split(".")
            module = ".".join(parts[: len(parts) - node.level + 1] + ([module] if module else []))
        if module != me:
            yield from ((module, a.name) for a in node.names if a.name.startswith("_") and not a.name.startswith("__"))


@pytest.mark.parametrize(
    "path,root,package",
    [(p, CORE, "prag_core") for p in MODULES] + [(p, KERNELS, "prag_kernels") for p in sorted(KERNELS.rglob("*.py"))],
    ids=lambda v: v.name if isinstance(v, Path) else None,
)
def test_no_module_imports_a_private_name_of_another(path, root, package):
    found = list(private_imports(path, root, package))
    assert not found, f"{path.name} imports private names of other modules: {found}"
