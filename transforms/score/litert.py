"""One way to open a TFLite model with LiteRT (``ai_edge_litert``), for every TFLite user here.

LiteRT's C++ runtime logs through TFLite's minimal logger, which reads neither Python's logging
nor TensorFlow's ``TF_CPP_MIN_LOG_LEVEL``: the first tensor allocation of a process prints
``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` to the process's standard error.
:func:`load_interpreter` applies TensorFlow's convention to it: with ``TF_CPP_MIN_LOG_LEVEL`` 1 or
more (the ``mine`` command sets 3), the runtime's ``INFO:`` lines written during that first
allocation are dropped; its warnings and errors, and anything else written meanwhile, still
reach standard error.

``ACTIVEBEAM_LITERT_XNNPACK=off`` runs TFLite's built-in kernels without the XNNPACK delegate
(LiteRT's ``OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES``): a second numeric path on the
same CPU, used by the conversion tests and to tell a delegate's rounding from a model's change.

Pure module (no Beam).
"""
import contextlib
import os
import sys
import tempfile
import threading
from typing import Optional

XNNPACK_ENV = "ACTIVEBEAM_LITERT_XNNPACK"
_RUNTIME_INFO = b"INFO: "
_STDERR_LOCK = threading.Lock()


def _tf_min_log_level() -> int:
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") or 0)
    except ValueError:
        return 0


@contextlib.contextmanager
def _runtime_info_dropped():
    """Standard error (file descriptor 2) held while the block runs, then written back without
    the runtime's ``INFO:`` lines (when ``TF_CPP_MIN_LOG_LEVEL`` >= 1)."""
    if _tf_min_log_level() < 1:
        yield
        return
    with _STDERR_LOCK, tempfile.TemporaryFile() as held:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().splitlines(keepends=True) if not line.startswith(_RUNTIME_INFO)]
            if kept:
                os.write(2, b"".join(kept))


def load_interpreter(model_path: str, num_threads: Optional[int] = None):
    """A LiteRT ``Interpreter`` of the ``.tflite`` file at ``model_path`` (a local path), with
    its tensors allocated.

    Parameters
    ----------
    model_path : str
        Local path of a TFLite flatbuffer.
    num_threads : int, optional
        Interpreter threads (LiteRT's default when ``None``).

    Raises
    ------
    ValueError
        From LiteRT, for a file that is not a TFLite model.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    resolver = (OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
                if os.environ.get(XNNPACK_ENV, "").lower() == "off" else OpResolverType.AUTO)
    interpreter = Interpreter(model_path=model_path, num_threads=num_threads,
                              experimental_op_resolver_type=resolver)
    with _runtime_info_dropped():
        interpreter.allocate_tensors()
    return interpreter
