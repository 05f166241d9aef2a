"""Embeddings and class probabilities from one forward pass, through Beam ``RunInference``.

``ScoreFrames`` takes decoded frames, prepares each as the model declares (its
:class:`~transforms.score.preprocessing.Preprocessing`: resize, colour order, scaling, in the same fused
step as decoding so pixels never cross a shuffle), runs the model through the handler of its
runtime (Keras, SavedModel, TFLite or ONNX Runtime; see :mod:`transforms.score.handlers`), and emits
:class:`~schemas.records.FrameRecord` with the embedding, probabilities and uncertainty scores::

    model = load_model_spec("my_model.keras", mc_passes=10)
    scored = frames | ScoreFrames(model)
    scored.records        # PCollection[FrameRecord]
    scored.dead_letters   # PCollection[DeadLetter] (stages ``preprocess`` and ``inference``)

Scores: ``entropy``, ``margin`` and ``least_confidence`` as fields, plus ``ratio`` and
``entropy_normalised`` in ``FrameRecord.extra_scores``, and with ``mc_passes`` = T > 0 the
Bayesian scores ``bald``, ``variation_ratios`` and ``mean_std`` over the T dropout passes (see
:mod:`transforms.score.uncertainty`). Every record carries the model's name, weights digest and
embedding layer (:class:`~schemas.records.ModelVersion`).
"""
from typing import NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from schemas import records
from schemas.records import DeadLetter, Detection, Frame, FrameMetadata, FrameRecord
from transforms.score import registry, uncertainty
from transforms.score.detection import aggregate_detection_scores, mean_unit_embedding, object_windows
from transforms.score.detectors import DetectorHandler
from transforms.score.model_updates import ModelVersions, make_updatable_handler
# Re-exported (noqa: F401): the public names of this stage.
from transforms.score.crops import ObjectCropsHandler  # noqa: F401
from transforms.score.handlers import ModelSpec, load_model_spec, make_handler  # noqa: F401
from transforms.score.keras_models import KerasHandler, load_embedding_classifier  # noqa: F401
from transforms.score.model_base import DEFAULT_MODEL_NAME, ModelOutput, default_model_path  # noqa: F401
from transforms.score.model_base import METRICS_NAMESPACE as _NAMESPACE
from transforms.score.preprocessing import LOGITS, PROBABILITIES, Preprocessing, prepare_input  # noqa: F401

DEAD_LETTER = records.DEAD_LETTER_TAG
EmbeddingClassifierHandler = KerasHandler  # the skeleton's name


def probability_scores(probabilities: np.ndarray, samples=None) -> dict:
    """Every score of one frame: name -> float (see :mod:`transforms.score.uncertainty`).

    ``probabilities`` float ``(C,)``; ``samples`` float ``(T, C)`` probabilities of T stochastic
    passes or ``None`` (then no Bayesian scores).
    """
    scores = {name: float(values[0])
              for name, values in uncertainty.classification_scores(probabilities[None, :]).items()}
    if samples is not None and len(samples):
        t = np.asarray(samples, dtype=np.float64)[:, None, :]
        scores.update({name: float(registry.compute(name, t)[0])
                       for name in registry.names(needs=registry.MC_SAMPLES)})
    return scores


class _Key(NamedTuple):
    """What travels next to a frame's pixels and model input: its metadata and the scores
    computed so far (detection aggregates), as sorted ``(name, value)`` pairs."""
    frame: FrameMetadata
    scores: Tuple[Tuple[str, float], ...] = ()
    members: Tuple[np.ndarray, ...] = ()  # class probabilities (C,) of the ensemble members
    detections: Optional[Tuple[Detection, ...]] = None  # None: no detector ran on the frame


def _to_probabilities(output, model_output: str) -> np.ndarray:
    """Class probabilities (float64, last axis) from a model's probabilities or logits."""
    output = np.asarray(output, dtype=np.float64)
    if model_output == LOGITS:
        return uncertainty.softmax(output)
    return output / np.maximum(output.sum(axis=-1, keepdims=True), 1e-12)


def _with_member_probabilities(keyed_result, model_output):
    (key, pixels), result = keyed_result
    return key._replace(members=key.members + (_to_probabilities(result.inference.output, model_output),)), pixels


def _key_frame(frame):
    return _Key(frame.metadata()), frame.pixels


def detection_records(found) -> Tuple[Detection, ...]:
    """A detector's :class:`~transforms.score.detection.Detections` as stored
    :class:`~schemas.records.Detection` records (boxes ``[x1, y1, x2, y2]``, best first)."""
    labels = found.labels or ("object",) * len(found.confidences)
    class_ids = found.class_ids if found.class_ids is not None else np.zeros(len(found.confidences), np.int32)
    return tuple(Detection(str(label), int(class_id), float(score), tuple(float(v) for v in box))
                 for label, class_id, score, box in zip(labels, class_ids, found.confidences, found.boxes))


