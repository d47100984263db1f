"""The architecture's rules, checked on the source so they stay true (docs/development.md: "The layout").

- no import cycles between modules, counting every import: at the top, inside a function (run
  later, but still a dependency) and under `if TYPE_CHECKING:` (never run, but a type from the
  module that imports this one is the same circle, drawn in annotations);
- no private names (a leading underscore) used across modules;
- layers: `sandbox/` imports nothing above it, `tools/` nothing from `agent/`, the agent's core no
  front end, no model implementation and no small-model code; the small-model strategy is imported
  only by the composition root (`agent/chat.py`) and front ends;
- no module over 500 lines;
- no new constructor over 12 parameters (today's wide ones are listed, with their counts);
- `tests/` mirrors the packages.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("agent", "tools", "sandbox")
MAX_LINES = 500
# Files that run elsewhere (inside the sandbox, on a remote kernel) and import nothing of ours.
STANDALONE = {"sandbox.inside.boot", "sandbox.inside.gateway_remote", "sandbox.inside.reaper"}


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


def in_function(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return True
    return False


class Import(NamedTuple):
    module: str        # the module imported
    names: list[str]   # the names taken from it (`from m import a, b`), else []
    line: int
    where: str         # "top", "function" (imported when the function runs) or "typing" (TYPE_CHECKING)


def imports_in(source: str, name: str, is_package: bool = False) -> list[Import]:
    """Every import of ours in the module `name` whose text is `source`: top-level, in functions
    and under TYPE_CHECKING alike."""
    tree = ast.parse(source)
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        where = ("typing" if in_type_checking(node, parents) else
                 "function" if in_function(node, parents) else "top")
        if isinstance(node, ast.Import):
            out += [Import(a.name, [], node.lineno, where) for a in node.names]
        else:
            target = resolve(name, is_package, node)
            names = [a.name for a in node.names]
            # `from pkg import submodule` imports the submodule
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            out += [Import(s, [], node.lineno, where) for s in subs]
            rest = [n for n in names if f"{target}.{n}" not in MODULES]
            if rest:
                out.append(Import(target, rest, node.lineno, where))
    return [i for i in out if i.module.split(".")[0] in PACKAGES]


def imports(name: str) -> list[Import]:
    """Every import of ours in the module `name`."""
    path = MODULES[name]
    return imports_in(path.read_text(), name, path.name == "__init__.py")


def graph() -> dict[str, set[str]]:
    return {name: {i.module for i in imports(name) if i.module in MODULES and i.module != name} for name in MODULES}


def edge(a: str, b: str) -> str:
    """How `a` imports `b`, for a cycle's report: `a -[line 85, function]-> b`."""
    how = ", ".join(f"line {i.line}" + ("" if i.where == "top" else f" {i.where}")
                    for i in imports(a) if i.module == b)
    return f"{a} -[{how}]-> {b}"


def find_cycles(g: dict[str, set[str]]) -> list[list[str]]:
    cycles, state, stack = [], {}, []

    def visit(n: str) -> None:
        state[n] = "open"
        stack.append(n)
        for m in sorted(g[n]):
            if state.get(m) == "open":
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = "done"

    for n in sorted(g):
        if n not in state:
            visit(n)
    return cycles


def test_no_import_cycles():
    """No circle of imports, whether its imports run at import time, when a function runs or
    only for the type checker: each is a dependency, and a circle of them is one tangle."""
    cycles = find_cycles(graph())
    assert not cycles, "import cycles:\n" + "\n".join(
        "  " + "; ".join(edge(a, b) for a, b in zip(c, c[1:])) for c in cycles)


# Underscore names that are public API of the standard library or of our dependencies.
ALLOWED_PRIVATE = {"_exit", "_getframe", "_replace", "_asdict", "_fields", "_field_defaults", "_make",
                   "_compile_all_devices", "_current_frames", "_thread"}
ATTR = re.compile(r"(?<![\w.])(?!self\b|cls\b)([A-Za-z]\w*)\._([a-z]\w*)\b")


def test_no_private_names_across_modules():
    found = []
    for name, path in MODULES.items():
        for target, names, line, _ in imports(name):
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
           for m, _, line, _ in imports(n) if any(within(m, f) for f in forbidden)]
    assert not bad, "\n".join(bad)


def test_small_model_strategy_is_a_plug_in():
    """Nothing imports agent.smallmodel except the composition root and the front ends."""
    allowed = ("agent.smallmodel", "agent.chat", "agent.frontends")
    bad = [f"{n} imports {m}" for n in MODULES if not any(within(n, a) for a in allowed)
           for m, *_ in imports(n) if within(m, "agent.smallmodel")]
    assert not bad, "\n".join(bad)


FACADES = ("agent.models", "sandbox", "agent.smallmodel")  # packages whose public surface is their __init__


