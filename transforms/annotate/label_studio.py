"""Label Studio's formats, without a server: labelling configs, tasks, pre-annotations, results.

Pure functions (no Beam, no network) that turn activebeam's frames into what Label Studio
imports, and what annotators give back into activebeam's annotation rows::

    config = label_config("detection", ["person", "car"])           # <View>...<RectangleLabels>
    task = make_task(frame, image_url, "detection", selection_id)     # {"data": ..., "predictions": [...]}
    parsed = parse_result(annotation["result"], "detection", 640, 480, classes)
    parsed.boxes   # [{"label": "person", "box": [x1, y1, x2, y2]}] in pixels of the 640x480 frame

Coordinates: activebeam boxes are ``[x1, y1, x2, y2]`` in pixels of the decoded frame (the
``width`` x ``height`` of its frame document); Label Studio's rectangles are ``x, y, width,
height`` in percent of the image (so the picture Label Studio shows may have another resolution).

Reference: Label Studio's documentation, "Import pre-annotated data" and the ``Choices`` /
``RectangleLabels`` control tags (https://labelstud.io/guide/predictions,
https://labelstud.io/tags/rectanglelabels); the task and annotation JSON are those of
``label-studio`` 1.23 (``GET /api/tasks?fields=all``, ``/api/projects/{id}/export?exportType=JSON``).
"""
import datetime
import hashlib
import json
import os
import urllib.parse
from typing import List, NamedTuple, Optional, Sequence
from xml.sax.saxutils import quoteattr

from schemas.records import box_corners

CLASSIFICATION = "classification"
DETECTION = "detection"
TASK_KINDS = (CLASSIFICATION, DETECTION)
#: Names of the control and object tags in every config activebeam writes.
FROM_NAME, TO_NAME = "label", "image"
#: Result types that Label Studio writes for the two kinds of task.
RESULT_TYPES = {CLASSIFICATION: "choices", DETECTION: "rectanglelabels"}


def check_kind(kind: str) -> str:
    """``kind`` if it is one of :data:`TASK_KINDS`, else ``ValueError`` naming the allowed kinds."""
    if kind not in TASK_KINDS:
        raise ValueError(f"task kind must be one of {TASK_KINDS}, got {kind!r}")
    return kind


def label_config(kind: str, classes: Sequence[str]) -> str:
    """The Label Studio labelling config (XML) of a task kind over ``classes``.

    Parameters
    ----------
    kind : str
        ``classification`` (one ``Choice`` per class, single choice) or ``detection``
        (``RectangleLabels``, one ``Label`` per class).
    classes : sequence of str
        Class names, non-empty, distinct, in the model's class order.

    Returns
    -------
    str
        The ``<View>`` config; its image is ``$image`` and its control is named ``label``.

    Raises
    ------
    ValueError
        On an unknown kind, no classes, or repeated class names.
    """
    check_kind(kind)
    classes = [str(c) for c in classes]
    if not classes:
        raise ValueError("classes must not be empty")
    if len(set(classes)) != len(classes):
        raise ValueError(f"class names must be distinct, got {classes}")
    if kind == CLASSIFICATION:
        items = "".join(f"    <Choice value={quoteattr(c)}/>\n" for c in classes)
        control = (f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" showInLine="true">\n'
                   f"{items}  </Choices>\n")
    else:
        items = "".join(f"    <Label value={quoteattr(c)}/>\n" for c in classes)
        control = f'  <RectangleLabels name="{FROM_NAME}" toName="{TO_NAME}">\n{items}  </RectangleLabels>\n'
    return f'<View>\n  <Image name="{TO_NAME}" value="$image"/>\n{control}</View>\n'


