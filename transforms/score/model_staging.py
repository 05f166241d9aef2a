"""Staging of the default pretrained models where remote workers can read them.

A Dataflow job's workers do not share the driver's disk, and the default models are files that
set-up converted on the driver's machine (:mod:`transforms.score.pretrained`). Before such a job
is built, :func:`stage_default_models` copies them, with the files that version and describe them
(the backbone's sidecar, ImageNet class names, ``manifest.json``), to a folder of the job's
staging or temp location::

    <location>/activebeam-models/<16 hex digits of the manifest's file digests>/
        efficientnet_lite0.tflite  efficientnet_lite0.tflite.json  nanodet_g.tflite
        imagenet_classes.json  manifest.json

The folder is named after the exact bytes staged, so a later job from the same machine reuses it
(nothing is copied twice) and another machine's conversion gets its own folder. ``manifest.json``
is written last: a folder with a manifest is complete. The workers then read ``gs://`` paths,
and each record's ``model.version`` is the recipe version read from that manifest, as on the
driver (:func:`transforms.score.handlers.model_version_id`).
"""
import hashlib
import json
import os
from typing import Dict

from apache_beam.io.filesystems import FileSystems

from transforms.score import pretrained

STAGING_FOLDER = "activebeam-models"
#: Files copied, the manifest last.
STAGED_FILES = (pretrained.BACKBONE_FILE, pretrained.BACKBONE_FILE + ".json", pretrained.DETECTOR_FILE,
                pretrained.DETECTOR_INT8_FILE, pretrained.IMAGENET_CLASSES_FILE, pretrained.MANIFEST_FILE)


def staged_folder(location: str, models_dir: str) -> str:
    """Where :func:`stage_default_models` puts the models of ``models_dir`` under ``location``.

    Raises
    ------
    pretrained.DefaultModelsMissing
        When ``models_dir`` holds no readable ``manifest.json``.
    """
    try:
        with open(os.path.join(models_dir, pretrained.MANIFEST_FILE), encoding="utf-8") as f:
            digests = json.load(f)["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise pretrained.DefaultModelsMissing(
            f"{models_dir} has no readable {pretrained.MANIFEST_FILE} ({e}): run "
            f"`python -m transforms.score.pretrained.convert`") from None
    key = hashlib.sha256(json.dumps(digests, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    return FileSystems.join(location.rstrip("/"), STAGING_FOLDER, key)


def stage_default_models(location: str, models_dir: str = None) -> Dict[str, str]:
    """Copies the default models to ``location`` (any Beam filesystem) unless already there.

    Parameters
    ----------
    location : str
        The job's staging or temp location, e.g. ``gs://bucket/tmp``.
    models_dir : str, optional
        Where the converted models are (default :func:`pretrained.models_dir`).

    Returns
    -------
    dict
        Local path -> staged path of each model file (the backbone and both detectors), to pass
        as the job's model and detector.

    Raises
    ------
    pretrained.DefaultModelsMissing
        When a converted file is missing.
    OSError
        When the location cannot be written (Beam's filesystem errors are ``IOError``).
    """
    models_dir = models_dir or pretrained.models_dir()
    missing = [n for n in STAGED_FILES if not os.path.isfile(os.path.join(models_dir, n))]
    if missing:
        raise pretrained.DefaultModelsMissing(
            f"{models_dir} lacks {', '.join(missing)}: run `python -m transforms.score.pretrained.convert`")
    folder = staged_folder(location, models_dir)
    if not FileSystems.exists(FileSystems.join(folder, pretrained.MANIFEST_FILE)):
        for name in STAGED_FILES:
            with open(os.path.join(models_dir, name), "rb") as source:
                with FileSystems.create(FileSystems.join(folder, name)) as target:
                    for chunk in iter(lambda: source.read(1 << 22), b""):
                        target.write(chunk)
    return {os.path.join(models_dir, name): FileSystems.join(folder, name)
            for name in (pretrained.BACKBONE_FILE, pretrained.DETECTOR_FILE, pretrained.DETECTOR_INT8_FILE)}
