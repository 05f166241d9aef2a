"""The novelty index of earlier runs, kept in a directory (local or ``gs://``) between runs.

``mine --index_dir DIR`` scores each run's frames against every frame indexed before (uniqueness
and near-duplicates, :class:`transforms.score.novelty.ScoreNovelty` with ``history=``), and
adds the run's frames to the index when the run succeeds. A run's cost grows with its new
frames: they are searched in the kept index (``O(log n)`` per query for its HNSW graph) and
added to it; history is never searched against itself again. What the directory holds::

    DIR/manifest.json             which generation is current, the embedding model, frame count
    DIR/index-000003.faiss        faiss.serialize_index of the cosine index (unit vectors, inner product)
    DIR/frames-000003.jsonl       one line per indexed vector, in index order: frame_id, source_uri, frame_index
    DIR/pending-000004.json       a run's next manifest, written by the pipeline, renamed by commit()

Restart-safe by generations (a two-phase commit): a run reads generation ``g`` (pinned when the
pipeline is built), writes ``g + 1``'s files and ``pending-(g+1).json`` from inside the
pipeline, and the driver renames the pending manifest over ``manifest.json`` only after the
pipeline succeeded (:meth:`NoveltyHistory.commit`). A run that dies leaves ``g`` current; its
rerun writes ``g + 1`` again. Frames already indexed (same frame id) are not added twice.
One run at a time per directory.

Versioned with the model: the manifest names the embedding model (name, version, embedding
layer). A run with another model stops with :class:`ModelVersionChanged`, whose message says to
pass a new ``--index_dir`` or ``--renew_index`` (which starts generation ``g + 1`` empty,
keeping the old files for reference).

The index type follows its size (:func:`transforms.score.ann.choose_index`): ``Flat`` while small,
rebuilt once as an HNSW graph from its stored vectors when it crosses the threshold, then grown
by ``add``.
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
FORMAT = 1


class ModelVersionChanged(ValueError):
    """The index directory holds embeddings of another model than this run's."""


class HistorySnapshot(NamedTuple):
    """One generation of the history: the faiss cosine index (or ``None`` when empty), the
    frame ids and ``(source_uri, frame_index)`` keys in index order."""
    generation: int
    index: object
    ids: List[str]
    keys: List[Tuple[str, int]]


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
        if manifest and manifest.get("format") != FORMAT:
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
            self.renewed, self.frames = True, 0

    def _path(self, name: str) -> str:
        return FileSystems.join(self.index_dir, name)

    def _read_manifest(self) -> Optional[dict]:
        path = self._path(MANIFEST)
        return json.loads(_read_bytes(path)) if FileSystems.exists(path) else None

    @property
    def next_generation(self) -> int:
        return self.generation + 1

    def load(self) -> HistorySnapshot:
        """The pinned generation (empty for a new or renewed directory)."""
        if self.renewed or self.generation == 0 or self.frames == 0:
            return HistorySnapshot(self.generation, None, [], [])
        import faiss
        g = self.generation
        index = faiss.deserialize_index(np.frombuffer(_read_bytes(self._path(f"index-{g:06d}.faiss")), np.uint8))
        ann.tune(index, ann.resolve(ann.AUTO, index.ntotal))
        ids, keys = [], []
        for line in _read_bytes(self._path(f"frames-{g:06d}.jsonl")).decode("utf-8").splitlines():
            frame = json.loads(line)
            ids.append(frame["frame_id"])
            keys.append((frame["source_uri"], frame["frame_index"]))
        return HistorySnapshot(g, index, ids, keys)

    def write_next(self, snapshot: HistorySnapshot, new_ids: Sequence[str], new_embeddings: np.ndarray,
                   new_keys: Sequence[Tuple[str, int]]) -> int:
        """Writes generation ``g + 1`` (the snapshot plus the new frames not yet in it) and its
        pending manifest; returns the number of frames added. Nothing is current until
        :meth:`commit`."""
        import faiss
        known = set(snapshot.ids)
        fresh = [i for i, frame_id in enumerate(new_ids) if frame_id not in known]
        fresh = sorted(dict((new_ids[i], i) for i in fresh).values())  # one entry per frame id
        ids = snapshot.ids + [new_ids[i] for i in fresh]
        keys = snapshot.keys + [tuple(new_keys[i]) for i in fresh]
        x = np.ascontiguousarray(np.asarray(new_embeddings, dtype=np.float32)[fresh])
        index = snapshot.index
        choice = ann.choose_index(len(ids))
        if index is None or (not ann.is_graph(index) and choice.factory != ann.EXACT):
            old = index.reconstruct_n(0, index.ntotal) if index is not None else np.empty((0, x.shape[1]), np.float32)
            index = knn.build_index(np.concatenate([old, x]), knn.COSINE, ann.AUTO)
        elif len(x):
            index.add(knn.unit_rows(x))
        g = self.next_generation
        _write_bytes(self._path(f"index-{g:06d}.faiss"), faiss.serialize_index(index).tobytes())
        _write_bytes(self._path(f"frames-{g:06d}.jsonl"), "".join(
            json.dumps({"frame_id": i, "source_uri": k[0], "frame_index": int(k[1])}) + "\n"
            for i, k in zip(ids, keys)).encode("utf-8"))
        write_atomically(self._path(f"pending-{g:06d}.json"), json.dumps(
            {"format": FORMAT, "generation": g, "frames": len(ids), "model": _model_dict(self.model),
             "factory": choice.factory}, sort_keys=True) + "\n")
        return len(fresh)

    def commit(self) -> bool:
        """Makes the pending generation current (after the run succeeded); False if the run
        wrote none (e.g. no frames)."""
        pending = self._path(f"pending-{self.next_generation:06d}.json")
        if not FileSystems.exists(pending):
            return False
        write_atomically(self._path(MANIFEST), _read_bytes(pending).decode("utf-8"))
        FileSystems.delete([pending])
        self.generation, self.renewed = self.next_generation, False
        self.frames = json.loads(_read_bytes(self._path(MANIFEST)))["frames"]
        return True
