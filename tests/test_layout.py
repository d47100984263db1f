"""The architecture's rules, checked on the source so they stay true (README: "The layout").

- no import cycles between modules;
- no private names (a leading underscore) used across modules;
- layers: `sandbox/` imports nothing above it, `tools/` nothing from `agent/`, the agent's core no
  front end, no model implementation and no small-model code; the small-model strategy is imported
  only by the composition root (`agent/chat.py`) and front ends;
- no module over 500 lines;
- `tests/` mirrors the packages.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("agent", "tools", "sandbox")
MAX_LINES = 500
# Files that run elsewhere (inside the sandbox, on a remote kernel) and import nothing of ours.
STANDALONE = {"sandbox.boot", "sandbox.gateway_remote", "sandbox.reaper"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


MODULES = modules()


def resolve(current: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def in_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports(name: str) -> list[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for every import of ours in `name`."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    out = []
    for node in ast.walk(tree):
        if in_type_checking(node, parents):
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = resolve(name, path.name == "__init__.py", node)
            names = [a.name for a in node.names]
            # `from pkg import submodule` imports the submodule
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            out += [(s, [], node.lineno) for s in subs]
            rest = [n for n in names if f"{target}.{n}" not in MODULES]
            if rest:
                out.append((target, rest, node.lineno))
    return [(m, ns, line) for m, ns, line in out if m.split(".")[0] in PACKAGES]


def graph() -> dict[str, set[str]]:
    return {name: {m for m, _, _ in imports(name) if m in MODULES and m != name} for name in MODULES}


def test_no_import_cycles():
    g = graph()
    cycles, state, stack = [], {}, []

    def visit(n: str) -> None:
        state[n] = "open"
        stack.append(n)
        for m in sorted(g[n]):
            if state.get(m) == "open":
                cycles.append(" -> ".join(stack[stack.index(m):] + [m]))
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = "done"

    for n in sorted(g):
        if n not in state:
            visit(n)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


# Underscore names that are public API of the standard library or of our dependencies.
ALLOWED_PRIVATE = {"_exit", "_getframe", "_replace", "_asdict", "_fields", "_field_defaults", "_make",
                   "_compile_all_devices", "_current_frames", "_thread"}
ATTR = re.compile(r"(?<![\w.])(?!self\b|cls\b)([A-Za-z]\w*)\._([a-z]\w*)\b")


def test_no_private_names_across_modules():
    found = []
    for name, path in MODULES.items():
        for target, names, line in imports(name):
            found += [f"{path.relative_to(ROOT)}:{line}: imports {target}.{n}" for n in names
                      if n.startswith("_") and not n.startswith("__") and n not in ALLOWED_PRIVATE]
        for i, text in enumerate(path.read_text().splitlines(), 1):
            code = text.split("#", 1)[0]
            for obj, attr in ATTR.findall(code):
                if f"_{attr}" not in ALLOWED_PRIVATE and not re.search(r"""["'].*\b%s\._%s""" % (obj, attr), code):
                    found.append(f"{path.relative_to(ROOT)}:{i}: uses {obj}._{attr}")
    assert not found, "private names used across modules:\n" + "\n".join(found)


LAYERS = [
    # (modules matching this prefix, may not import these prefixes)
    ("sandbox", ("agent", "tools")),
    ("tools", ("agent",)),
    ("agent.core", ("agent.frontends", "agent.models", "agent.smallmodel", "agent.chat")),
    ("agent.models", ("agent.frontends", "agent.smallmodel", "agent.chat")),
    ("agent.smallmodel", ("agent.frontends", "agent.chat")),
]


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize("layer,forbidden", LAYERS, ids=[layer for layer, _ in LAYERS])
def test_layers(layer, forbidden):
    bad = [f"{MODULES[n].relative_to(ROOT)}:{line}: {n} imports {m}"
           for n in MODULES if within(n, layer)
           for m, _, line in imports(n) if any(within(m, f) for f in forbidden)]
    assert not bad, "\n".join(bad)


def test_small_model_strategy_is_a_plug_in():
    """Nothing imports agent.smallmodel except the composition root and the front ends."""
    allowed = ("agent.smallmodel", "agent.chat", "agent.frontends")
    bad = [f"{n} imports {m}" for n in MODULES if not any(within(n, a) for a in allowed)
           for m, _, _ in imports(n) if within(m, "agent.smallmodel")]
    assert not bad, "\n".join(bad)


def test_modules_are_small():
    big = {str(p.relative_to(ROOT)): n for p in MODULES.values() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_tests_mirror_the_packages():
    packages = {p.parent.relative_to(ROOT) for p in MODULES.values() if p.name == "__init__.py"}
    missing = [str(p) for p in packages if not list((ROOT / "tests" / p).glob("test_*.py"))]
    assert not missing, f"packages without tests/<package>/test_*.py: {missing}"
    strays = [str(d.relative_to(ROOT)) for d in (ROOT / "tests").rglob("*") if d.is_dir()
              and d.name not in ("data", "__pycache__") and "data" not in d.relative_to(ROOT).parts
              and d.relative_to(ROOT / "tests") not in packages]
    assert not strays, f"test folders that mirror no package: {strays}"


def test_the_rules_see_the_imports():
    """The checker itself: it finds imports (else every rule above would pass vacuously)."""
    g = graph()
    assert "agent.core.messages" in g["agent.core.tree"]
    assert any(within(m, "sandbox") for m in g["agent.chat"] | set().union(*(g[n] for n in g if within(n, "agent.core"))))
