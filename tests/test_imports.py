"""Imports flow one way: foundation → config → data → model → engine → bench/tools → CLI, with no cycle.

Every ``import`` in the package counts, inside functions too (a lazy import is still a dependency), and importing
``a.b.c`` also imports the packages ``a.b`` and ``a``. No edge is exempt: the registries import nothing, the
package imports its built-in registrants (as timm's does) and the entry points load outside plugins.
"""
import ast
from pathlib import Path

import promptclip

PACKAGE = Path(promptclip.__file__).parent
#: layer of each module (by prefix, longest first); a module may import its own layer and lower ones only
LAYERS = {
    "promptclip.errors": 0, "promptclip.utils": 0, "promptclip.devices": 0, "promptclip.registry": 0,
    "promptclip.templates": 0, "promptclip.plugins": 0,
    "promptclip.config": 1, "promptclip.options": 1,
    "promptclip.data": 2, "promptclip.data.commands": 6, "promptclip.runs": 2, "promptclip.run_files": 2,
    "promptclip.backbone": 3, "promptclip.learners": 3, "promptclip.losses": 3, "promptclip.callbacks": 3,
    "promptclip.methods": 3, "promptclip.model": 3, "promptclip.hooks": 3, "promptclip.weights": 3,
    "promptclip.architecture": 3,
    "promptclip.engine": 4,
    "promptclip.bench": 5, "promptclip.bench.collect": 5, "promptclip.bench.tables": 5, "promptclip.bench.plots": 5,
    "promptclip.bench.report": 5, "promptclip.interpret": 5, "promptclip.demo": 5,
    "promptclip.cli": 6, "promptclip.__main__": 6,
    "promptclip": 6,  # the package's own API (``promptclip.load_run``) sits on top
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules():
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str, path: Path, known) -> set:
    """The package modules ``name`` imports anywhere in its file, with their parent packages."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            parts = target.split(".")
            found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in known)
    found.discard(name)
    return found


def layer(name: str) -> int:
    key = max((k for k in LAYERS if name == k or name.startswith(k + ".")), key=len)
    return LAYERS[key]


def graph():
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_every_module_has_a_layer():
    assert all(any(n == k or n.startswith(k + ".") for k in LAYERS) for n in modules())


def test_no_module_imports_a_higher_layer():
    backwards = sorted(f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
                       for a, targets in graph().items() for b in targets
                       if layer(b) > layer(a) and not a.startswith(b + "."))
    assert backwards == []


def test_there_is_no_import_cycle():
    edges = graph()
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if node.startswith(nxt + "."):  # a submodule "imports" its package while that package is loading
                continue
            if state.get(nxt) == "open":
                cycles.append(" → ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert cycles == []


def test_the_engine_modules_are_not_shadowed_by_their_functions():
    import importlib

    for name in [n for n in modules() if n.startswith("promptclip.") and n != "promptclip.__main__"]:
        parent, _, child = name.rpartition(".")
        attribute = getattr(importlib.import_module(parent), child, None)
        importlib.import_module(name)
        assert attribute is None or type(attribute).__name__ == "module", f"{parent}.{child} is not the module"
