"""An HTML report of a selection: what was chosen, why, and from what pool.

    python -m beam_pipelines.report --mongo_uri mongodb://host:27017 --selection_id ID --output DIR
    xdg-open DIR/index.html          # or any browser: file:// works, no network is used

Every batch ``mine`` run writes one to ``<output_dir>/report/index.html``
(:func:`report_for_run`); the streaming job writes one per window with :func:`write_report`.
A report is a directory that works anywhere it is copied (relative paths only, no CDN, no
network at view time):

* ``index.html``: run summary and lineage; per-source and per-class counts of the pool against
  the selection; one histogram per score (inline SVG) with the selection marked; a 2-D PCA map
  of the embeddings with the candidates highlighted (canvas); identical-frame groups (same pixel
  hash in the pool) and near-duplicate candidates (cosine similarity of embeddings); the likely
  label errors cleanlab flagged among the candidates' annotations (``annotate qc --label_issues``,
  MongoDB ``label_issues``), grouped by issue type, each group in its review queue's order; dead
  letters;
* ``data.js``: the candidates and map points (a ``<script>``, since browsers refuse ``fetch``
  from ``file://``), rendered client-side by ``report.js`` one page at a time, so a
  10,000-candidate selection opens as fast as a 50-candidate one;
* ``thumbs/`` and ``frames/``: every candidate decoded again from its source, detector boxes
  drawn (:mod:`beam_pipelines.report.frames`).

The pool is the frames the selection was made from: those indexed with the selection's model
version whose source matches the run's input globs.
"""
import argparse
import collections
import fnmatch
import html
import json
import logging
import math
import os
import posixpath
import shutil
import string
import sys
import tempfile
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from beam_pipelines.report.frames import FrameRequest, render_frames
from schemas.labelling import LABEL_ISSUE_TYPE_NAMES, LABEL_ISSUE_TYPES
from transforms.score import pretrained
from transforms.score.detection import describe_objects

_LOG = logging.getLogger(__name__)

ASSETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
REPORT_DIR = "report"  # under a run's output_dir
PAGE_SIZE = 60  # candidates per page of the grid
MAP_POINTS = 5000  # pool frames drawn on the embedding map (a uniform sample; candidates always)
HISTOGRAM_BINS = 30
NEAR_DUPLICATE_COSINE = 0.98  # candidates at least this similar (embeddings) form a group
NEAR_DUPLICATE_CHECKED = 2000  # the best-ranked candidates compared pairwise (O(n^2))
TABLE_ROWS = 200  # rows of a server-side table shown (counts, dead letters, groups)


# --- entry points ----------------------------------------------------------------------------