def _with_detection_scores(keyed_result, band):
    key, result = keyed_result
    if result.inference is None:  # the detector does not apply to this frame
        return key, result.example
    found = result.inference
    scores = aggregate_detection_scores(found.confidences, band, found.localisation,
                                        getattr(found, "rejected", 0.0))
    return key._replace(scores=tuple(sorted(dict(key.scores, **scores).items())),
                        detections=detection_records(found)), result.example


def _with_object_crops(x: np.ndarray, key: "_Key", pixels: np.ndarray, preprocessing) -> np.ndarray:
    """The frame's input followed by its object crops (see :func:`object_windows`), stacked."""
    boxes = [d.box for d in key.detections or ()]
    scores = [d.score for d in key.detections or ()]
    windows = object_windows(boxes, scores, pixels.shape[1], pixels.shape[0])
    crops = [prepare_input(np.ascontiguousarray(pixels[y1:y2, x1:x2]), preprocessing) for x1, y1, x2, y2 in windows]
    return np.stack([x] + crops)


class _PrepareFn(beam.DoFn):
    """Frame (or ``(key, pixels)``) -> ``(key, model input)``; with ``keep_pixels``
    ``((key, pixels), model input)``, for a model whose successors still need the pixels; with
    ``objects`` the input is the frame's followed by its object crops (:class:`ObjectCropsHandler`)."""

    def __init__(self, preprocessing: Preprocessing, keep_pixels: bool = False, objects: bool = False):
        self._preprocessing = preprocessing
        self._keep_pixels = keep_pixels
        self._objects = objects

    def process(self, element):
        # A Frame straight from decoding, or (key, pixels) after the detector or a member.
        key, pixels = _key_frame(element) if isinstance(element, Frame) else element
        try:
            x = prepare_input(pixels, self._preprocessing)
            if self._objects:
                x = _with_object_crops(x, key, pixels, self._preprocessing)
            yield (key, pixels) if self._keep_pixels else key, x
        except Exception as e:  # pylint: disable=broad-except
            frame = key.frame
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, DeadLetter(
                frame.source_uri, records.STAGE_PREPROCESS,
                f"cannot prepare the frame ({frame.width}x{frame.height}) for the model: {e}",
                frame.frame_index, frame.frame_id))


class _ToRecordFn(beam.DoFn):
    def __init__(self, spec: ModelSpec, detector_version=None):
        self._spec = spec
        self._detector_version = detector_version
        self._versions = ModelVersions(spec)  # the model that ran, when it can change
        self._entropy = Metrics.distribution(_NAMESPACE, "entropy_millinats")
        self._scored = Metrics.counter(_NAMESPACE, "frames_scored")

    def _probabilities(self, output):
        return _to_probabilities(output, self._spec.model_output)

    def process(self, keyed_result):
        key, result = keyed_result
        embedding, output, samples, objects = result.inference
        probabilities = self._probabilities(output)
        if samples is not None:
            samples = self._probabilities(samples)
        scores = dict(key.scores, **probability_scores(probabilities, samples))
        if key.members:
            members = np.stack((probabilities,) + key.members)[:, None, :]  # (M, 1, C)
            scores["ensemble_disagreement"] = float(uncertainty.ensemble_disagreement(members)[0])
        predicted = int(np.argmax(probabilities))
        record = FrameRecord(
            frame=key.frame,
            embedding=np.asarray(embedding, dtype=np.float32).reshape(-1),
            probabilities=probabilities.astype(np.float32),
            predicted_class=predicted,
            predicted_label=self._spec.class_name(predicted),
            entropy=scores.pop("entropy"),
            margin=scores.pop("margin"),
            least_confidence=scores.pop("least_confidence"),
            model=self._versions.of(result.model_id),
            extra_scores=tuple(sorted(scores.items())),
            detections=key.detections or (),
            detector=self._detector_version if key.detections is not None else None,
            object_embedding=mean_unit_embedding(objects) if objects is not None else None)
        self._scored.inc()
        self._entropy.update(int(record.entropy * 1000))
        yield record


def _inference_dead_letters(failed, what="model"):
    """Turns an element of RunInference's ``failed_inferences`` output, ``(batch, error)``,
    into one DeadLetter per frame of the failed batch."""
    batch, error = failed
    reason = f"{what} inference failed for the batch holding this frame: {error}"[:500]
    for example in batch:
        key = example[0] if isinstance(example, tuple) else None
        if isinstance(key, tuple) and not isinstance(key, (_Key, FrameMetadata)):
            key = key[0]  # (key, pixels) of an ensemble member's input
        metadata = key.frame if isinstance(key, _Key) else key
        if isinstance(metadata, FrameMetadata):
            yield DeadLetter(metadata.source_uri, records.STAGE_INFERENCE, reason,
                             metadata.frame_index, metadata.frame_id)
        else:
            yield DeadLetter("", records.STAGE_INFERENCE, reason)


