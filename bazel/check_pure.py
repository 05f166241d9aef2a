"""Imports modules with Apache Beam made unimportable: a pure module must not need it.

Usage (what ``pure_py_library``'s test runs): ``check_pure.py transforms.score.uncertainty ...``.
Exits non-zero, naming the module and the import chain, if any of them imports ``apache_beam``.
"""
import importlib
import importlib.abc
import sys
import traceback

FORBIDDEN = "apache_beam"


class _NoBeam(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == FORBIDDEN or fullname.startswith(FORBIDDEN + "."):
            raise ImportError(f"{fullname} imported by a pure module")
        return None


def main(modules):
    for name in list(sys.modules):
        if name == FORBIDDEN or name.startswith(FORBIDDEN + "."):
            del sys.modules[name]
    sys.meta_path.insert(0, _NoBeam())
    failures = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as e:
            if FORBIDDEN not in str(e):
                raise
            failures.append(f"{module}: {e}\n{traceback.format_exc()}")
    for failure in failures:
        print(failure, file=sys.stderr)
    if not modules:
        print("no module to check", file=sys.stderr)
        return 2
    print(f"{len(modules) - len(failures)}/{len(modules)} modules import without Beam")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