def write_report(report_dir: str, candidates: Iterable[dict], frames: Iterable[dict] = (),
                 dead_letters: Iterable[dict] = (), summary: Optional[dict] = None, *,
                 page_size: int = PAGE_SIZE, title: Optional[str] = None,
                 label_issues: Iterable[dict] = ()) -> str:
    """Writes a report directory; returns the path of its ``index.html``.

    Parameters
    ----------
    report_dir : str
        Where to write (local path or any Beam filesystem, e.g. ``gs://``); created if missing.
    candidates : iterable of dict
        The selection, as in ``candidates.jsonl`` or MongoDB's ``candidates`` (``frame_id``,
        ``source_uri``, ``frame_index``, ``timestamp_s``, ``rank``, ``score``, ``scores``,
        ``components``, ``predicted_class``, ``duplicates``...); shown in ``rank`` order.
    frames : iterable of dict
        The pool the candidates were chosen from, as MongoDB ``frames`` documents (``_id`` or
        ``frame_id``, ``source_uri``, ``scores``, ``predicted_class``, ``embedding``,
        ``pixel_hash``, ``width``, optional ``detections``). Read once, streamed; may be empty
        (then the pool is the selection itself).
    dead_letters : iterable of dict
        ``dead_letter.jsonl`` records (``source_uri``, ``stage``, ``error``...).
    summary : dict, optional
        ``summary.json`` (counts, options, ``run_id``, ``code_version``, ``model``, ``inputs``).
    page_size : int
        Candidates per page of the grid.
    label_issues : iterable of dict
        ``label_issues`` rows (:mod:`schemas.labelling`) of the candidates' annotations; the
        flagged ones are shown grouped by ``issue_type``, each group in its review queue's order
        (lowest ``type_score`` first, then ``type_rank``).
    """
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size!r}")
    candidates = sorted(candidates, key=lambda c: (c.get("rank") is None, c.get("rank") or 0))
    # "880 (unicycle)" rather than a bare index: the record's predicted_label (the name in its
    # model's class list), else the default model's names for records written before it existed.
    names = pretrained.class_names(((candidates[0].get("model") or {}).get("name")) if candidates else None) or ()

    def named(c):
        k, label = c.get("predicted_class"), c.get("predicted_label")
        if label is None and isinstance(k, int) and 0 <= k < len(names):
            label = names[k]
        return dict(c, predicted_class=f"{k} ({label})") if isinstance(k, int) and label is not None else c
    candidates = [named(c) for c in candidates]
    frames = (named(doc) for doc in frames)
    summary = dict(summary or {})
    pool = _Pool.gather(frames, {c["frame_id"] for c in candidates})
    local_dir, publish = _local_target(report_dir)
    try:
        requests = [_frame_request(c, pool.lookup.get(c["frame_id"], {})) for c in candidates]
        images = render_frames(requests, local_dir)
        cards = [_card(c, images.get(c["frame_id"]), pool.lookup.get(c["frame_id"], {})) for c in candidates]
        embedding_map = _embedding_map(pool, candidates)
        data = {"page_size": page_size, "candidates": cards, "map": embedding_map,
                "strategy": candidates[0].get("strategy") if candidates else summary.get("strategy")}
        with open(os.path.join(local_dir, "data.js"), "w", encoding="utf-8") as f:
            f.write("window.ACTIVEBEAM_REPORT = ")
            json.dump(data, f, separators=(",", ":"), allow_nan=False, default=_json_default)
            f.write(";\n")
        for asset in ("report.js", "report.css"):
            shutil.copy(os.path.join(ASSETS_DIR, asset), os.path.join(local_dir, asset))
        page = _render_page(candidates, cards, pool, list(dead_letters), summary, embedding_map,
                            title or _title(summary, candidates), list(label_issues))
        with open(os.path.join(local_dir, "index.html"), "w", encoding="utf-8") as f:
            f.write(page)
        publish()
    finally:
        if local_dir != report_dir:
            shutil.rmtree(local_dir, ignore_errors=True)
    return _join(report_dir, "index.html")


def report_for_run(output_dir: str, mongo_uri: Optional[str], database: str = "activebeam") -> str:
    """The report of a finished ``mine`` run, from its ``output_dir`` files and its pool in
    MongoDB; written to ``<output_dir>/report/``. Returns the ``index.html`` path."""
    from transforms.common.outputs import CANDIDATES_FILE, DEAD_LETTER_FILE, SUMMARY_FILE
    summary = _read_json(_join(output_dir, SUMMARY_FILE)) or {}
    candidates = list(_read_jsonl(_join(output_dir, CANDIDATES_FILE)))
    dead_letters = list(_read_jsonl(_join(output_dir, DEAD_LETTER_FILE)))
    version = (summary.get("model") or {}).get("version") or _model_version(candidates)
    report_dir = _join(output_dir, REPORT_DIR)
    if not mongo_uri or not version:
        return write_report(report_dir, candidates, (), dead_letters, summary)
    with _mongo(mongo_uri) as client:
        frames = pool_frames(client[database], version, summary.get("inputs") or ())
        return write_report(report_dir, candidates, frames, dead_letters, summary,
                            label_issues=label_issues_of(client[database], [c["frame_id"] for c in candidates]))


def report_for_selection(mongo_uri: str, selection_id: str, report_dir: str,
                         database: str = "activebeam", page_size: int = PAGE_SIZE) -> str:
    """The report of any selection stored in MongoDB's ``candidates``; its run (for inputs,
    summary and dead letters) is the ``runs`` entry whose inputs give that ``selection_id``."""
    with _mongo(mongo_uri) as client:
        db = client[database]
        candidates = list(db["candidates"].find({"selection_id": selection_id}, {"_id": 0}).sort("rank", 1))
        if not candidates:
            raise LookupError(f"no candidates with selection_id {selection_id!r} in {database}.candidates")
        version = _model_version(candidates)
        run = find_run(db, candidates[0], version)
        summary, dead_letters = _run_outputs(run)
        summary.setdefault("selection_id", selection_id)
        frames = pool_frames(db, version, (run or {}).get("inputs") or ())
        return write_report(report_dir, candidates, frames, dead_letters, summary, page_size=page_size,
                            label_issues=label_issues_of(db, [c["frame_id"] for c in candidates]))


