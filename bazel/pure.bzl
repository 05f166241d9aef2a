"""``pure_py_library``: a ``py_library`` of modules that must not import Apache Beam.

It makes ``<name>`` (the library) and ``<name>_test``, a ``py_test`` that imports every module of
``srcs`` with Beam made unimportable (``//bazel:check_pure.py``): a pure module that starts
importing Beam, directly or through a dependency, fails the build's tests.
"""

def pure_py_library(name, srcs, deps = [], data = [], visibility = None):
    native.py_library(
        name = name,
        srcs = srcs,
        deps = deps,
        data = data,
        visibility = visibility,
    )
    package = native.package_name().replace("/", ".")
    modules = [package + "." + src[:-3] for src in srcs if src != "__init__.py"]
    native.py_test(
        name = name + "_test",
        size = "small",
        srcs = ["//bazel:check_pure.py"],
        main = "//bazel:check_pure.py",
        args = modules,
        deps = [":" + name],
    )
