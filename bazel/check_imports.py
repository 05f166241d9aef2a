"""Checks that a package's modules import only what its Bazel target declares.

Usage (what ``checked_py_library``'s test runs)::

    check_imports.py PACKAGE ALLOWED [ALLOWED ...] -- FILE [FILE ...]

Every import in each FILE (module level and inside functions: a function-local import is still
an arrow in the import graph) of a top-level package among ``KNOWN`` must name ``PACKAGE``
itself or one of the ``ALLOWED`` packages (dotted names, from the target's ``deps``). As Bazel
refuses a cycle of declared dependencies, a cycle of imports between packages then fails the
build. Exits non-zero naming each file, line and import that is not declared.
"""
import ast
import sys

KNOWN = ("beam_pipelines", "transforms", "schemas", "benchmarks", "models", "tests")


def imported_names(source: str):
    """``(line, dotted name)`` of every import of ``source``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
            for alias in node.names:  # `from beam_pipelines import mine` imports beam_pipelines.mine
                yield node.lineno, f"{node.module}.{alias.name}"


def undeclared(path: str, package: str, allowed) -> list:
    with open(path, encoding="utf-8") as f:
        source = f.read()
    problems = []
    for line, name in imported_names(source):
        if name.split(".")[0] not in KNOWN or name == name.split(".")[0]:
            continue
        if any(name == p or name.startswith(p + ".") for p in (package,) + tuple(allowed)):
            continue
        if any(p.startswith(name + ".") for p in (package,) + tuple(allowed)):
            continue  # `from beam_pipelines import x` where x is allowed: checked as beam_pipelines.x
        problems.append(f"{path}:{line}: imports {name}, not declared in the deps of {package}")
    return problems


def main(argv) -> int:
    split = argv.index("--")
    package, allowed, files = argv[0], argv[1:split], argv[split + 1:]
    problems = [p for path in files for p in undeclared(path, package, allowed)]
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{len(files)} files of {package}: {len(problems)} undeclared imports")
    return 1 if problems or not files else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