def write_run_report_safely(output_dir: str, mongo_uri: Optional[str], database: str) -> Optional[str]:
    """:func:`report_for_run` for the ``mine`` driver: a failure is logged, never raised (the
    run's results are already written)."""
    try:
        path = report_for_run(output_dir, mongo_uri, database)
        _LOG.info("report: %s", path)
        return path
    except Exception:  # noqa: BLE001 - the report must not fail a finished run
        _LOG.exception("the run's report could not be written (the run's results are complete)")
        return None


# --- reading the stores ----------------------------------------------------------------------

def pool_frames(db, model_version: str, inputs: Sequence[str] = ()) -> Iterable[dict]:
    """Frames of ``db.frames`` indexed with ``model_version`` whose ``source_uri`` matches one
    of the ``inputs`` globs (all of that model's frames if none); streamed, class
    probabilities left out."""
    cursor = db["frames"].find({"model.version": model_version}, {"probabilities": 0}, batch_size=2000)
    patterns = [g[len("file://"):] if g.startswith("file://") else g for g in inputs]
    for doc in cursor:
        if not patterns or any(fnmatch.fnmatchcase(doc.get("source_uri", ""), p) for p in patterns):
            yield doc


def label_issues_of(db, frame_ids: Sequence[str]) -> List[dict]:
    """The flagged ``label_issues`` rows of these frames (every model and scoring run)."""
    return list(db["label_issues"].find({"frame_id": {"$in": list(frame_ids)}, "is_issue": True}))


def find_run(db, candidate: dict, model_version: str) -> Optional[dict]:
    """The newest ``runs`` entry whose model and inputs give the candidate's ``selection_id``."""
    from transforms.select.base import selection_id
    parameters = candidate.get("parameters")
    if isinstance(parameters, str):
        parameters = json.loads(parameters)
    for run in db["runs"].find({"model_version": model_version}).sort("started_at", -1):
        if selection_id(parameters, model_version, run.get("inputs") or ()) == candidate["selection_id"]:
            return run
    return None


def _run_outputs(run: Optional[dict]):
    """(summary, dead letters) of a run: its ``summary.json`` if still readable, else its entry."""
    if not run:
        return {}, []
    from transforms.common.outputs import DEAD_LETTER_FILE, SUMMARY_FILE
    output_dir = run.get("output_dir")
    summary = (_read_json(_join(output_dir, SUMMARY_FILE)) if output_dir else None) or {}
    if not summary:
        summary = dict(json.loads(run.get("options") or "{}"), **json.loads(run.get("counts") or "{}"))
        summary.update(run_id=run["_id"], code_version=run.get("code_version"), inputs=run.get("inputs"))
    summary.update(run_status=run.get("status"), started_at=str(run.get("started_at")),
                   finished_at=str(run.get("finished_at")))
    dead = list(_read_jsonl(_join(output_dir, DEAD_LETTER_FILE))) if output_dir else []
    return summary, dead


class _mongo:
    def __init__(self, uri: str):
        from transforms.index.mongodb_client import mongo_client
        self._client = mongo_client(uri, appname="activebeam-report")

    def __enter__(self):
        return self._client

    def __exit__(self, *exc):
        self._client.close()


def _read_json(path: str) -> Optional[dict]:
    from apache_beam.io.filesystems import FileSystems
    try:
        with FileSystems.open(path) as f:
            return json.loads(f.read().decode("utf-8"))
    except (OSError, IOError, ValueError):
        return None


def _read_jsonl(path: str):
    from apache_beam.io.filesystems import FileSystems
    try:
        f = FileSystems.open(path)
    except (OSError, IOError):
        return
    with f:
        for line in f.read().decode("utf-8").splitlines():
            if line.strip():
                yield json.loads(line)


def _model_version(candidates: List[dict]) -> Optional[str]:
    for c in candidates:
        model = c.get("model") or {}
        if model.get("version"):
            return model["version"]
    return None


# --- the pool --------------------------------------------------------------------------------

