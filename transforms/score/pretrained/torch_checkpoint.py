"""A PyTorch checkpoint (``.pth`` state dict) read into numpy arrays without PyTorch.

PyTorch's legacy serialisation (``torch.save`` with ``_use_new_zipfile_serialization=False``,
the form of many published ``.pth`` files) is five pickles in a row: a magic number, the
protocol version (1001), system info (byte order, type sizes), the object itself, whose tensors
refer by persistent id to storages, and the list of storage keys; then each storage as an int64
element count and its raw little-endian bytes. :func:`load_state_dict` reads them with an
unpickler that only allows ``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` and
the ``torch.*Storage`` types (nothing else in the file can run), and rebuilds each tensor from its
storage, offset, shape and strides::

    weights = load_state_dict("efficientnet-lite0.pth")   # name -> float32 ndarray

References
----------
PyTorch, ``torch/serialization.py`` (``_legacy_save``/``_legacy_load``) and
``torch/_utils.py`` (``_rebuild_tensor_v2``).
"""
import collections
import pickle
import struct
from typing import Dict

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
_STORAGES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
             "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
             "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}


class _Tensor(collections.namedtuple("_Tensor", "storage offset shape strides")):
    """A tensor before its storage's bytes are read: ``storage`` is the persistent id."""


def _rebuild_tensor_v2(storage, offset, shape, strides, *_):
    return _Tensor(storage, offset, tuple(shape), tuple(strides))


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGES:
            return name
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a checkpoint")

    def persistent_load(self, pid):
        # ('storage', storage type, key, location, element count, view metadata)
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        return pid


def load_state_dict(path: str) -> Dict[str, np.ndarray]:
    """The tensors of a legacy-format PyTorch checkpoint, as numpy arrays.

    Parameters
    ----------
    path : str
        A ``.pth`` file written by ``torch.save`` in the legacy (non-zip) format holding a dict
        (or ``OrderedDict``) of tensors.

    Returns
    -------
    dict of str to ndarray (C-contiguous copies, dtype of each storage, e.g. float32).

    Raises
    ------
    ValueError
        If the file is a zip-format checkpoint, not a PyTorch checkpoint, or is truncated.
    pickle.UnpicklingError
        If it asks for any Python object other than dicts, tensors and storages.
    """
    with open(path, "rb") as f:
        if f.read(4) == b"PK\x03\x04":
            raise ValueError(f"{path}: a zip-format checkpoint; re-save it with "
                             "_use_new_zipfile_serialization=False")
        f.seek(0)
        if _Unpickler(f).load() != LEGACY_MAGIC:
            raise ValueError(f"{path}: not a PyTorch checkpoint (no magic number)")
        if _Unpickler(f).load() != LEGACY_PROTOCOL:
            raise ValueError(f"{path}: unknown PyTorch checkpoint protocol")
        info = _Unpickler(f).load()
        if not info.get("little_endian", True):
            raise ValueError(f"{path}: big-endian checkpoints are not supported")
        state = _Unpickler(f).load()
        keys = _Unpickler(f).load()
        storages = {}
        for key in keys:
            kind = next(pid[1] for pid in (t.storage for t in state.values()) if pid[2] == key)
            dtype = np.dtype(_STORAGES[kind]).newbyteorder("<")
            header = f.read(8)
            if len(header) < 8:
                raise ValueError(f"{path}: truncated before storage {key}")
            (count,) = struct.unpack("<q", header)
            data = f.read(count * dtype.itemsize)
            if len(data) < count * dtype.itemsize:
                raise ValueError(f"{path}: storage {key} is truncated")
            storages[key] = np.frombuffer(data, dtype=dtype)
    out = {}
    for name, t in state.items():
        flat = storages[t.storage[2]]
        strides = tuple(s * flat.itemsize for s in t.strides)
        view = np.lib.stride_tricks.as_strided(flat[t.offset:], shape=t.shape, strides=strides)
        out[name] = np.ascontiguousarray(view)
    return out
