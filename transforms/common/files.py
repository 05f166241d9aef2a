"""Local-versus-remote file helpers shared by the stages (any Beam filesystem: local, ``gs://``)."""
import contextlib
import os
import shutil
import tempfile
from typing import BinaryIO, Iterator

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

_COPY_CHUNK_BYTES = 16 << 20


def is_local(path: str) -> bool:
    """Whether ``path`` is on the local filesystem (no scheme, or ``file``)."""
    return FileSystems.get_scheme(path) in (None, "file")


def open_binary(uri: str) -> BinaryIO:
    """A binary file object for reading ``uri`` (local path or any Beam filesystem).

    Plain paths use ``open``: Beam's local ``FileSystems.open`` allocates a 16 MB read buffer per
    file, which costs more than decoding a small image.
    """
    if FileSystems.get_scheme(uri) is None:
        return open(uri, "rb")
    return FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED)


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[str]:
    """Yields a local path for ``uri``: itself if local, else a temporary copy removed on exit.

    For libraries that read local files only (OpenCV's video capture, Keras model loading).
    The copy keeps the file's base name, so extension-sensitive readers still work.
    """
    if is_local(uri):
        yield uri
        return
    tmpdir = tempfile.mkdtemp(prefix="activebeam-")
    try:
        local = os.path.join(tmpdir, os.path.basename(uri.rstrip("/")) or "file")
        with open_binary(uri) as src, open(local, "wb") as dst:
            shutil.copyfileobj(src, dst, _COPY_CHUNK_BYTES)
        yield local
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