class _Pool:
    """What the report shows of the pool, gathered in one pass over its frames: counts, score
    values, a uniform sample of embeddings (reservoir, fixed seed), pixel-hash groups, and the
    candidates' own documents."""

    def __init__(self, wanted_ids: set, sample_size: int = MAP_POINTS):
        self.frames = 0
        self.per_source = collections.Counter()
        self.per_class = collections.Counter()
        self.scores: Dict[str, List[float]] = collections.defaultdict(list)
        self.hash_groups: Dict[str, list] = {}  # pixel hash -> [frames, first few labels]
        self.lookup: Dict[str, dict] = {}
        self.sample: List[List[float]] = []
        self._wanted, self._size = wanted_ids, sample_size
        self._rng = np.random.default_rng(0)

    @classmethod
    def gather(cls, frames: Iterable[dict], wanted_ids: set) -> "_Pool":
        pool = cls(wanted_ids)
        for doc in frames:
            pool.add(doc)
        return pool

    def add(self, doc: dict):
        frame_id = doc.get("_id") or doc.get("frame_id")
        self.frames += 1
        self.per_source[doc.get("source_uri")] += 1
        self.per_class[doc.get("predicted_class")] += 1
        for name, value in (doc.get("scores") or {}).items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.scores[name].append(float(value))
        if doc.get("pixel_hash"):
            group = self.hash_groups.setdefault(doc["pixel_hash"], [0, []])
            group[0] += 1
            if len(group[1]) < 6:
                group[1].append(_frame_label(doc))
        embedding = doc.get("embedding")
        if frame_id in self._wanted:
            self.lookup[frame_id] = doc
        elif embedding:
            # Reservoir sampling (Vitter's algorithm R) over the non-candidate frames.
            seen = self.frames - len(self.lookup)
            if len(self.sample) < self._size:
                self.sample.append(embedding)
            else:
                j = int(self._rng.integers(0, seen))
                if j < self._size:
                    self.sample[j] = embedding


def _frame_label(doc: dict) -> str:
    name = posixpath.basename(doc.get("source_uri") or "")
    return f"{name} #{doc.get('frame_index', 0)}" if doc.get("timestamp_s") is not None else name


