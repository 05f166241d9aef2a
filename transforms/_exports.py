"""Lazy public names for the stage packages (PEP 562), so that importing a pure module such as
``transforms.score.uncertainty`` never imports Beam through its package's ``__init__``."""
import importlib
from typing import Callable, Dict, Iterable, Tuple


def lazy_exports(package: str, exports: Dict[str, Iterable[str]]) -> Tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package`` that import ``{module: names}`` on first use.

    ``module`` is relative to ``package`` (``"ptransforms"`` means ``package + ".ptransforms"``).
    """
    where = {name: f"{package}.{module}" for module, names in exports.items() for name in names}

    def __getattr__(name):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(where[name]), name)

    def __dir__():
        return sorted(where)

    return __getattr__, __dir__