def box_to_percent(box: Sequence[float], width: int, height: int) -> dict:
    """Pixel box ``[x1, y1, x2, y2]`` of a ``width`` x ``height`` frame as Label Studio's
    ``{x, y, width, height, rotation}`` in percent of the image (clipped to the image)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    x1, x2 = sorted((min(max(x1, 0.0), width), min(max(x2, 0.0), width)))
    y1, y2 = sorted((min(max(y1, 0.0), height), min(max(y2, 0.0), height)))
    return {"x": 100.0 * x1 / width, "y": 100.0 * y1 / height,
            "width": 100.0 * (x2 - x1) / width, "height": 100.0 * (y2 - y1) / height, "rotation": 0}


def percent_to_box(value: dict, width: int, height: int) -> List[float]:
    """Label Studio's ``{x, y, width, height}`` (percent) as a pixel box ``[x1, y1, x2, y2]`` of a
    ``width`` x ``height`` frame.

    Raises
    ------
    ValueError
        If a coordinate is missing or not a number, the rectangle is rotated, empty, or not
        inside the image (0..100 %, with 0.5 % of slack for rounding).
    """
    try:
        x, y, w, h = (float(value[k]) for k in ("x", "y", "width", "height"))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"rectangle without numeric x, y, width, height: {value!r:.120}") from e
    if float(value.get("rotation") or 0) != 0:
        raise ValueError(f"rotated rectangles are not supported (rotation {value.get('rotation')})")
    if w <= 0 or h <= 0:
        raise ValueError(f"empty rectangle (width {w} %, height {h} %)")
    slack = 0.5
    if x < -slack or y < -slack or x + w > 100 + slack or y + h > 100 + slack:
        raise ValueError(f"rectangle outside the image: x={x}, y={y}, width={w}, height={h} (percent)")
    clip = lambda v: min(max(v, 0.0), 100.0)  # noqa: E731
    return [clip(x) * width / 100.0, clip(y) * height / 100.0,
            clip(x + w) * width / 100.0, clip(y + h) * height / 100.0]


def class_name(classes: Sequence[str], index: Optional[int]) -> Optional[str]:
    """Name of class ``index`` (``None`` when out of range or ``None``)."""
    if index is None or not 0 <= int(index) < len(classes):
        return None
    return str(classes[int(index)])


def prediction(frame: dict, kind: str, classes: Sequence[str]) -> Optional[dict]:
    """The model's pre-annotation of a frame document, in Label Studio's ``predictions`` form.

    Detection (``kind == "detection"``): one ``rectanglelabels`` result per entry of the frame's
    ``detections`` (``{label, score, box: {x1, y1, x2, y2}}``, pixels of ``width`` x ``height``), the prediction's
    score their mean. Classification: one ``choices`` result with the name of
    ``predicted_class``, scored by its probability (``probabilities[predicted_class]`` when stored,
    else ``1 - least_confidence``).

    Returns
    -------
    dict or None
        ``{"model_version", "score", "result": [...]}``, or ``None`` when the frame carries no
        usable prediction (no detections for detection; no known class for classification).
    """
    check_kind(kind)
    model = frame.get("model") or {}
    version = f"{model.get('name', frame.get('model_name', 'model'))}@{model.get('version', frame.get('model_version', ''))}"
    if kind == DETECTION:
        width, height = int(frame["width"]), int(frame["height"])
        results, scores = [], []
        for det in frame.get("detections") or ():
            try:
                box = box_corners(det.get("box"))
            except ValueError:
                continue
            if det.get("label") not in classes:
                continue
            value = dict(box_to_percent(box, width, height), rectanglelabels=[str(det["label"])])
            results.append({"from_name": FROM_NAME, "to_name": TO_NAME, "type": RESULT_TYPES[DETECTION],
                            "original_width": width, "original_height": height, "value": value,
                            "score": float(det.get("score", 0.0))})
            scores.append(float(det.get("score", 0.0)))
        if not results:
            return None
        return {"model_version": version, "score": sum(scores) / len(scores), "result": results}
    name = class_name(classes, frame.get("predicted_class"))
    if name is None:
        return None
    probabilities = frame.get("probabilities") or ()
    index = int(frame["predicted_class"])
    if len(probabilities) > index:
        score = float(probabilities[index])
    else:
        score = 1.0 - float((frame.get("scores") or {}).get("least_confidence", frame.get("least_confidence", 1.0)))
    return {"model_version": version, "score": score,
            "result": [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": RESULT_TYPES[CLASSIFICATION],
                        "value": {"choices": [name]}}]}


def make_task(frame: dict, image_url: str, kind: str, classes: Sequence[str], *,
              selection_id: Optional[str], gold: bool = False, overlap: int = 1) -> dict:
    """One Label Studio task for a frame document: ``data`` (``image`` and the frame's identity,
    which :func:`parse_task` reads back) and the model's pre-annotation (if any).

    ``gold`` and ``overlap`` (annotators wanted, 1 or 2) are recorded in the data for the
    record; the gold answer itself is never sent to Label Studio.
    """
    data = {"image": image_url, "frame_id": frame["_id"] if "_id" in frame else frame["frame_id"],
            "source_uri": frame["source_uri"], "frame_index": int(frame.get("frame_index", 0)),
            "width": int(frame["width"]), "height": int(frame["height"]),
            "selection_id": selection_id, "activebeam_kind": kind, "gold": bool(gold), "overlap": int(overlap)}
    task = {"data": data}
    pred = prediction(frame, kind, classes)
    if pred is not None:
        task["predictions"] = [pred]
    return task


def local_files_url(path: str, document_root: str) -> str:
    """The URL under which Label Studio's local-files storage serves ``path`` (a file under the
    server's ``LOCAL_FILES_DOCUMENT_ROOT`` ``document_root``): ``/data/local-files/?d=<relative path>``."""
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(document_root))
    return "/data/local-files/?d=" + urllib.parse.quote(relative)