def pca_2d(x: np.ndarray):
    """The first two principal components of ``x`` (``(n, d)``, n >= 2, d >= 2): returns
    ``(xy, explained)``, the projections ``(n, 2)`` float64 and the two components' ratios of the
    total variance ``(2,)``.

    Exact PCA by the SVD of the centred data (numpy's LAPACK ``gesdd``), with scikit-learn's sign
    convention (``svd_flip(u_based_decision=False)``: each component's largest loading in absolute
    value is positive), so that the map equals ``sklearn.decomposition.PCA(n_components=2)``'s,
    which ``tests/test_report.py`` checks. Not scikit-learn itself: importing it costs the report
    1.5-1.9 s whenever the job's model has not already imported it (the default TFLite models,
    the driver of a multi-process run), for a 2-D plot."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    vt = vt[:2]
    vt *= np.sign(vt[np.arange(len(vt)), np.argmax(np.abs(vt), axis=1)])[:, None]
    variance = s ** 2
    total = variance.sum()
    explained = variance[:2] / total if total > 0 else np.zeros(2)
    return x @ vt.T, explained


def _embedding_map(pool: _Pool, candidates: List[dict]) -> Optional[dict]:
    """2-D PCA of the sampled pool and the candidates' embeddings: ``{"pool": [[x, y]...],
    "candidates": [[x, y, rank]...], "method", "explained"}``, or None without embeddings."""
    chosen = [(c["rank"], pool.lookup[c["frame_id"]]["embedding"]) for c in candidates
              if pool.lookup.get(c["frame_id"], {}).get("embedding")]
    rows = pool.sample + [e for _, e in chosen]
    if len(rows) < 3 or len({len(r) for r in rows}) != 1 or len(rows[0]) < 2:
        return None
    xy, explained = pca_2d(np.asarray(rows, dtype=np.float32))
    xy = np.nan_to_num(xy)
    n = len(pool.sample)
    return {"method": "PCA", "explained": [round(float(v), 4) for v in explained],
            "pool_frames": pool.frames, "pool_shown": n,
            "pool": np.round(xy[:n], 4).tolist(),
            "candidates": [[round(float(a), 4), round(float(b), 4), rank]
                           for (rank, _), (a, b) in zip(chosen, xy[n:])]}


def near_duplicate_groups(candidates: List[dict], lookup: Dict[str, dict],
                          threshold: float = NEAR_DUPLICATE_COSINE,
                          limit: int = NEAR_DUPLICATE_CHECKED) -> List[List[int]]:
    """Groups (lists of ranks, size >= 2) of the best ``limit`` candidates whose embeddings have
    cosine similarity >= ``threshold`` to another member (single linkage, union-find)."""
    ranked = [(c["rank"], lookup[c["frame_id"]]["embedding"]) for c in candidates[:limit]
              if lookup.get(c["frame_id"], {}).get("embedding")]
    if len(ranked) < 2 or len({len(e) for _, e in ranked}) != 1:
        return []
    x = np.asarray([e for _, e in ranked], dtype=np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    parent = list(range(len(ranked)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i
    for start in range(0, len(ranked), 512):
        sims = x[start:start + 512] @ x.T
        for a, b in zip(*np.nonzero(sims >= threshold)):
            a += start
            if a < b:
                parent[find(a)] = find(b)
    groups = collections.defaultdict(list)
    for i, (rank, _) in enumerate(ranked):
        groups[find(i)].append(rank)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))


# --- candidates ------------------------------------------------------------------------------

def _frame_request(candidate: dict, doc: dict) -> FrameRequest:
    return FrameRequest(candidate["frame_id"], candidate["source_uri"], int(candidate.get("frame_index") or 0),
                        candidate.get("timestamp_s"),
                        tuple(candidate.get("detections") or doc.get("detections") or ()),
                        doc.get("width"), doc.get("height"))


def _card(c: dict, images, doc: dict) -> dict:
    """What the grid shows of one candidate (short keys: 10,000 of them go to data.js)."""
    detections = c.get("detections") or doc.get("detections") or ()
    return {
        "rank": c.get("rank"), "id": c["frame_id"], "src": c.get("source_uri"),
        "name": posixpath.basename(c.get("source_uri") or ""), "index": c.get("frame_index"),
        "t": c.get("timestamp_s"), "score": _finite(c.get("score")), "cls": c.get("predicted_class"),
        "dup": c.get("duplicates") or 1, "components": _finite_dict(c.get("components")),
        "scores": _finite_dict(c.get("scores")), "boxes": len(detections),
        "objects": describe_objects(detections),
        "thumb": images.thumb if images else None, "full": images.full if images else None,
        "error": images.error if images else "not rendered",
    }


def _finite(v):
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def _finite_dict(d) -> dict:
    if isinstance(d, (list, tuple)):  # Candidate.components as (name, value) pairs
        d = dict(d)
    return {k: _finite(v) for k, v in (d or {}).items()}


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return _finite(float(o))
    return str(o)


# --- the page --------------------------------------------------------------------------------

def _title(summary: dict, candidates: List[dict]) -> str:
    strategy = candidates[0].get("strategy") if candidates else summary.get("strategy")
    return f"activebeam report: {len(candidates)} candidates ({strategy or 'no strategy'})"


def _render_page(candidates, cards, pool: _Pool, dead_letters, summary, embedding_map, title, label_issues=()) -> str:
    with open(os.path.join(ASSETS_DIR, "index.html"), encoding="utf-8") as f:
        template = string.Template(f.read())
    selected_sources = collections.Counter(c.get("source_uri") for c in candidates)
    selected_classes = collections.Counter(c.get("predicted_class") for c in candidates)
    pool_sources = pool.per_source if pool.frames else selected_sources
    pool_classes = pool.per_class if pool.frames else selected_classes
    groups = near_duplicate_groups(candidates, pool.lookup)
    unrendered = sum(1 for c in cards if not c["thumb"])
    return template.substitute(
        title=_e(title),
        overview=_overview(candidates, pool, dead_letters, summary, unrendered),
        summary=_summary_table(summary),
        sources=_counts_table("Source", pool_sources, selected_sources, lambda s: _e(s)),
        classes=_counts_table("Predicted class", pool_classes, selected_classes, lambda s: _e(s)),
        histograms=_histograms(candidates, pool),
        map_note=_map_note(embedding_map, pool),
        duplicates=_duplicates(pool, groups),
        label_issues=_label_issues(label_issues),
        dead_letters=_dead_letters(dead_letters),
    )


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _duration(seconds: float, cost_model: dict) -> str:
    """``"1 h 05 min (5.0 s/frame + 7.0 s/box, published)"``: a selection's labelling time."""
    minutes = int(round(seconds / 60.0))
    text = f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{seconds / 60.0:.1f} min"
    if cost_model:
        text += (f" ({cost_model.get('seconds_per_frame', 0):.1f} s/frame + "
                 f"{cost_model.get('seconds_per_box', 0):.1f} s/box, {cost_model.get('source', '?')})")
    return text


