"""Training sets from accepted labels: deterministic splits, COCO detection files, class manifests.

Pure functions over accepted labels (dicts with ``frame_id``, ``image`` (path of the picture),
``image_width``, ``image_height``, ``width``, ``height`` (the frame's decoded size, where boxes
live), ``label``, ``boxes``)::

    split_of("7d67...", val_fraction=0.2)        # "train" or "val", the same on every run
    coco = coco_document(labels, classes)        # {"images", "annotations", "categories", "info"}

* The split of a frame is ``val`` when ``sha256("activebeam-split" NUL frame_id)`` read as a
  number in [0, 1) is below ``val_fraction``: a frame keeps its split when labels are added, so a
  validation frame never leaks into a later training set.
* COCO: the object-detection format of Lin et al., "Microsoft COCO: Common Objects in Context",
  ECCV 2014 (https://cocodataset.org/#format-data): ``bbox`` is ``[x, y, width, height]`` in
  pixels of the image file, ``category_id`` 1-based in ``classes`` order, ``area`` = w * h,
  ``iscrowd`` 0; image and annotation ids are 1-based in ``frame_id`` order (stable for a given
  set of labels).
"""
import hashlib
from typing import Dict, Iterable, List, Sequence

SPLIT_SALT = "activebeam-split"
TRAIN, VAL = "train", "val"


def split_of(frame_id: str, val_fraction: float) -> str:
    """``val`` or ``train`` for a frame, by a hash of its id (see the module docstring).

    Raises
    ------
    ValueError
        If ``val_fraction`` is outside [0, 1).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    digest = hashlib.sha256(f"{SPLIT_SALT}\0{frame_id}".encode("utf-8")).hexdigest()
    return VAL if int(digest[:13], 16) / float(16 ** 13) < val_fraction else TRAIN


def _scaled(box: Sequence[float], sx: float, sy: float) -> List[float]:
    x1, y1, x2, y2 = box
    return [x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy]


def coco_document(labels: Iterable[dict], classes: Sequence[str], description: str = "activebeam") -> dict:
    """A COCO detection document of accepted labels (one image per label entry).

    Parameters
    ----------
    labels : iterable of dict
        Accepted labels (see the module docstring); ``boxes`` in pixels of ``width`` x ``height``,
        written in pixels of the image file ``image_width`` x ``image_height``.
    classes : sequence of str
        Category names; ``category_id`` is the 1-based position.

    Returns
    -------
    dict
        ``{"info", "images", "annotations", "categories"}``.

    Raises
    ------
    ValueError
        If a box's label is not in ``classes``.
    """
    category = {name: i + 1 for i, name in enumerate(classes)}
    images, annotations = [], []
    for image_id, label in enumerate(sorted(labels, key=lambda l: l["frame_id"]), start=1):
        iw, ih = int(label["image_width"]), int(label["image_height"])
        sx, sy = iw / float(label["width"]), ih / float(label["height"])
        images.append({"id": image_id, "file_name": label["image"], "width": iw, "height": ih,
                       "frame_id": label["frame_id"], "source_uri": label.get("source_uri"),
                       "frame_index": label.get("frame_index")})
        for box in label.get("boxes") or ():
            if box["label"] not in category:
                raise ValueError(f"box label {box['label']!r} of frame {label['frame_id']} is not in the classes")
            x, y, w, h = (round(v, 2) for v in _scaled(box["box"], sx, sy))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": category[box["label"]], "bbox": [x, y, w, h],
                                "area": round(w * h, 2), "iscrowd": 0})
    return {"info": {"description": description, "version": "1.0"},
            "images": images, "annotations": annotations,
            "categories": [{"id": i, "name": name, "supercategory": "object"} for name, i in category.items()]}


def manifest_rows(labels: Iterable[dict], val_fraction: float) -> List[Dict[str, str]]:
    """Classification manifest rows ``{frame_id, split, label, image, source_uri, frame_index}``
    in ``(split, label, frame_id)`` order."""
    rows = [{"frame_id": l["frame_id"], "split": split_of(l["frame_id"], val_fraction), "label": l["label"],
             "image": l["image"], "source_uri": l.get("source_uri", ""), "frame_index": str(l.get("frame_index", 0))}
            for l in labels]
    return sorted(rows, key=lambda r: (r["split"], r["label"], r["frame_id"]))
