"""The novelty index of earlier runs, kept in a directory (local or ``gs://``) between runs.

``mine --index_dir DIR`` scores each run's frames against every frame indexed before (uniqueness
and near-duplicates, :class:`transforms.score.novelty.ScoreNovelty` with ``history=``), and
adds the run's frames to the index when the run succeeds. A run's cost grows with its new
frames: they are searched in the kept segments (``O(log n)`` per query in an HNSW graph) and
written as a segment of their own; history is never searched against itself again, nor read
back and rewritten whole. What the directory holds::

    DIR/manifest.json             which generation is current, the embedding model, frame count, its segments
    DIR/segment-000003.faiss      faiss.serialize_index of one segment's cosine index (unit vectors, inner product)
    DIR/segment-000003.jsonl      one line per vector of that segment, in index order: frame_id, source_uri, frame_index
    DIR/pending-000004.json       a run's next manifest, written by the pipeline, renamed by commit()

Append-only segments, merged by the logarithmic method (Bentley & Saxe 1980, "Decomposable
searching problems I: static-to-dynamic transformation", J. Algorithms 1(4); the same scheme
as an LSM tree's tiers): a run's new frames become a new segment; while the segment before it
holds fewer than :data:`MERGE_FACTOR` times as many frames, the two are merged (their vectors
read back with ``reconstruct_n`` and one index built). Segments then shrink at least by half
from the oldest to the newest, so there are ``O(log N)`` of them to search, and each vector is
rewritten ``O(log N)`` times over the directory's life, not once per run. Each segment's index
follows its own size (:func:`transforms.score.ann.choose_index`: ``Flat`` below 10,000 frames,
else ``HNSW32,Flat``). Uniqueness and near-duplicates are found in every segment, as in every
shard of a run, and merged.

Restart-safe by generations (a two-phase commit): a run reads generation ``g`` (pinned when the
pipeline is built), writes segment ``g + 1``'s files and ``pending-(g+1).json`` from inside the
pipeline, and the driver renames the pending manifest over ``manifest.json`` only after the
pipeline succeeded (:meth:`NoveltyHistory.commit`). Committed segments are never rewritten: a
merge writes a new segment. A run that dies leaves ``g`` current; its rerun writes ``g + 1``
again. Frames already indexed (same frame id) are not added twice. One run at a time per
directory. Segments that a merge replaced stay on disk (an older generation's manifest names
them), as the files of a renewed index do.

Versioned with the model: the manifest names the embedding model (name, version, embedding
layer). A run with another model stops with :class:`ModelVersionChanged`, whose message says to
pass a new ``--index_dir`` or ``--renew_index`` (which starts generation ``g + 1`` empty,
keeping the old files for reference). A directory of format 1 (one ``index-g.faiss`` and
``frames-g.jsonl`` per generation) is read as one segment.
"""
import json
import logging
import os
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from apache_beam.io.filesystems import FileSystems

from schemas.records import ModelVersion
from transforms.common.files import is_local
from transforms.index.window_outputs import write_atomically
from transforms.score import ann, knn

_LOG = logging.getLogger(__name__)
MANIFEST = "manifest.json"
FORMAT = 2
#: A new segment is merged into the one before it while that one holds fewer than
#: ``MERGE_FACTOR`` times its frames (the logarithmic method's base).
MERGE_FACTOR = 2


class ModelVersionChanged(ValueError):
    """The index directory holds embeddings of another model than this run's."""


class Segment(NamedTuple):
    """One append-only piece of the history: its faiss cosine index and its frame ids and
    ``(source_uri, frame_index)`` keys in index order."""
    index: object
    ids: List[str]
    keys: List[Tuple[str, int]]


class HistorySnapshot(NamedTuple):
    """One generation of the history: its segments, oldest (largest) first."""
    generation: int
    segments: List[Segment]

    @property
    def ids(self) -> List[str]:
        return [frame_id for segment in self.segments for frame_id in segment.ids]

    @property
    def keys(self) -> List[Tuple[str, int]]:
        return [key for segment in self.segments for key in segment.keys]


def _model_dict(model: ModelVersion) -> dict:
    return {"name": model.name, "version": model.version, "embedding_layer": model.embedding_layer}


def _read_bytes(path: str) -> bytes:
    with FileSystems.open(path) as f:
        return f.read()


