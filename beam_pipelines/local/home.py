"""Where activebeam keeps its local data: sample media, service binaries, emulators.

``ACTIVEBEAM_HOME`` if set; else ``<checkout>/.activebeam`` when running from a source
checkout (or Bazel runfiles pointing into one); else ``~/.cache/activebeam``.
"""
import os

_CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))  # beam_pipelines/local/


def activebeam_home() -> str:
    env = os.environ.get("ACTIVEBEAM_HOME")
    if env:
        return env
    if os.path.exists(os.path.join(_CHECKOUT, "WORKSPACE")):
        return os.path.join(_CHECKOUT, ".activebeam")
    return os.path.join(os.path.expanduser("~"), ".cache", "activebeam")


def media_dir() -> str:
    return os.path.join(activebeam_home(), "media")
