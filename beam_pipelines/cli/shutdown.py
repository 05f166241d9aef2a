"""How a job ends: clean stops on signals, no temporary folders left, one line per error.

* :func:`cancel_on_signals`: SIGINT (Ctrl-C), SIGTERM (``kill``, container stops) and SIGHUP (the
  terminal closed) raise :class:`Cancelled` (a ``KeyboardInterrupt``) in the main thread, once:
  the job unwinds through its context managers, so its run record says ``cancelled``, the
  embedded ``mongod`` is shut down cleanly and temporary folders are removed. Signals arriving
  while it unwinds are reported, not obeyed (the clean-up is bounded: 30 s for ``mongod`` at most).
* :func:`removes_beam_temp`: the ``beam-temp-*`` folders that Beam's file sinks create in the
  output directory during a run are removed when the run ends, however it ends.
* :func:`exit_codes`: a job's errors as one line ``PROG: error: ...`` on stderr and an exit code,
  as argparse does for usage errors:

  ==== =====================================================================================
  code meaning
  ==== =====================================================================================
  0    the run succeeded
  1    the run failed (a traceback), or finished without indexing every scored frame
  2    an option value cannot work (:class:`~beam_pipelines.cli.preflight.OptionError`)
  3    a store cannot be used: MongoDB or BigQuery unreachable or refusing, a missing dataset,
       the embedded ``mongod`` not starting (:class:`~beam_pipelines.cli.preflight.StoreUnavailable`)
  130  cancelled by SIGINT (128 + signal number: 143 for SIGTERM, 129 for SIGHUP)
  ==== =====================================================================================
"""
import contextlib
import logging
import os
import shutil
import signal
import sys
import threading
from typing import Iterator, List, Optional

from apache_beam.io.filesystems import FileSystems

from beam_pipelines.local import worker as local_worker
from beam_pipelines.local.mongod import MongoDNotFound, MongoDStartError
from beam_pipelines.cli.preflight import OptionError, StoreUnavailable, one_line
from transforms.common.redact import redact_text

_LOG = logging.getLogger(__name__)

EXIT_FAILED = 1
EXIT_OPTIONS = 2
EXIT_STORE = 3
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
BEAM_TEMP_PREFIX = "beam-temp-"


class RunFailed(RuntimeError):
    """The run ended but failed one of its own checks (e.g. too many dead letters): exit code 1,
    one line ``PROG: failed: ...``; its record says ``failed`` with the counts."""


class Cancelled(KeyboardInterrupt):
    """The job was asked to stop by a signal (``signum``)."""

    def __init__(self, signum: int):
        super().__init__(f"cancelled by {signal.Signals(signum).name}")
        self.signum = signum


_received: Optional[int] = None


def _on_signal(signum, frame):  # pylint: disable=unused-argument
    global _received
    if _received is not None:
        sys.stderr.write(f"{signal.Signals(signum).name} received: already stopping (cleaning up)\n")
        return
    _received = signum
    _stop_beam_workers(signum)
    raise Cancelled(signum)


#: What identifies the SDK worker processes of Beam's local runners in their command line
#: (Beam's worker module, or :mod:`beam_pipelines.local.worker` which runs it).
_BEAM_WORKERS = tuple(module.encode() for module in (local_worker.BEAM_WORKER_MODULE, local_worker.WORKER_MODULE))


