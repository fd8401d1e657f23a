"""The package's shape: imports run one way down the layers, no module imports itself back through
others, and every module has its test file (tests/test_<folder>_<module>.py)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "chains_lite"

#: What each folder may import from the others (besides itself): core at the bottom; zoo and
#: experiments on top. viz draws methods' maps; the zoo reads nothing of the experiments.
ALLOWED = {
    "core": set(),
    "capture": {"core"},
    "eval": {"core"},
    "methods": {"core", "capture", "eval"},
    "viz": {"core", "capture", "eval", "methods"},
    "zoo": {"core", "capture", "eval", "methods"},
    "experiments": {"core", "capture", "eval", "methods", "zoo"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every chains_lite module ``name`` imports, at the top or inside a function."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("chains_lite")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("chains_lite"):
                continue
            subs = {f"{target}.{a.name}" for a in node.names} & known   # `from pkg import module`
            out |= subs or {target}
    return out - {name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(m, p, set(mods)) for m, p in mods.items()}


def folder(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else None


def test_the_parser_sees_relative_and_nested_imports(tmp_path):
    src = "from ..core import chain\nfrom . import families\ndef f():\n    from ..zoo.load import load\n"
    path = tmp_path / "seam.py"
    path.write_text(src)
    known = {"chains_lite.core.chain", "chains_lite.capture.families"}
    assert imports("chains_lite.capture.seam", path, known) == {
        "chains_lite.core.chain", "chains_lite.capture.families", "chains_lite.zoo.load"}


def test_every_folder_imports_only_the_layers_below_it():
    wrong = [f"{m} -> {t}" for m, targets in graph().items() for t in targets
             if folder(m) and folder(t) and folder(t) != folder(m) and folder(t) not in ALLOWED[folder(m)]]
    assert not wrong, "imports up the layers:\n" + "\n".join(sorted(wrong))


def test_the_zoo_loads_models_without_the_training_code():
    wrong = [f"{m} -> {t}" for m, targets in graph().items() for t in targets
             if m.startswith("chains_lite.zoo") and ".training" not in m and ".training" in t]
    assert not wrong, "\n".join(wrong)


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(g.get(m, ())):
            if state.get(t) == "open":
                return stack[stack.index(t):] + [t]
            if t not in state and (found := visit(t)):
                return found
        state[m] = "done"
        stack.pop()
        return None

    for m in sorted(g):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_find_cycle_finds_one_and_only_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_module_imports_itself_back():
    cycle = find_cycle(graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


@pytest.mark.parametrize("name", sorted(m for m, p in modules().items()
                                        if p.name not in ("__init__.py", "__main__.py")))
def test_every_module_has_its_test_file(name):
    test = ROOT / "tests" / ("test_" + "_".join(name.split(".")[1:]) + ".py")
    assert test.exists(), f"{name} has no {test.relative_to(ROOT)}"