def test_front_ends_use_only_the_facades():
    """The front ends (and the composition root) take what they need of the models, the sandbox and
    the small-model strategy from each package's public surface, never from its modules: a module
    can move or split without a front end knowing."""
    bad = [f"{MODULES[n].relative_to(ROOT)}:{line}: imports {m}" for n in MODULES
           if within(n, "agent.frontends") or n == "agent.chat"
           for m, _, line, _ in imports(n) if any(within(m, f) and m != f for f in FACADES)]
    assert not bad, "front ends reaching past a facade:\n" + "\n".join(bad)


def test_modules_are_small():
    big = {str(p.relative_to(ROOT)): n for p in MODULES.values() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


MAX_PARAMETERS = 12
# Today's constructors over MAX_PARAMETERS, with their counts: these may shrink, never grow.
WIDE_CONSTRUCTORS = {
}


def constructor_widths() -> dict[str, int]:
    """Every class's `__init__` in our packages: its named parameters (`self`, `*args` and
    `**kwargs` not counted), by `module.Class`."""
    out = {}
    for name, path in MODULES.items():
        for cls in ast.walk(ast.parse(path.read_text())):
            if isinstance(cls, ast.ClassDef):
                for f in cls.body:
                    if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.name == "__init__":
                        a = f.args
                        out[f"{name}.{cls.name}"] = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) - 1
    return out


def test_no_new_wide_constructors():
    """No constructor over MAX_PARAMETERS parameters but the ones listed in WIDE_CONSTRUCTORS,
    each at exactly its listed count. An explicit allow-list of today's offenders, not a rule they
    pass: it fails when a new wide constructor appears, when an offender grows (group the new
    options into an object instead), and when one shrinks (lower its count here, or drop it from
    the list once it is within MAX_PARAMETERS, so the list only ever tightens)."""
    widths = constructor_widths()
    wide = {k: n for k, n in widths.items() if n > MAX_PARAMETERS}
    new = {k: n for k, n in wide.items() if k not in WIDE_CONSTRUCTORS}
    assert not new, f"constructors over {MAX_PARAMETERS} parameters: {new}"
    changed = {k: f"{n} listed, {widths.get(k)} now" for k, n in WIDE_CONSTRUCTORS.items() if widths.get(k) != n}
    assert not changed, f"WIDE_CONSTRUCTORS is out of date (a count may only go down): {changed}"


def test_tests_mirror_the_packages():
    packages = {p.parent.relative_to(ROOT) for p in MODULES.values() if p.name == "__init__.py"}
    missing = [str(p) for p in packages if not list((ROOT / "tests" / p).glob("test_*.py"))]
    assert not missing, f"packages without tests/<package>/test_*.py: {missing}"
    strays = [str(d.relative_to(ROOT)) for d in (ROOT / "tests").rglob("*") if d.is_dir()
              and d.name not in ("data", "__pycache__") and "data" not in d.relative_to(ROOT).parts
              and d.relative_to(ROOT / "tests") not in packages]
    assert not strays, f"test folders that mirror no package: {strays}"


SAMPLE = """
from typing import TYPE_CHECKING

from agent.core.messages import Message

if TYPE_CHECKING:
    from agent.core.session import Session


def later():
    from agent.core import tree
    import sandbox.limits
"""


def test_the_checker_sees_every_kind_of_import():
    """Top-level, function-level and TYPE_CHECKING imports are all found, and all count for cycles."""
    found = {(i.module, i.where) for i in imports_in(SAMPLE, "agent.core.sample")}
    assert found == {("agent.core.messages", "top"), ("agent.core.session", "typing"),
                     ("agent.core.tree", "function"), ("sandbox.limits", "function")}, found
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_rules_see_the_imports():
    """The checker itself: it finds imports (else every rule above would pass vacuously)."""
    g = graph()
    assert "agent.core.messages" in g["agent.core.tree"]
    assert any(within(m, "sandbox") for m in g["agent.chat"] | set().union(*(g[n] for n in g if within(n, "agent.core"))))


LEAVES = {  # a leaf module, and what importing it must not import (the kernel client, the models, torch)
    "agent.models.toolparse": ("agent.chat", "agent.core.session", "sandbox.base", "jupyter_client", "torch"),
    "agent.core.store": ("agent.chat", "agent.models", "sandbox.base", "jupyter_client", "torch"),
    "agent.core.events": ("agent.chat", "agent.models", "sandbox.base", "jupyter_client", "torch"),
    "tools.text": ("sandbox", "agent"),
}


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_importing_a_leaf_does_not_import_the_world(leaf):
    """`import agent.models.toolparse` once pulled in Chat, every model and the kernel client."""
    import subprocess
    import sys

    probe = (f"import sys, {leaf}; print(' '.join(m for m in {LEAVES[leaf]!r} "
             "if m in sys.modules or any(k.startswith(m + '.') for k in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing {leaf} imports {out.stdout.strip()}"