def beam_worker_pids() -> List[int]:
    """The SDK worker processes (and the shells that start them) below this process, as Beam's
    local runners start them (Linux ``/proc``; empty elsewhere)."""
    children = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                parent = int(f.read().rsplit(b")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read()
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append((int(entry), command))
    found, pending = [], [os.getpid()]
    while pending:
        for pid, command in children.get(pending.pop(), ()):
            pending.append(pid)
            if any(worker in command for worker in _BEAM_WORKERS):
                found.append(pid)
    return found


def _stop_beam_workers(signum: int):
    """Sends ``signum`` to the SDK worker processes this job's local runner started
    (:func:`beam_worker_pids`).

    A terminal's Ctrl-C reaches them anyway (same process group); a ``kill`` of the job does not,
    and the runner, unwinding, would wait for them forever (``--direct_running_mode=
    multi_processing``). Nothing else is touched: the embedded ``mongod`` stops after the run
    record is written."""
    for pid in beam_worker_pids():
        try:
            os.kill(pid, signum)
        except OSError:
            pass


class _QuietCancellation(logging.Filter):
    """Drops the log records of a cancellation (Beam logs the exception a DoFn raised, traceback
    and all, before re-raising it): a cancelled run says so in one line."""

    def filter(self, record):
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, KeyboardInterrupt) and "Cancelled: cancelled by" not in record.getMessage()


@contextlib.contextmanager
def cancel_on_signals(signals=STOP_SIGNALS) -> Iterator[None]:
    """Within the block, the first of ``signals`` raises :class:`Cancelled` in the main thread;
    the previous handlers come back after it. Outside the main thread, nothing changes."""
    global _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received = None
    previous = {s: signal.signal(s, _on_signal) for s in signals}
    quiet, handlers = _QuietCancellation(), list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for handler in handlers:
            handler.removeFilter(quiet)
        _received = None


def cancelled_instead(error: BaseException) -> Optional[Cancelled]:
    """The :class:`Cancelled` to raise instead of ``error`` when a stop signal came first: a
    Ctrl-C in a terminal also reaches the runner's worker processes, whose deaths may surface
    as pipeline errors before the job's own ``KeyboardInterrupt``."""
    if _received is not None and not isinstance(error, KeyboardInterrupt):
        return Cancelled(_received)
    return None


def _beam_temp_dirs(output_dir: str) -> set:
    if FileSystems.get_scheme(output_dir) is None:
        try:
            return {os.path.join(output_dir, n) for n in os.listdir(output_dir)
                    if n.startswith(BEAM_TEMP_PREFIX)}
        except OSError:
            return set()
    try:
        matched = FileSystems.match([FileSystems.join(output_dir, BEAM_TEMP_PREFIX + "*/**")])[0]
        return {m.path for m in matched.metadata_list}
    except Exception:  # noqa: BLE001 - best effort on remote filesystems
        return set()


@contextlib.contextmanager
def removes_beam_temp(output_dir: str) -> Iterator[None]:
    """Removes, when the block ends however it ends, the ``beam-temp-*`` folders (local) or
    objects (``gs://``) that appeared in ``output_dir`` during it (those of other runs stay)."""
    before = _beam_temp_dirs(output_dir)
    try:
        yield
    finally:
        left = sorted(_beam_temp_dirs(output_dir) - before)
        for path in left:
            try:
                if FileSystems.get_scheme(path) is None:
                    shutil.rmtree(path)
                else:
                    FileSystems.delete([path])
            except Exception as e:  # noqa: BLE001 - a leftover is not worth failing the run for
                _LOG.warning("could not remove the temporary folder %s: %s", path, e)
        if left:
            _LOG.info("removed %d temporary folder(s) of Beam's file sinks from %s", len(left), output_dir)


@contextlib.contextmanager
def exit_codes(prog: str, hard_exit_on_cancel: bool = False) -> Iterator[None]:
    """Turns the job's expected errors into one line on stderr and an exit code (see the module
    docstring); any other exception goes on (a traceback, exit code 1).

    With ``hard_exit_on_cancel`` (a command's own process), a cancelled run ends the process at
    once once its clean-up is done (``os._exit``): a local runner's worker threads may still be
    inside TensorFlow, which aborts if the interpreter finalises under it."""
    try:
        yield
    except OptionError as e:
        _exit(prog, f"error: {one_line(redact_text(str(e)))}", EXIT_OPTIONS)
    except (StoreUnavailable, MongoDStartError, MongoDNotFound) as e:
        _exit(prog, f"error: {one_line(redact_text(str(e)), 600)}", EXIT_STORE)
    except RunFailed as e:
        _exit(prog, f"failed: {one_line(redact_text(str(e)), 600)}", EXIT_FAILED)
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, Cancelled) else signal.SIGINT
        _exit(prog, f"cancelled by {signal.Signals(signum).name}: the run is recorded as "
                    f"cancelled; its outputs are incomplete", 128 + signum, hard=hard_exit_on_cancel)


def _exit(prog: str, message: str, code: int, hard: bool = False):
    sys.stdout.flush()
    sys.stderr.write(f"{prog}: {message}\n")
    sys.stderr.flush()
    if hard:
        logging.shutdown()
        os._exit(code)  # pylint: disable=protected-access
    raise SystemExit(code)
