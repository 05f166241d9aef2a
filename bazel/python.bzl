"""Python toolchain that runs every py_binary and py_test with the project's virtualenv.

The interpreter path must be absolute for `py_runtime`, so it is computed here from the
checkout's own location (`<workspace>/.venv/bin/python3`) instead of being committed.
Set ACTIVEBEAM_PYTHON to use another interpreter.
"""

_BUILD = """
load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

py_runtime(
    name = "venv_py3",
    interpreter_path = "{interpreter}",
    python_version = "PY3",
)

py_runtime_pair(
    name = "venv_runtime_pair",
    py3_runtime = ":venv_py3",
)

toolchain(
    name = "venv_toolchain",
    toolchain = ":venv_runtime_pair",
    toolchain_type = "@bazel_tools//tools/python:toolchain_type",
)
"""

def _venv_python_impl(rctx):
    workspace = rctx.path(Label("//:WORKSPACE")).dirname
    interpreter = rctx.os.environ.get("ACTIVEBEAM_PYTHON", "%s/.venv/bin/python3" % workspace)
    rctx.file("WORKSPACE", "")
    rctx.file("BUILD", _BUILD.format(interpreter = interpreter))

venv_python = repository_rule(
    implementation = _venv_python_impl,
    environ = ["ACTIVEBEAM_PYTHON"],
    local = True,
)