def _overview(candidates, pool, dead_letters, summary, unrendered) -> str:
    facts = [("candidates", len(candidates)), ("pool frames", pool.frames or "unknown"),
             ("sources in pool", len(pool.per_source) or "unknown"), ("dead letters", len(dead_letters)),
             ("strategy", candidates[0].get("strategy") if candidates else summary.get("strategy")),
             ("model", "{name} {version}".format(**(summary.get("model") or (candidates[0].get("model") if candidates else None) or {"name": "?", "version": ""}))),
             ("selection", candidates[0].get("selection_id") if candidates else None)]
    if unrendered:
        facts.append(("frames not pictured", unrendered))
    figures = summary.get("selection_figures") or {}
    if figures.get("sources") is not None:  # the redundancy figures (beam_pipelines.report.figures)
        facts.append(("sources selected", figures["sources"]))
        facts.append(("top source share (of pool)",
                      f"{figures['top_source_share']:.2f} ({figures['top_source_pool_share']:.2f})"))
    for key, label in (("near_duplicate_pairs", "near-duplicate pairs"),
                       ("similar_same_source_pairs_within_2s", "similar same-source pairs < 2 s"),
                       ("predicted_boxes", "predicted boxes"),
                       ("estimated_label_seconds", "estimated labelling time"),
                       ("coverage_radius_ratio", "coverage radius / k-centre's"),
                       ("mean_score_ratio", "mean score / top-k's")):
        if figures.get(key) is not None:
            value = figures[key]
            if key == "estimated_label_seconds":
                value = _duration(value, summary.get("cost_model") or {})
            facts.append((label, f"{value:.2f}" if isinstance(value, float) else value))
    return "".join(f'<div class="fact"><span>{_e(k)}</span><b>{_e(v)}</b></div>' for k, v in facts)


SUMMARY_FIRST = ("run_id", "code_version", "runner", "model", "inputs", "output_dir", "strategy", "strategy_params",
                 "budget", "budget_unit", "label_rate", "max_per_hour", "vessal_state_key", "selection_order",
                 "cost_model", "candidates", "selection_figures", "files_matched", "files_decoded", "files_failed",
                 "frames_decoded", "frames_written", "dead_letters", "wall_seconds")


def _summary_table(summary: dict) -> str:
    if not summary:
        return "<p>No run summary.</p>"
    keys = [k for k in SUMMARY_FIRST if k in summary] + sorted(k for k in summary if k not in SUMMARY_FIRST)
    rows = []
    for k in keys:
        v = summary[k]
        shown = (f"<pre>{_e(json.dumps(v, indent=1, sort_keys=True, default=str))}</pre>"
                 if isinstance(v, (dict, list)) else _e(v))
        rows.append(f"<tr><th>{_e(k)}</th><td>{shown}</td></tr>")
    return f'<table class="kv">{"".join(rows)}</table>'


def _counts_table(label, pool: collections.Counter, selected: collections.Counter, fmt) -> str:
    total_pool, total_sel = sum(pool.values()) or 1, sum(selected.values()) or 1
    keys = sorted(set(pool) | set(selected), key=lambda k: (-selected.get(k, 0), -pool.get(k, 0), str(k)))
    rows = []
    for k in keys[:TABLE_ROWS]:
        p, s = pool.get(k, 0), selected.get(k, 0)
        width = round(100 * s / total_sel, 1)
        rows.append(f"<tr><td class='name'>{fmt(k)}</td><td>{p}</td><td>{100 * p / total_pool:.1f}%</td>"
                    f"<td>{s}</td><td><span class='bar' style='width:{width}%'></span>{100 * s / total_sel:.1f}%</td></tr>")
    more = f"<p>{len(keys) - TABLE_ROWS} more not shown.</p>" if len(keys) > TABLE_ROWS else ""
    return (f"<table class='counts'><thead><tr><th>{_e(label)}</th><th>pool</th><th>share</th>"
            f"<th>selected</th><th>share of selection</th></tr></thead><tbody>{''.join(rows)}</tbody></table>{more}")


def _histograms(candidates, pool: _Pool) -> str:
    names = []
    strategy = candidates[0].get("strategy") if candidates else None
    for c in candidates:
        for n in (c.get("scores") or {}):
            if n not in names:
                names.append(n)
    names.sort(key=lambda n: (n != strategy, n))
    if not names:
        return "<p>No scores.</p>"
    return "".join(histogram_svg(n, pool.scores.get(n) or [], [c["scores"][n] for c in candidates
                                                             if _finite((c.get("scores") or {}).get(n)) is not None])
                   for n in names)


