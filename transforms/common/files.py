"""Local-versus-remote file helpers shared by the stages (any Beam filesystem: local, ``gs://``).

Local files are opened only when they are regular files (:func:`open_regular_file`): a FIFO
would block ``open`` until some writer appears, a device would stream forever. Local globs are
matched by :func:`match_local` with Beam's glob syntax, reporting what Beam's matcher drops
silently (dangling symbolic links, directories, listing errors).
"""
import contextlib
import errno
import os
import re
import shutil
import stat
import tempfile
from typing import BinaryIO, Iterator, NamedTuple

from apache_beam.io.filesystem import CompressionTypes, FileSystem
from apache_beam.io.filesystems import FileSystems

_COPY_CHUNK_BYTES = 16 << 20

#: Kinds of :class:`LocalMatch` entries.
FILE = "file"  # anything but a directory: regular files, and whatever opening will refuse
DIRECTORY = "directory"
DIRECTORY_LINK = "directory_link"  # a symbolic link to a directory (never followed)
UNLISTABLE = "unlistable"  # a directory that could not be listed (its error in ``error``)


class NotARegularFile(OSError):
    """A local path that exists but is not a regular file (FIFO, socket, device, directory)."""

    def __init__(self, path: str, kind: str):
        super().__init__(errno.EINVAL, f"not a regular file but a {kind}: only regular files are read", path)
        self.kind = kind

    def __str__(self):
        return self.strerror


class DanglingSymlink(FileNotFoundError):
    """A symbolic link whose target does not exist."""

    def __init__(self, path: str, target: str):
        super().__init__(errno.ENOENT, f"a dangling symbolic link: its target {target!r} does not exist", path)
        self.target = target

    def __str__(self):
        return self.strerror


def is_valid_utf8(path: str) -> bool:
    """Whether ``path`` is valid UTF-8 text: ``False`` for a name whose bytes are not UTF-8 (the
    OS decodes them with surrogate escapes), which no stored record can carry."""
    try:
        path.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def printable_path(path: str) -> str:
    """``path`` as valid UTF-8 text: the bytes of a name that is not UTF-8 (decoded by the OS with
    surrogate escapes) shown as ``\\xNN``; a valid name is returned unchanged."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def file_kind(mode: int) -> str:
    """What an ``st_mode`` is, in words (``regular file``, ``FIFO (named pipe)``, ``socket``...)."""
    for test, kind in ((stat.S_ISREG, "regular file"), (stat.S_ISDIR, "directory"),
                       (stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return kind
    return "special file"


def _open_regular_fd(path: str) -> int:
    """A read-only descriptor of ``path`` if it is a regular file (see :func:`open_regular_file`)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            raise DanglingSymlink(path, os.readlink(path)) from None
        raise
    if not stat.S_ISREG(mode):
        raise NotARegularFile(path, file_kind(mode))
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFile(path, file_kind(mode))
        os.set_blocking(fd, True)
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_regular_file(path: str) -> BinaryIO:
    """Opens a local file for binary reading if, and only if, it is a regular file.

    The type is checked before opening (opening a device can have effects) and again on the
    opened descriptor (the path may have been replaced in between); the open itself does not
    block (``O_NONBLOCK``: a FIFO without a writer would block a plain ``open`` forever).

    Raises
    ------
    NotARegularFile
        For FIFOs, sockets, devices and directories (also behind symbolic links).
    DanglingSymlink
        For a symbolic link whose target does not exist.
    OSError
        As ``open`` would (missing file, permissions, symbolic link loop...).
    """
    return os.fdopen(_open_regular_fd(path), "rb")


def read_head(uri: str, limit: int) -> bytes:
    """The first ``limit`` bytes of ``uri`` (all of it when it is shorter), read as
    :func:`open_binary` reads: a local path only if it is a regular file, any Beam filesystem
    otherwise. A local file is read with ``os.read`` on the checked descriptor, without a
    buffered file object (about a third of the cost of opening a 1 KB file).

    Raises
    ------
    NotARegularFile, DanglingSymlink, OSError
        As :func:`open_regular_file` for local paths; a remote filesystem's own errors.
    """
    if FileSystems.get_scheme(uri) is not None:
        with open_binary(uri) as f:
            return f.read(limit)
    fd = _open_regular_fd(uri)
    try:
        chunks = []
        while limit > 0:
            chunk = os.read(fd, limit)
            if not chunk:
                break
            chunks.append(chunk)
            limit -= len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    finally:
        os.close(fd)