def is_gold_or_overlap(frame_id: str, fraction: float, salt: str) -> bool:
    """Deterministic Bernoulli(``fraction``) draw for a frame: ``sha256(salt NUL frame_id)`` as a
    number in [0, 1) below ``fraction`` (the same frames on every rerun)."""
    if fraction <= 0:
        return False
    digest = hashlib.sha256(f"{salt}\0{frame_id}".encode("utf-8")).hexdigest()
    return int(digest[:13], 16) / float(16 ** 13) < fraction


class ParsedResult(NamedTuple):
    """An annotation's answer: ``label`` (classification; for detection the sorted distinct box
    labels joined by ``,``, empty for "nothing to box") and ``boxes`` (detection, pixels)."""
    label: str
    boxes: List[dict]


def parse_result(result: Sequence[dict], kind: str, width: int, height: int,
                 classes: Sequence[str]) -> ParsedResult:
    """An annotation's ``result`` list as a label (and boxes), checked against the classes.

    Parameters
    ----------
    result : list of dict
        Label Studio's regions (``type`` ``choices`` or ``rectanglelabels`` of the ``label``
        control); others are ignored.
    kind : str
        The task kind.
    width, height : int
        The frame's decoded size in pixels (boxes come back in these pixels).
    classes : sequence of str
        Allowed labels.

    Raises
    ------
    ValueError
        For a classification without exactly one choice, a label not in ``classes``, or a
        malformed rectangle (see :func:`percent_to_box`).
    """
    check_kind(kind)
    if not isinstance(result, (list, tuple)):
        raise ValueError(f"result must be a list of regions, got {type(result).__name__}")
    wanted = [r for r in result if isinstance(r, dict) and r.get("type") == RESULT_TYPES[kind]
              and r.get("from_name", FROM_NAME) == FROM_NAME]  # a review task's "suspect" box is no answer
    allowed = set(classes)
    if kind == CLASSIFICATION:
        choices = [c for r in wanted for c in (r.get("value") or {}).get("choices") or ()]
        if len(choices) != 1:
            raise ValueError(f"a classification needs exactly one choice, got {choices}")
        if choices[0] not in allowed:
            raise ValueError(f"label {choices[0]!r} is not one of the project's classes")
        return ParsedResult(str(choices[0]), [])
    boxes = []
    for region in wanted:
        value = region.get("value") or {}
        labels = value.get("rectanglelabels") or ()
        if len(labels) != 1 or labels[0] not in allowed:
            raise ValueError(f"a rectangle needs one label among the project's classes, got {list(labels)}")
        boxes.append({"label": str(labels[0]), "box": [round(v, 3) for v in percent_to_box(value, width, height)]})
    return ParsedResult(",".join(sorted({b["label"] for b in boxes})), boxes)


def annotator_name(annotation: dict, users: Optional[dict] = None) -> Optional[str]:
    """Who made an annotation: the user's e-mail (``completed_by`` as an id looked up in
    ``users`` {id: email}, or as an exported user object), else ``user-<id>``; ``None`` if absent."""
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        return who.get("email") or (f"user-{who['id']}" if who.get("id") is not None else None)
    if who is None:
        return None
    return (users or {}).get(int(who)) or f"user-{who}"