def histogram_svg(name: str, pool_values: Sequence[float], selected_values: Sequence[float],
                  bins: int = HISTOGRAM_BINS, width: int = 320, height: int = 150) -> str:
    """An inline SVG histogram of a score: the pool in grey, the selection in orange, the
    selection's lowest value as a dashed line (everything right of it was eligible)."""
    values = list(pool_values) + list(selected_values)
    if not values:
        return ""
    lo, hi = min(values), max(values)
    if hi <= lo:
        hi = lo + 1e-9
    edges = np.linspace(lo, hi, bins + 1)
    pool_counts = np.histogram(pool_values or [lo], edges)[0] if pool_values else np.zeros(bins, int)
    sel_counts = np.histogram(selected_values, edges)[0] if selected_values else np.zeros(bins, int)
    top = max(int(pool_counts.max()), int(sel_counts.max()), 1)
    pad, plot_h = 4, height - 34
    bar_w = (width - 2 * pad) / bins
    parts = [f'<svg class="hist" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
             f"<title>{_e(name)}: pool {len(pool_values)}, selected {len(selected_values)}</title>"]
    for i in range(bins):
        x = pad + i * bar_w
        for counts, cls in ((pool_counts, "pool"), (sel_counts, "sel")):
            h = plot_h * counts[i] / top
            if h > 0:
                parts.append(f'<rect class="{cls}" x="{x:.1f}" y="{pad + plot_h - h:.1f}" '
                             f'width="{max(bar_w - 1, 1):.1f}" height="{h:.1f}"/>')
    if selected_values:
        cut = pad + (min(selected_values) - lo) / (hi - lo) * (width - 2 * pad)
        parts.append(f'<line class="cut" x1="{cut:.1f}" x2="{cut:.1f}" y1="{pad}" y2="{pad + plot_h}"/>')
    parts.append(f'<text x="{pad}" y="{height - 16}">{lo:.3g}</text>'
                 f'<text x="{width - pad}" y="{height - 16}" text-anchor="end">{hi:.3g}</text>'
                 f'<text x="{width / 2}" y="{height - 3}" text-anchor="middle" class="name">{_e(name)}</text></svg>')
    return f'<figure>{"".join(parts)}</figure>'


def _map_note(embedding_map, pool: _Pool) -> str:
    if not embedding_map:
        return "<p>No embeddings to map.</p>"
    ev = embedding_map["explained"]
    return (f"<p>PCA of {embedding_map['pool_shown']} of {pool.frames} pool frames (a uniform "
            f"sample) and {len(embedding_map['candidates'])} candidates; the axes (1st to 99th percentile) explain "
            f"{100 * ev[0]:.1f}% and {100 * ev[1]:.1f}% of the variance. Click a candidate to go to its card.</p>")


def _duplicates(pool: _Pool, groups: List[List[int]]) -> str:
    out = []
    identical = sorted((g for g in pool.hash_groups.values() if g[0] > 1), key=lambda g: -g[0])
    if identical:
        rows = "".join(f"<tr><td>{n}</td><td>{_e(', '.join(labels))}{' ...' if n > len(labels) else ''}</td></tr>"
                       for n, labels in identical[:TABLE_ROWS])
        out.append(f"<h3>Identical frames in the pool ({len(identical)} groups, same pixel hash; "
                   f"one of each is eligible)</h3><table class='counts'><thead><tr><th>frames</th>"
                   f"<th>members</th></tr></thead><tbody>{rows}</tbody></table>")
    else:
        out.append("<h3>Identical frames in the pool</h3><p>None.</p>")
    if groups:
        rows = "".join("<tr><td>{}</td><td>{}</td></tr>".format(
            len(g), " ".join(f'<a href="#rank-{r}" class="rank-link">#{r}</a>' for r in g[:20]))
            for g in groups[:TABLE_ROWS])
        out.append(f"<h3>Near-duplicate candidates ({len(groups)} groups, embedding cosine &ge; "
                   f"{NEAR_DUPLICATE_COSINE})</h3><table class='counts'><thead><tr><th>candidates</th>"
                   f"<th>ranks</th></tr></thead><tbody>{rows}</tbody></table>")
    else:
        out.append(f"<h3>Near-duplicate candidates</h3><p>None (embedding cosine &ge; {NEAR_DUPLICATE_COSINE}).</p>")
    return "".join(out)


def _queue_key(issue: dict) -> tuple:
    """Order within an issue type's review queue: the type's own score (``type_score``; rows of
    earlier versions: the ``<type>_score`` column, else ``quality_score``), then ``type_rank``."""
    score = issue.get("type_score")
    if score is None:
        score = issue.get(f"{issue.get('issue_type')}_score")
    return (issue["quality_score"] if score is None else score, issue.get("type_rank") or 0, issue["frame_id"])


