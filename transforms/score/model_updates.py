"""A model that changes while a streaming job runs (continuous training), through ``RunInference``.

Beam's ``RunInference`` takes a side input of ``ModelMetadata`` (``model_metadata_pcoll``, e.g.
from ``WatchFilePattern``): when its ``model_id`` (a path) changes, each worker loads the new
model with its handler's ``update_model_path`` and carries on, without a restart. The handlers
of :mod:`transforms.score.handlers` take a fixed path; :func:`make_updatable_handler` gives the
same handler with ``update_model_path``. Every ``PredictionResult`` then carries the path of the
model that scored it, and :class:`ModelVersions` turns it into that model's
:class:`~schemas.records.ModelVersion` (its weights digest read once per worker), so records and
candidates keep the version that scored them::

    handler = make_updatable_handler(spec)          # spec: the job's --model (load_model_spec)
    versions = ModelVersions(spec)
    ... RunInference(KeyedModelHandler(handler), model_metadata_pcoll=models) ...
    versions.of(result.model_id)                    # ModelVersion of the model that ran

A new model must keep the runtime, input and classes of the job's ``--model`` (the same network,
trained further): its preprocessing is the job's. An empty ``model_id`` keeps the current model.
"""
import os
from typing import Dict, Optional

from schemas.records import ModelVersion
from transforms.score.handlers import ModelSpec, model_version_id
from transforms.score.keras_models import KerasHandler
from transforms.score.model_base import KERAS, SAVED_MODEL
from transforms.score.runtimes import RuntimeHandler


class UpdatableKerasHandler(KerasHandler):
    """:class:`~transforms.score.keras_models.KerasHandler` whose model path follows the side input."""

    def update_model_path(self, model_path: Optional[str] = None):
        if model_path:
            self._uri = model_path


class UpdatableRuntimeHandler(RuntimeHandler):
    """:class:`~transforms.score.runtimes.RuntimeHandler` (TFLite, ONNX) whose model path follows
    the side input."""

    def update_model_path(self, model_path: Optional[str] = None):
        if model_path:
            self._uri = model_path


def make_updatable_handler(spec: ModelSpec, min_batch_size: int = 16, max_batch_size: int = 64,
                           **batch_kwargs):
    """The handler of :func:`transforms.score.handlers.make_handler`, able to switch models."""
    if spec.runtime in (KERAS, SAVED_MODEL):
        embedding_layer = spec.version.embedding_layer if spec.runtime == KERAS else None
        return UpdatableKerasHandler(spec.uri, embedding_layer, min_batch_size, max_batch_size,
                                     mc_passes=spec.mc_passes, preprocessing=spec.preprocessing,
                                     **batch_kwargs)
    return UpdatableRuntimeHandler(spec.uri, spec.runtime, spec.prep(), min_batch_size,
                                   max_batch_size, **batch_kwargs)


class ModelVersions:
    """``model_id`` (a model path, as ``PredictionResult.model_id``) -> :class:`ModelVersion`.

    The job's own model (``spec.uri``, or None for the bundled default) is ``spec.version``;
    another path gets its file stem as name, the digest of its bytes, and the job's embedding
    layer; computed once per path.
    """

    def __init__(self, spec: ModelSpec):
        self._spec = spec
        self._known: Dict[str, ModelVersion] = {}

    def of(self, model_id: Optional[str]) -> ModelVersion:
        if not model_id or model_id == self._spec.uri:
            return self._spec.version
        version = self._known.get(model_id)
        if version is None:
            name = os.path.basename(model_id.rstrip("/"))
            if self._spec.runtime != SAVED_MODEL:
                name = os.path.splitext(name)[0]
            version = ModelVersion(name, model_version_id(model_id), self._spec.version.embedding_layer)
            self._known[model_id] = version
        return version