def dumps(obj) -> str:
    """Compact, key-sorted JSON (the stored form of boxes and reports)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def classes_of_config(config: str) -> List[str]:
    """The class names of a labelling config written by :func:`label_config` (``Choice`` or
    ``Label`` values, in order)."""
    import xml.etree.ElementTree as ET
    root = ET.fromstring(config)
    return [node.get("value") for node in root.iter() if node.tag in ("Choice", "Label") and node.get("value")]


def kind_of_config(config: str) -> str:
    """``detection`` when the config has ``RectangleLabels``, else ``classification``."""
    return DETECTION if "<RectangleLabels" in config else CLASSIFICATION


#: The review project's second control: the suspect box, drawn in red, not a class.
SUSPECT_NAME = "suspect"
SUSPECT_LABEL = "suspect"


def review_config(kind: str, classes: Sequence[str]) -> str:
    """The labelling config of a review project: :func:`label_config` plus a header with the
    issue (``$review_note``) and, for detection, a ``suspect`` rectangle control (red) that holds
    the box cleanlab suspects; the reviewer answers with the ``label`` control as before."""
    config = label_config(kind, classes)
    extra = '  <Header value="$review_note"/>\n'
    if kind == DETECTION:
        extra += (f'  <RectangleLabels name="{SUSPECT_NAME}" toName="{TO_NAME}">\n'
                  f'    <Label value="{SUSPECT_LABEL}" background="red"/>\n  </RectangleLabels>\n')
    return config.replace(f'  <Image name="{TO_NAME}" value="$image"/>\n',
                          f'  <Image name="{TO_NAME}" value="$image"/>\n{extra}')


def _rectangle(box: Sequence[float], label: str, width: int, height: int, from_name: str = FROM_NAME) -> dict:
    return {"from_name": from_name, "to_name": TO_NAME, "type": RESULT_TYPES[DETECTION],
            "original_width": width, "original_height": height,
            "value": dict(box_to_percent(box, width, height), rectanglelabels=[str(label)])}


def make_review_task(issue: dict, image_url: str, width: int, height: int, given_boxes: Sequence[dict]) -> dict:
    """A review task for one ``label_issues`` row (:mod:`schemas.labelling`): the same picture,
    a note (issue type, the given label, quality score), and as pre-annotation the label with the
    suspect fixed the model's way.

    Classification: the model's class (``suggested_label``, else the given one) as the choice.
    Detection (``width`` x ``height`` = the decoded frame, where boxes live): the given boxes,
    with the suspect one replaced by the model's box (``swap``, ``badloc``) or the model's box
    added (``overlooked``), in the ``label`` control; the suspect box itself in the ``suspect``
    control, highlighted. ``data.frame_id`` and ``data.label_issue_id`` identify the task, so a
    rerun imports no second task for the frame; ``data.issue_type`` and ``data.type_rank`` (the
    place in that type's review queue) let a reviewer filter and sort to one queue.
    """
    kind = check_kind(issue["kind"])
    note = (f"Possible label error ({issue['issue_type']}): {issue['annotator']} gave "
            f"'{issue['label'] or 'no box'}', quality score {issue['quality_score']:.3f}")
    if issue.get("suggested_label"):
        note += f"; the model says '{issue['suggested_label']}'"
    if issue.get("type_rank"):
        note += f"; #{issue['type_rank']} of the {issue['issue_type']} queue"
    data = {"image": image_url, "frame_id": issue["frame_id"], "source_uri": issue["source_uri"],
            "frame_index": int(issue["frame_index"]), "width": int(width), "height": int(height),
            "label_issue_id": issue["label_issue_id"], "annotation_id": issue["annotation_id"],
            "issue_type": issue["issue_type"], "quality_score": float(issue["quality_score"]),
            "type_rank": issue.get("type_rank"),
            "given_label": issue["label"], "review_note": note, "activebeam_kind": kind}
    if kind == CLASSIFICATION:
        result = [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": RESULT_TYPES[CLASSIFICATION],
                   "value": {"choices": [issue.get("suggested_label") or issue["label"]]}}]
    else:
        suspect = json.loads(issue["suspect_box"]) if issue.get("suspect_box") else None
        model = json.loads(issue["model_box"]) if issue.get("model_box") else None
        boxes = [b for b in given_boxes
                 if not (suspect and issue["issue_type"] != "overlooked" and b["box"] == suspect["box"])]
        if model is not None:
            boxes.append(model)
        result = [_rectangle(b["box"], b["label"], width, height) for b in boxes]
        if suspect is not None:
            result.append(_rectangle(suspect["box"], SUSPECT_LABEL, width, height, SUSPECT_NAME))
    return {"data": data, "predictions": [{"model_version": issue["model_version"],
                                           "score": float(issue["quality_score"]), "result": result}]}


def latest_answer(task: dict, users: Optional[dict] = None) -> Optional[dict]:
    """The latest annotation of a task that was not cancelled and has an annotator (by
    ``updated_at``, then ``created_at``, then id), or ``None``."""
    answers = [a for a in task.get("annotations") or () if isinstance(a, dict) and not a.get("was_cancelled")
               and annotator_name(a, users) is not None]
    return max(answers, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id") or 0),
               default=None)


def parse_time(text) -> Optional[datetime.datetime]:
    """Label Studio's ISO 8601 time (``...Z`` or with an offset) as a naive UTC datetime; ``None``
    for an empty value, a datetime unchanged."""
    if not text:
        return None
    if isinstance(text, datetime.datetime):
        return text
    return datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00")).astimezone(
        datetime.timezone.utc).replace(tzinfo=None)
