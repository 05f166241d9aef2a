"""``checked_py_library``: a ``py_library`` whose imports must stay within its declared deps.

It makes ``<name>`` (the library) and ``<name>_imports_test``, a ``py_test`` that reads every
file of ``srcs`` (``//bazel:check_imports.py``) and fails on an import of a project package
that is neither the library's own package nor one of its ``deps``. Bazel refuses cycles of
declared dependencies, so a cycle of imports between packages fails the build.
"""

def _dotted(label):
    """``//beam_pipelines/cli`` or ``//beam_pipelines/cli:cli`` -> ``beam_pipelines.cli``."""
    return label.lstrip("/").split(":")[0].replace("/", ".")

def checked_py_library(name, srcs, deps = [], data = [], visibility = None):
    native.py_library(
        name = name,
        srcs = srcs,
        deps = deps,
        data = data,
        visibility = visibility,
    )
    package = native.package_name().replace("/", ".")
    native.py_test(
        name = name + "_imports_test",
        size = "small",
        srcs = ["//bazel:check_imports.py"],
        main = "//bazel:check_imports.py",
        args = [package] + [_dotted(d) for d in deps if d.startswith("//") and not d.endswith(":package")] + ["--"] +
               ["$(location %s)" % src for src in srcs],
        data = srcs,
    )
