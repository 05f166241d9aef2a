"""Processes of the local services (embedded ``mongod``, Label Studio, the emulators): one
helper for their start, health check and stop, and for telling a live process from a reused PID.

Linux only where it reads ``/proc`` (elsewhere those functions answer "not running").
"""
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Optional

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port free on 127.0.0.1 at the time of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parent_death_signal():
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


def process_start(pid: int) -> Optional[str]:
    """The start time of process ``pid`` (``/proc/PID/stat`` field 22), or None if it is not
    running (a zombie is not; nor is anything where there is no ``/proc``): with the PID, it
    tells a process from a later one that reused its PID."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def command_line(pid: int) -> list:
    """The arguments of process ``pid`` (empty if it is not running or has none)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [os.fsdecode(a) for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def parent_pid(pid: int) -> Optional[int]:
    """The parent of process ``pid``, or None if it is not running."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def terminate(pid: int, timeout_s: float = 30.0):
    """SIGTERM (MongoDB's clean shutdown), then SIGKILL after ``timeout_s``; waits for the end."""
    start = process_start(pid)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while process_start(pid) == start and start is not None:
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