def _label_issues(issues: List[dict]) -> str:
    """The flagged issues grouped by issue type (:data:`schemas.labelling.LABEL_ISSUE_TYPES` order),
    each group in its review queue's order (:func:`_queue_key`)."""
    flagged = [i for i in issues if i.get("is_issue")]
    if not flagged:
        return ("<p>None flagged among the candidates' annotations (scored by "
                "<code>annotate qc --label_issues</code>, when it ran).</p>")
    out = [f"<p>{len(flagged)} likely label errors (cleanlab), grouped by issue type; each group in its "
           f"review queue's order (lowest score of that type first).</p>"]
    types = list(LABEL_ISSUE_TYPES) + sorted({i.get("issue_type") for i in flagged} - set(LABEL_ISSUE_TYPES))
    for t in types:
        group = sorted((i for i in flagged if i.get("issue_type") == t), key=_queue_key)
        if not group:
            continue
        rows = "".join(f"<tr><td>{_e(i.get('type_rank') or '')}</td><td class='name'>{_e(i['frame_id'])}</td>"
                       f"<td>{_e(i.get('annotator'))}</td><td>{_e(i.get('label'))}</td>"
                       f"<td>{_queue_key(i)[0]:.3f}</td><td>{i['quality_score']:.3f}</td>"
                       f"<td>{_e(i.get('suggested_label') or '')}</td><td>{_e(i.get('suspect_box') or '')}</td>"
                       f"<td>{_e(i.get('review_task_id') or '')}</td></tr>" for i in group[:TABLE_ROWS])
        out.append(f"<h3>{_e(t)}: {_e(LABEL_ISSUE_TYPE_NAMES.get(t, t))} ({len(group)})</h3>"
                   f"<table class='counts label-issue-table' id='label-issues-{_e(t)}'><thead><tr>"
                   f"<th>queue #</th><th>frame</th><th>annotator</th><th>label</th><th>{_e(t)} score</th>"
                   f"<th>quality</th><th>model says</th><th>suspect box</th><th>review task</th></tr></thead>"
                   f"<tbody>{rows}</tbody></table>")
    return "".join(out)


def _dead_letters(dead_letters: List[dict]) -> str:
    if not dead_letters:
        return "<p>None: every matched file was decoded, scored and indexed.</p>"
    rows = "".join(f"<tr><td class='name'>{_e(d.get('source_uri'))}</td><td>{_e(d.get('stage'))}</td>"
                   f"<td>{_e(d.get('reason', ''))}</td><td>{_e(d.get('error'))}</td></tr>"
                   for d in dead_letters[:TABLE_ROWS])
    more = (f"<p>{len(dead_letters) - TABLE_ROWS} more in <code>dead_letter.jsonl</code>.</p>"
            if len(dead_letters) > TABLE_ROWS else "")
    return (f"<table class='counts' id='dead-letter-table'><thead><tr><th>source</th><th>stage</th><th>reason</th>"
            f"<th>error</th></tr></thead><tbody>{rows}</tbody></table>{more}")


# --- output location -------------------------------------------------------------------------

def _join(base: str, *parts: str) -> str:
    from apache_beam.io.filesystems import FileSystems
    return FileSystems.join(base, *parts)


def _local_target(report_dir: str):
    """(local directory to write, function publishing it to ``report_dir``)."""
    from transforms.common.files import is_local
    if is_local(report_dir):
        os.makedirs(report_dir, exist_ok=True)
        return report_dir, lambda: None
    local = tempfile.mkdtemp(prefix="activebeam-report-")

    def publish():
        from apache_beam.io.filesystems import FileSystems
        for root, _, files in os.walk(local):
            for name in files:
                relative = os.path.relpath(os.path.join(root, name), local)
                with open(os.path.join(root, name), "rb") as src, \
                        FileSystems.create(_join(report_dir, *relative.split(os.sep))) as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    return local, publish


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m beam_pipelines.report",
                                     description="Writes the HTML report of a stored selection.")
    parser.add_argument("--mongo_uri", required=True, help="MongoDB connection string")
    parser.add_argument("--mongo_database", default="activebeam")
    parser.add_argument("--selection_id", required=True, help="a selection_id of the candidates collection")
    parser.add_argument("--output", required=True, help="report directory (local or gs://); index.html goes there")
    parser.add_argument("--page_size", type=int, default=PAGE_SIZE, help="candidates per page of the grid")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("NO_GCE_CHECK", "true")
    from transforms.common.redact import redact_text
    try:
        path = report_for_selection(args.mongo_uri, args.selection_id, args.output, args.mongo_database,
                                    args.page_size)
    except Exception as e:  # noqa: BLE001 - one clear line instead of a traceback
        print(f"report: {type(e).__name__}: {redact_text(str(e))[:500]}", file=sys.stderr)
        return 2
    print(path)
    return 0