def _write_bytes(path: str, data: bytes) -> None:
    if is_local(path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with FileSystems.create(path) as f:
        f.write(data)


class NoveltyHistory:
    """The history in ``index_dir`` for embeddings of ``model`` (see the module docstring).

    Parameters
    ----------
    index_dir : str
        Local directory or any Beam filesystem URI (``gs://bucket/path``).
    model : ModelVersion
        The embedding model of this run.
    renew : bool
        Start an empty generation when the directory holds another model's index, instead of
        raising :class:`ModelVersionChanged`.

    Raises
    ------
    ModelVersionChanged
        On construction, when the manifest names another model and ``renew`` is false.
    ValueError
        When the manifest has an unknown format.
    """

    def __init__(self, index_dir: str, model: ModelVersion, renew: bool = False):
        self.index_dir = index_dir.rstrip("/")
        self.model = model
        manifest = self._read_manifest()
        self.generation = manifest["generation"] if manifest else 0
        self.frames = manifest["frames"] if manifest else 0
        self.renewed = False
        self._segments = _segments_of(manifest) if manifest else []
        if manifest and manifest.get("format") not in (1, FORMAT):
            raise ValueError(f"{self._path(MANIFEST)}: unknown format {manifest.get('format')!r}")
        if manifest and manifest["model"] != _model_dict(model):
            old = manifest["model"]
            if not renew:
                raise ModelVersionChanged(
                    f"--index_dir {self.index_dir} holds {manifest['frames']} embeddings of model "
                    f"{old['name']} version {old['version']} (layer {old['embedding_layer']}); this run's "
                    f"model is {model.name} version {model.version} (layer {model.embedding_layer}). "
                    "Embeddings of different models cannot be compared: pass a new --index_dir, or "
                    "--renew_index to start a new index in this directory.")
            _LOG.warning("--index_dir %s: model changed from %s %s to %s %s, starting a new index "
                         "(generation %d)", self.index_dir, old["name"], old["version"], model.name,
                         model.version, self.generation + 1)
            self.renewed, self.frames, self._segments = True, 0, []

    def _path(self, name: str) -> str:
        return FileSystems.join(self.index_dir, name)

    def _read_manifest(self) -> Optional[dict]:
        path = self._path(MANIFEST)
        return json.loads(_read_bytes(path)) if FileSystems.exists(path) else None

    @property
    def next_generation(self) -> int:
        return self.generation + 1

    def load(self) -> HistorySnapshot:
        """The pinned generation's segments (none for a new or renewed directory)."""
        if self.renewed or self.generation == 0 or self.frames == 0:
            return HistorySnapshot(self.generation, [])
        return HistorySnapshot(self.generation, [self._load_segment(entry) for entry in self._segments])

    def _load_segment(self, entry: dict) -> Segment:
        import faiss
        index = faiss.deserialize_index(np.frombuffer(_read_bytes(self._path(entry["index"])), np.uint8))
        ann.tune(index, ann.resolve(ann.AUTO, index.ntotal))
        ids, keys = self._frames(entry)
        return Segment(index, ids, keys)

    def _frames(self, entry: dict) -> Tuple[List[str], List[Tuple[str, int]]]:
        ids, keys = [], []
        for line in _read_bytes(self._path(entry["frames"])).decode("utf-8").splitlines():
            frame = json.loads(line)
            ids.append(frame["frame_id"])
            keys.append((frame["source_uri"], frame["frame_index"]))
        return ids, keys

    def write_next(self, new_ids: Sequence[str], new_embeddings: np.ndarray,
                   new_keys: Sequence[Tuple[str, int]]) -> int:
        """Writes generation ``g + 1``: the pinned generation's segments and a new segment of
        the new frames not yet in them (``new_embeddings`` float ``(n, D)``, normalised here),
        merged by :data:`MERGE_FACTOR`; then its pending manifest. Returns the number of frames
        added. Reads only the segments' frame lists (and the vectors of the segments it
        merges). Nothing is current until :meth:`commit`."""
        entries = [] if self.renewed else list(self._segments)
        known = {frame_id for entry in entries for frame_id in self._frames(entry)[0]}
        fresh = sorted(dict((frame_id, i) for i, frame_id in enumerate(new_ids) if frame_id not in known).values())
        g = self.next_generation
        if fresh:
            x = np.asarray(new_embeddings, dtype=np.float32)[fresh]
            ids, keys = [new_ids[i] for i in fresh], [tuple(new_keys[i]) for i in fresh]
            while entries and entries[-1]["count"] < MERGE_FACTOR * len(ids):
                older = self._load_segment(entries.pop())
                x = np.concatenate([older.index.reconstruct_n(0, older.index.ntotal), x])
                ids, keys = older.ids + ids, older.keys + keys
            entries.append(self._write_segment(g, x, ids, keys))
        write_atomically(self._path(f"pending-{g:06d}.json"), json.dumps(
            {"format": FORMAT, "generation": g, "frames": sum(e["count"] for e in entries),
             "model": _model_dict(self.model), "segments": entries}, sort_keys=True) + "\n")
        return len(fresh)

    def _write_segment(self, g: int, x: np.ndarray, ids: List[str], keys: List[Tuple[str, int]]) -> dict:
        """Writes segment ``g`` (its index over ``x`` and its frame list); its manifest entry."""
        import faiss
        index = knn.build_index(x, knn.COSINE, ann.AUTO)
        name = f"segment-{g:06d}"
        _write_bytes(self._path(f"{name}.faiss"), faiss.serialize_index(index).tobytes())
        _write_bytes(self._path(f"{name}.jsonl"), "".join(
            json.dumps({"frame_id": i, "source_uri": k[0], "frame_index": int(k[1])}) + "\n"
            for i, k in zip(ids, keys)).encode("utf-8"))
        return {"index": f"{name}.faiss", "frames": f"{name}.jsonl", "count": len(ids),
                "factory": ann.choose_index(len(ids)).factory}

    def commit(self) -> bool:
        """Makes the pending generation current (after the run succeeded); False if the run
        wrote none (e.g. no frames)."""
        pending = self._path(f"pending-{self.next_generation:06d}.json")
        if not FileSystems.exists(pending):
            return False
        write_atomically(self._path(MANIFEST), _read_bytes(pending).decode("utf-8"))
        FileSystems.delete([pending])
        self.generation, self.renewed = self.next_generation, False
        manifest = json.loads(_read_bytes(self._path(MANIFEST)))
        self.frames, self._segments = manifest["frames"], _segments_of(manifest)
        return True


def _segments_of(manifest: dict) -> List[dict]:
    """The segment entries of a manifest (a format-1 generation is one segment)."""
    if "segments" in manifest:
        return list(manifest["segments"])
    g = manifest["generation"]
    return [{"index": f"index-{g:06d}.faiss", "frames": f"frames-{g:06d}.jsonl", "count": manifest["frames"],
             "factory": manifest.get("factory")}] if manifest["frames"] else []
