"""The import graph of the installed packages: no cycle between modules, no upward arrow between
layers, no private name imported from another module.

Bazel refuses a cycle of declared dependencies between targets (``bazel/imports.bzl``); this test
also sees the modules inside one target and the function-local imports, which are arrows of the
graph all the same. Layers, bottom to top: ``schemas`` < ``transforms`` < ``beam_pipelines``.
"""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("schemas", "transforms", "beam_pipelines")  # bottom to top


def _modules():
    found = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    found[dotted[:-len(".__init__")] if dotted.endswith(".__init__") else dotted] = path
    return found


def _imports(module: str, path: str, modules):
    """``(imported module, imported name or None)`` of every project import of ``module``."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES:
                    yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package
                for _ in range(node.level - 1):
                    parent = parent.rpartition(".")[0]
                base = f"{parent}.{base}" if base else parent
            if base.split(".")[0] not in PACKAGES:
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield (submodule, None) if submodule in modules else (base, alias.name)


def _graph():
    modules = _modules()
    edges, private = {}, []
    for module, path in modules.items():
        edges[module] = set()
        for target, name in _imports(module, path, modules):
            if target in modules and target != module:
                edges[module].add(target)
            if name and name.startswith("_") and not name.startswith("__") and target != module:
                private.append(f"{module} imports {target}.{name}")
    return edges, private


def _cycles(edges):
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    return cycles


def test_no_import_cycle_between_modules():
    edges, _ = _graph()
    assert len(edges) > 100  # the walk found the packages
    assert _cycles(edges) == []


def test_the_cycle_check_sees_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_upward_import_between_layers():
    edges, _ = _graph()
    rank = {package: i for i, package in enumerate(PACKAGES)}
    upward = [f"{a} imports {b}" for a, targets in edges.items() for b in targets
              if rank[b.split(".")[0]] > rank[a.split(".")[0]]]
    assert upward == []


def test_no_private_name_crosses_a_module_boundary():
    _, private = _graph()
    assert private == []
