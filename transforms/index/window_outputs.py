"""Result files and candidate indexes of a streaming selection, one window pane at a time.

``WriteWindowPanes`` takes the :class:`~schemas.records.WindowPane`\\ s of
:class:`transforms.select.windows.SelectPerWindow` and, for each pane, in this order:

1. rewrites ``candidates/<start>_<end>.jsonl`` (rank order) and ``dead_letters/<start>_<end>.jsonl``
   atomically (a local file is written next to its final name, then renamed over it; a
   ``gs://`` object appears whole when its upload ends), names in UTC ISO 8601 basic format
   (``20250131T120000Z_20250131T120100Z.jsonl``: no colons, so they copy anywhere);
2. upserts the window's candidates into MongoDB ``candidates`` and deletes the ones an earlier
   pane of the window selected and this one no longer does; appends them to the BigQuery
   candidates table (a window's current selection there: its rows with the latest
   ``indexed_at``);
3. appends one line to ``windows.jsonl``: ``window_start``, ``window_end``, ``pane``
   (``on_time``/``late``), ``files``, ``frames``, ``dead_letters``, ``candidates``, plus
   ``pane_index``, ``selection_id``, ``digest``, ``run_id``, ``written_at``.

A pane whose content is what ``windows.jsonl`` already records for its window (a window rebuilt
after a restart, unchanged) writes nothing. Panes go through one key so that a single writer
appends to ``windows.jsonl`` (on Dataflow too, where a key's work is never run twice at once).

Metrics (namespace ``activebeam.outputs``): ``window_panes_written``, ``window_panes_unchanged``,
``dead_letters_written``, ``candidates_indexed``, ``candidates_not_indexed``.
"""
import datetime
import hashlib
import json
import logging
import os
import tempfile
from typing import Dict, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, window

from schemas import candidates as candidates_schema
from schemas.records import WindowPane
from transforms.common.files import is_local
from transforms.common.outputs import METRICS_NAMESPACE
from transforms.common.redact import redact_text
from transforms.index.candidate_stores import CandidateStores

_LOG = logging.getLogger(__name__)
CANDIDATES_DIR = "candidates"
DEAD_LETTERS_DIR = "dead_letters"
WINDOWS_FILE = "windows.jsonl"


def basic_iso(seconds: float) -> str:
    """``20250131T120000Z`` (UTC ISO 8601 basic format; milliseconds only when not whole)."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    text = moment.strftime("%Y%m%dT%H%M%S")
    if moment.microsecond:
        text += f".{moment.microsecond // 1000:03d}"
    return text + "Z"


def _extended_iso(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    text = moment.isoformat(timespec="milliseconds" if moment.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def window_file_name(start: float, end: float) -> str:
    """``<start>_<end>.jsonl`` in UTC ISO 8601 basic format (milliseconds only when not whole)."""
    return f"{basic_iso(start)}_{basic_iso(end)}.jsonl"


def _json_line(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False) + "\n"


def _file_mode() -> int:
    """Permissions of a new file under the process's umask (``mkstemp`` would give 0600)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomically(path: str, text: str):
    """Writes ``text`` to ``path`` so that readers see the old file or the new one, never a part."""
    data = text.encode("utf-8")
    if not is_local(path):
        with FileSystems.create(path, mime_type="application/json") as f:
            f.write(data)
        return
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _read_text(path: str) -> Optional[str]:
    try:
        if is_local(path):
            with open(path, encoding="utf-8") as f:
                return f.read()
        if not FileSystems.exists(path):
            return None
        with FileSystems.open(path) as f:
            return f.read().decode("utf-8")
    except FileNotFoundError:
        return None


def read_windows_log(output_dir: str):
    """The lines of ``windows.jsonl`` under ``output_dir`` (a torn last line is skipped)."""
    text = _read_text(FileSystems.join(output_dir, WINDOWS_FILE)) or ""
    lines = []
    for line in text.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines


def pane_digest(candidates_text: str, dead_letters_text: str, files: int, frames: int) -> str:
    """First 16 hex digits of the sha256 of a pane's files and counts: equal for equal content."""
    text = f"{candidates_text}\0{dead_letters_text}\0{files}\0{frames}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class _WritePanesFn(beam.DoFn):
    """The single writer of a streaming job's window files, ``windows.jsonl`` and candidate indexes."""

    def __init__(self, output_dir: str, mongo_uri: Optional[str], database: str,
                 bigquery_table: Optional[str], project: Optional[str], run_id: str):
        self._output_dir = output_dir
        self._stores = CandidateStores(mongo_uri, database, bigquery_table, project)
        self._run_id = run_id
        self._last: Dict[tuple, dict] = {}
        self._written = Metrics.counter(METRICS_NAMESPACE, "window_panes_written")
        self._unchanged = Metrics.counter(METRICS_NAMESPACE, "window_panes_unchanged")
        self._dead = Metrics.counter(METRICS_NAMESPACE, "dead_letters_written")
        self._indexed = Metrics.counter(METRICS_NAMESPACE, "candidates_indexed")
        self._not_indexed = Metrics.counter(METRICS_NAMESPACE, "candidates_not_indexed")

    def setup(self):
        for line in read_windows_log(self._output_dir):
            self._last[(line.get("window_start_s"), line.get("window_end_s"))] = line
        self._stores.open()

    def teardown(self):
        self._stores.close()

    def _path(self, *parts) -> str:
        return FileSystems.join(self._output_dir, *parts)

    def process(self, element):
        _, panes = element
        for pane in sorted(panes, key=lambda p: (p.window_start, p.window_end, p.pane_index)):
            yield from self._write(pane)

    def _write(self, pane: WindowPane):
        window_key = (pane.window_start, pane.window_end)
        candidates_text = "".join(_json_line(c.to_json_dict()) for c in pane.candidates)
        dead_text = "".join(_json_line(d.to_json_dict()) for d in pane.dead_letters)
        digest = pane_digest(candidates_text, dead_text, pane.files, pane.frames)
        previous = self._last.get(window_key)
        if previous is not None and previous.get("digest") == digest:
            self._unchanged.inc()
            return
        name = window_file_name(pane.window_start, pane.window_end)
        write_atomically(self._path(CANDIDATES_DIR, name), candidates_text)
        write_atomically(self._path(DEAD_LETTERS_DIR, name), dead_text)
        self._dead.inc(len(pane.dead_letters) - (previous or {}).get("dead_letters", 0))
        selection_id = pane.candidates[0].selection_id if pane.candidates else None
        problems = self._index(pane, selection_id, (previous or {}).get("selection_id"), digest)
        line = {
            "window_start": _extended_iso(pane.window_start), "window_end": _extended_iso(pane.window_end),
            "pane": pane.pane, "files": pane.files, "frames": pane.frames,
            "dead_letters": len(pane.dead_letters), "candidates": len(pane.candidates),
            "pane_index": pane.pane_index, "selection_id": selection_id, "digest": digest,
            "run_id": self._run_id,
            "written_at": _extended_iso(datetime.datetime.now(datetime.timezone.utc).timestamp()),
            "window_start_s": pane.window_start, "window_end_s": pane.window_end,
        }
        if problems:
            line["candidates_not_indexed"] = problems
        self._append(line)
        self._last[window_key] = line
        self._written.inc()
        yield line

    def _index(self, pane: WindowPane, selection_id: Optional[str], previous_selection: Optional[str],
               digest: str) -> int:
        """Upserts the pane's candidates (and removes those it dropped); returns how many failed."""
        name = window_file_name(pane.window_start, pane.window_end)
        ids = [f"{c.selection_id}:{c.frame_id}:{digest}" for c in pane.candidates]
        failed = self._stores.write(pane.candidates, ids, f"window {name}")
        upserter = self._stores.upserter
        if upserter is not None and pane.candidates:
            self._indexed.inc(len(pane.candidates) - failed)
            stale_from = {s for s in (selection_id, previous_selection) if s}
            try:
                upserter.collection().delete_many(
                    {"selection_id": {"$in": sorted(stale_from)}, "window_start": pane.window_start,
                     "_id": {"$nin": [candidates_schema.candidate_key(c) for c in pane.candidates]}})
            except Exception as e:  # pylint: disable=broad-except  # stale entries stay: logged
                _LOG.error("could not remove candidates window %s no longer selects: %s",
                           name, redact_text(str(e))[:300])
        self._not_indexed.inc(failed)
        return failed

    def _append(self, line: dict):
        path = self._path(WINDOWS_FILE)
        text = _json_line(line)
        if is_local(path):
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        else:
            write_atomically(path, (_read_text(path) or "") + text)


class WriteWindowPanes(beam.PTransform):
    """Writes each :class:`~schemas.records.WindowPane` (see the module docstring).

    Parameters
    ----------
    output_dir : str
        Local directory or ``gs://`` prefix.
    mongo_uri, database : str
        Where the ``candidates`` collection is (None: not indexed).
    bigquery_table : str, optional
        The BigQuery candidates table.
    project : str, optional
        The job's ``--project`` (BigQuery client).
    run_id : str
        Recorded on each ``windows.jsonl`` line.

    Returns the ``PCollection`` of the ``windows.jsonl`` lines written (dicts).
    """

    def __init__(self, output_dir: str, *, mongo_uri: Optional[str] = None, database: str = "activebeam",
                 bigquery_table: Optional[str] = None, project: Optional[str] = None, run_id: str = ""):
        super().__init__()
        self._fn = _WritePanesFn(output_dir, mongo_uri, database, bigquery_table, project, run_id)

    def expand(self, panes):
        return (panes
                | "OneWriter" >> beam.WindowInto(
                    window.GlobalWindows(), trigger=trigger.Repeatedly(trigger.AfterCount(1)),
                    accumulation_mode=trigger.AccumulationMode.DISCARDING)
                | "Key" >> beam.Map(lambda pane: ("", pane))
                | "Serialise" >> beam.GroupByKey()
                | "Write" >> beam.ParDo(self._fn))