class ScoredFrames(NamedTuple):
    records: beam.PCollection
    dead_letters: beam.PCollection


class ScoreFrames(beam.PTransform):
    """Embeds and classifies frames with one forward pass through Beam ``RunInference``.

    Input: ``PCollection[Frame]``. Output: :class:`ScoredFrames` with ``FrameRecord``\\ s (embedding
    ``float32 (D,)``, probabilities ``float32 (C,)``, entropy, margin, least confidence; see
    :mod:`transforms.score.uncertainty`; more in ``extra_scores``) and dead letters for frames that
    could not be prepared or inferred. The model is loaded once per worker process (Beam's shared
    model handle). With a ``detector`` (:class:`~transforms.score.detectors.DetectorHandler`) each frame
    also runs through it and gets the ``detection_*`` aggregates of its boxes' confidences. With
    an ``ensemble`` (further ModelSpecs with the same classes) each frame also runs through every
    member and gets ``ensemble_disagreement``, the Jensen-Shannon divergence of the member's and
    the model's probabilities (:func:`transforms.score.uncertainty.ensemble_disagreement`); the record's
    embedding and other scores stay the model's own. With ``model_updates`` (a
    ``PCollection[ModelMetadata]`` such as ``WatchFilePattern``'s) the model switches to each new
    path it names while the pipeline runs, and each record's ``model`` is the version that scored
    it (:mod:`transforms.score.model_updates`). With ``objects`` (needs a ``detector``) the crops
    of each frame's best boxes (:func:`~transforms.score.detection.object_windows`) go through
    the model with the frame, and the record's ``object_embedding`` is the mean of their unit
    embeddings (LightlyOne-style object-level diversity for the selection).
    """

    def __init__(self, spec: ModelSpec, min_batch_size: int = 16, max_batch_size: int = 128,
                 detector: Optional[DetectorHandler] = None, ensemble: Sequence[ModelSpec] = (),
                 model_updates: Optional[beam.PCollection] = None, objects: bool = False):
        super().__init__()
        if objects and (detector is None or model_updates is not None):
            raise ValueError("objects=True needs a detector and no model_updates")
        for member in ensemble:
            if member.num_classes != spec.num_classes:
                raise ValueError(f"ensemble member {member.version.name} has {member.num_classes} "
                                 f"classes, the model {spec.num_classes}")
        self._spec = spec
        self._model_updates = model_updates
        handler = make_updatable_handler if model_updates is not None else make_handler
        inner = handler(spec, min_batch_size, max_batch_size)
        self._objects = objects
        self._handler = KeyedModelHandler(ObjectCropsHandler(inner) if objects else inner)
        self._detector = detector
        self._members = [(member, KeyedModelHandler(make_handler(member, min_batch_size, max_batch_size)))
                         for member in ensemble]

    def expand(self, frames):
        keyed = frames
        dead_letters = []
        if self._detector is not None:
            keyed = frames | "KeyByFrame" >> beam.Map(_key_frame)
            detected, failed = (keyed | "Detect" >> RunInference(
                KeyedModelHandler(self._detector)).with_exception_handling())
            keyed = detected | "DetectionScores" >> beam.Map(_with_detection_scores, self._detector.band)
            dead_letters.append(failed.failed_inferences
                                | "DetectionDeadLetters" >> beam.FlatMap(_inference_dead_letters, "detector"))
        for i, (member, handler) in enumerate(self._members):
            member_inputs = keyed | f"PrepareMember{i}" >> beam.ParDo(
                _PrepareFn(member.prep(), keep_pixels=True)).with_outputs(DEAD_LETTER, main="inputs")
            inferred, failed = (member_inputs.inputs
                                | f"Member{i}" >> RunInference(handler).with_exception_handling())
            keyed = inferred | f"Member{i}Probabilities" >> beam.Map(
                _with_member_probabilities, member.model_output)
            dead_letters += [member_inputs[DEAD_LETTER], failed.failed_inferences
                             | f"Member{i}DeadLetters" >> beam.FlatMap(_inference_dead_letters, "ensemble member")]
        prepared = keyed | "PrepareModelInput" >> beam.ParDo(
            _PrepareFn(self._spec.prep(), objects=self._objects)).with_outputs(DEAD_LETTER, main="inputs")
        inferred, failed = (prepared.inputs
                            | "RunInference" >> RunInference(
                                self._handler, model_metadata_pcoll=self._model_updates).with_exception_handling())
        detector_version = getattr(self._detector, "version", None)
        scored = inferred | "ToFrameRecords" >> beam.ParDo(_ToRecordFn(self._spec, detector_version))
        dead_letters += [prepared[DEAD_LETTER],
                         failed.failed_inferences | "InferenceDeadLetters" >> beam.FlatMap(_inference_dead_letters)]
        return ScoredFrames(scored, dead_letters | "FlattenDeadLetters" >> beam.Flatten())