class LocalMatch(NamedTuple):
    """One entry matched by a local glob: its path, its kind (:data:`FILE`, :data:`DIRECTORY`,
    :data:`DIRECTORY_LINK`, :data:`UNLISTABLE`) and, for the last, the listing error."""
    path: str
    kind: str
    error: str = ""


def match_local(pattern: str) -> Iterator[LocalMatch]:
    """Matches a local glob with Beam's syntax (``*`` within a path segment, ``**`` across
    segments, ``?``, ``[...]``), as ``FileSystems.match`` does, but reports instead of dropping:

    * every non-directory entry, whatever it is (dangling symbolic links, FIFOs, sockets and
      devices included: :func:`open_regular_file` says what they are when they are read);
    * directories the pattern matches as a whole, when it has no ``**`` (they are not
      descended into), and symbolic links to directories (never followed);
    * directories that could not be listed (permissions): the glob's base, and with ``**``
      any directory below it.

    A pattern without glob characters yields itself if anything exists there (a dangling
    symbolic link included).
    """
    if pattern.endswith("/"):
        pattern += "*"
    prefix = re.match(r"^[^[*?]*", pattern).group(0)
    if prefix == pattern:
        if os.path.lexists(pattern):
            yield LocalMatch(pattern, _kind(pattern))
        return
    root = os.path.dirname(prefix)  # "" for a pattern relative to the working directory
    if not os.path.isdir(root or "."):
        return
    matches = re.compile(FileSystem.translate_pattern(pattern)).match
    recursive = "**" in pattern
    errors = []

    def join(dirpath, name):
        path = os.path.join(dirpath, name)
        return path[2:] if not root and path.startswith("./") else path

    for dirpath, dirnames, filenames in os.walk(root or ".", onerror=errors.append):
        for name in dirnames:
            path = join(dirpath, name)
            if not matches(path):
                continue
            if os.path.islink(path):
                yield LocalMatch(path, DIRECTORY_LINK)
            elif not recursive:
                yield LocalMatch(path, DIRECTORY)
        for name in filenames:
            path = join(dirpath, name)
            if matches(path):
                yield LocalMatch(path, FILE)
    for error in errors:  # below the base only ``**`` can match, and only its errors matter
        if recursive or error.filename == (root or "."):
            path = error.filename[2:] if not root and error.filename.startswith("./") else error.filename
            yield LocalMatch(path, UNLISTABLE, error.strerror or str(error))


def _kind(path: str) -> str:
    if os.path.isdir(path):
        return DIRECTORY_LINK if os.path.islink(path) else DIRECTORY
    return FILE


def is_local(path: str) -> bool:
    """Whether ``path`` is on the local filesystem (no scheme, or ``file``)."""
    return FileSystems.get_scheme(path) in (None, "file")


def open_binary(uri: str) -> BinaryIO:
    """A binary file object for reading ``uri`` (local path or any Beam filesystem).

    Plain paths are opened directly (Beam's local ``FileSystems.open`` allocates a 16 MB read
    buffer per file, which costs more than decoding a small image), and only if they are regular
    files (:func:`open_regular_file`).
    """
    if FileSystems.get_scheme(uri) is None:
        return open_regular_file(uri)
    return FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED)


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[str]:
    """Yields a local path for ``uri``: itself if local (without a ``file://`` scheme), else a
    temporary copy removed on exit.

    For libraries that read local files only (OpenCV's video capture, Keras model loading).
    The copy keeps the file's base name, so extension-sensitive readers still work.
    """
    if is_local(uri):
        yield uri[len("file://"):] if uri.startswith("file://") else uri
        return
    tmpdir = tempfile.mkdtemp(prefix="activebeam-")
    try:
        local = os.path.join(tmpdir, os.path.basename(uri.rstrip("/")) or "file")
        with open_binary(uri) as src, open(local, "wb") as dst:
            shutil.copyfileobj(src, dst, _COPY_CHUNK_BYTES)
        yield local
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
