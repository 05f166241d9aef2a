"""The labelling loop's pure parts against hand-computed values: Label Studio formats, QC maths, splits, COCO."""
import numpy as np
import pytest

from tests import harness
from transforms.annotate import dataset, label_issues, label_studio as ls, qc

CLASSES = ["person", "car"]


def test_label_configs_name_every_class_and_read_back():
    config = ls.label_config("detection", ["person", 'a "quoted" & <odd> name'])
    assert "<RectangleLabels" in config and ls.kind_of_config(config) == "detection"
    assert ls.classes_of_config(config) == ["person", 'a "quoted" & <odd> name']
    config = ls.label_config("classification", CLASSES)
    assert '<Choices name="label" toName="image" choice="single"' in config
    assert ls.classes_of_config(config) == CLASSES and ls.kind_of_config(config) == "classification"
    for bad in ((), ["a", "a"]):
        with pytest.raises(ValueError):
            ls.label_config("classification", bad)
    with pytest.raises(ValueError, match="task kind"):
        ls.label_config("segmentation", CLASSES)


def test_boxes_go_to_percent_and_back():
    # 200 x 100 frame; box x 20..120, y 10..60 -> x 10 %, y 10 %, width 50 %, height 50 %.
    value = ls.box_to_percent([20, 10, 120, 60], 200, 100)
    assert value == {"x": 10.0, "y": 10.0, "width": 50.0, "height": 50.0, "rotation": 0}
    assert ls.percent_to_box(value, 200, 100) == [20.0, 10.0, 120.0, 60.0]
    assert ls.percent_to_box(value, 400, 300) == [40.0, 30.0, 240.0, 180.0]  # another resolution
    for bad in ({"x": 10, "y": 10, "width": 0, "height": 5}, {"x": 90, "y": 0, "width": 20, "height": 5},
                {"x": 1, "y": 1, "width": 5, "height": 5, "rotation": 30}, {"x": "a", "y": 1, "width": 5, "height": 5}):
        with pytest.raises(ValueError):
            ls.percent_to_box(bad, 200, 100)


def test_predictions_carry_boxes_or_the_predicted_class():
    frame = {"_id": "f1", "source_uri": "/cam/a.jpg", "frame_index": 0, "width": 200, "height": 100,
             "model": {"name": "det", "version": "v7"}, "predicted_class": 1, "probabilities": [0.25, 0.75],
             "detections": [{"label": "car", "class_id": 1, "score": 0.9, "box": [20, 10, 120, 60]},
                            {"label": "person", "class_id": 0, "score": 0.5, "box": [0, 0, 10, 10]},
                            {"label": "bus", "class_id": 5, "score": 0.99, "box": [0, 0, 1, 1]}]}
    pred = ls.prediction(frame, "detection", CLASSES)
    assert pred["model_version"] == "det@v7" and pred["score"] == pytest.approx(0.7)
    assert [r["value"]["rectanglelabels"] for r in pred["result"]] == [["car"], ["person"]]  # bus: not a class
    assert pred["result"][0]["value"]["x"] == 10.0 and pred["result"][0]["original_width"] == 200
    pred = ls.prediction(frame, "classification", CLASSES)
    assert pred["result"][0]["value"] == {"choices": ["car"]} and pred["score"] == 0.75
    task = ls.make_task(frame, "/data/local-files/?d=x.png", "classification", CLASSES, selection_id="s1", overlap=2)
    assert task["data"]["frame_id"] == "f1" and task["data"]["overlap"] == 2 and task["predictions"] == [pred]
    assert ls.prediction(dict(frame, detections=[]), "detection", CLASSES) is None


def test_results_parse_into_labels_and_boxes():
    box = {"type": "rectanglelabels", "value": {"x": 10, "y": 10, "width": 50, "height": 50,
                                                 "rectanglelabels": ["car"]}}
    parsed = ls.parse_result([box, dict(box, value=dict(box["value"], rectanglelabels=["person"]))],
                             "detection", 200, 100, CLASSES)
    assert parsed.label == "car,person" and parsed.boxes[0] == {"label": "car", "box": [20.0, 10.0, 120.0, 60.0]}
    assert ls.parse_result([], "detection", 200, 100, CLASSES) == ls.ParsedResult("", [])
    choice = {"type": "choices", "value": {"choices": ["car"]}}
    assert ls.parse_result([choice], "classification", 1, 1, CLASSES).label == "car"
    for bad in ([], [choice, choice], [{"type": "choices", "value": {"choices": ["bus"]}}]):
        with pytest.raises(ValueError):
            ls.parse_result(bad, "classification", 1, 1, CLASSES)
    assert ls.annotator_name({"completed_by": 3}, {3: "a@x.org"}) == "a@x.org"
    assert ls.annotator_name({"completed_by": {"id": 4, "email": "b@x.org"}}) == "b@x.org"
    assert ls.annotator_name({"completed_by": 5}) == "user-5" and ls.annotator_name({}) is None


def _box(label, x1, y1, x2, y2):
    return {"label": label, "box": [x1, y1, x2, y2]}


def test_iou_and_matched_box_f1_by_hand():
    assert qc.iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert qc.iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0
    a = [_box("car", 0, 0, 10, 10), _box("car", 100, 100, 110, 110), _box("person", 50, 50, 60, 60)]
    b = [_box("car", 1, 0, 11, 10),     # IoU 90/110 = 0.818 with a[0]
         _box("car", 105, 100, 115, 110),  # IoU 1/3 with a[1]: below 0.5
         _box("car", 50, 50, 60, 60)]      # same place as a[2] but another class
    assert qc.match_boxes(a, b) == [(0, 0, pytest.approx(90 / 110))]
    assert qc.box_f1(a, b) == pytest.approx(2 * 1 / 6)
    assert qc.box_f1(a, b, iou_threshold=0.3) == pytest.approx(2 * 2 / 6)
    assert len(qc.match_boxes(a, b, same_class=False)) == 2
    assert qc.box_f1([], []) == 1.0 and qc.box_f1(a, []) == 0.0


def _ann(frame, who, label, batch="s1", lead=10.0, boxes=None):
    return {"frame_id": frame, "annotator": who, "label": label, "selection_id": batch, "lead_time_s": lead,
            "boxes": boxes or []}


def test_qc_report_by_hand():
    # f1..f4: a labels all; b labels f1 (agrees), f2 (disagrees); gold g1 (a right, b wrong), g2 (both right).
    anns = [_ann(f, "a", "cat") for f in ("f1", "f2", "f3", "f4")]
    anns += [_ann("f1", "b", "cat", lead=20), _ann("f2", "b", "dog", lead=20)]
    anns += [_ann("g1", "a", "cat"), _ann("g1", "b", "dog", lead=20), _ann("g2", "a", "dog"), _ann("g2", "b", "dog", lead=20)]
    gold = {"g1": {"label": "cat"}, "g2": {"label": "dog"}}
    report = qc.qc_report(anns, gold, "classification")
    a, b = report["annotators"]["a"], report["annotators"]["b"]
    # Pairs: f1 agree, f2 disagree, g1 disagree, g2 agree -> 2/4 for both.
    assert a["overlap_pairs"] == b["overlap_pairs"] == 4 and a["class_agreement"] == b["class_agreement"] == 0.5
    assert a["gold_accuracy"] == 1.0 and b["gold_accuracy"] == 0.5 and a["gold_answers"] == 2
    assert a["annotations"] == 6 and a["per_hour"] == pytest.approx(6 / (60 / 3600))
    assert b["annotations"] == 4 and b["per_hour"] == pytest.approx(4 / (80 / 3600))
    tasks = report["tasks"]
    assert tasks["f1"]["status"] == "accepted" and tasks["f1"]["agreement"] == 1.0
    assert tasks["f2"]["status"] == "relabel" and tasks["f2"]["reason"] == "agreement 0 below 0.5"
    assert tasks["f3"]["status"] == "accepted" and tasks["f3"]["label"] == "cat"
    assert tasks["g1"]["status"] == "gold"
    batch = report["batches"]["s1"]
    assert (batch["accepted"], batch["relabel"], batch["gold_accuracy"]) == (3, 1, 0.75)
    # b below the gold threshold: b's answers are ignored, f2 stands on a's answer alone.
    strict = qc.qc_report(anns, gold, "classification", min_gold_accuracy=0.75)
    assert strict["tasks"]["f2"]["status"] == "accepted" and strict["tasks"]["f2"]["label"] == "cat"
    assert qc.qc_report([_ann("g1", "b", "dog")], gold, "classification", min_gold_accuracy=0.75)["tasks"]["g1"]["status"] == "gold"
    only_b = qc.qc_report([_ann("g1", "b", "dog"), _ann("f9", "b", "cat")], gold, "classification")
    assert only_b["tasks"]["f9"]["status"] == "relabel"
    with pytest.raises(ValueError, match="min_agreement"):
        qc.qc_report(anns, gold, min_agreement=1.5)
    rows = qc.report_rows(report, "p", "q1")
    assert {(r["scope"], r["name"]) for r in rows} == {("annotator", "a"), ("annotator", "b"), ("batch", "s1")}


def test_detection_qc_uses_box_f1():
    car = _box("car", 0, 0, 10, 10)
    anns = [_ann("f1", "a", "car", boxes=[car]), _ann("f1", "b", "car", boxes=[_box("car", 1, 0, 11, 10)]),
            _ann("f2", "a", "car", boxes=[car]), _ann("f2", "b", "car", boxes=[_box("car", 6, 0, 16, 10)])]
    report = qc.qc_report(anns, {}, "detection")
    assert report["annotators"]["a"]["box_f1"] == 0.5 and report["annotators"]["a"]["class_agreement"] == 1.0
    assert report["tasks"]["f1"]["status"] == "accepted" and report["tasks"]["f2"]["status"] == "relabel"


def test_splits_are_deterministic_and_near_the_fraction():
    ids = [f"frame-{i}" for i in range(2000)]
    splits = [dataset.split_of(i, 0.2) for i in ids]
    assert splits == [dataset.split_of(i, 0.2) for i in ids]
    assert 0.17 < splits.count("val") / len(ids) < 0.23
    assert all(dataset.split_of(i, 0.0) == "train" for i in ids[:50])
    with pytest.raises(ValueError, match="val_fraction"):
        dataset.split_of("x", 1.0)


def test_coco_document_by_hand():
    labels = [{"frame_id": "b", "image": "/m/b.png", "image_width": 400, "image_height": 200, "width": 200,
               "height": 100, "label": "car", "boxes": [_box("car", 20, 10, 120, 60)]},
              {"frame_id": "a", "image": "/m/a.png", "image_width": 200, "image_height": 100, "width": 200,
               "height": 100, "label": "", "boxes": []}]
    coco = dataset.coco_document(labels, CLASSES)
    assert [i["file_name"] for i in coco["images"]] == ["/m/a.png", "/m/b.png"]
    assert coco["annotations"] == [{"id": 1, "image_id": 2, "category_id": 2, "bbox": [40.0, 20.0, 200.0, 100.0],
                                    "area": 20000.0, "iscrowd": 0}]
    assert coco["categories"][0] == {"id": 1, "name": "person", "supercategory": "object"}
    with pytest.raises(ValueError, match="bus"):
        dataset.coco_document([dict(labels[0], boxes=[_box("bus", 0, 0, 1, 1)])], CLASSES)


def test_confident_learning_flags_swapped_classes_first():
    """200 labels of 3 classes, the model right and confident on most; 6 labels swapped. cleanlab's
    self-confidence score is the model's probability of the given label (checked directly)."""
    import numpy as np
    rng = np.random.default_rng(7)
    truth = np.repeat(np.arange(3), 67)[:200]
    probs = rng.dirichlet([1.0, 1.0, 1.0], size=200) * 0.3
    probs[np.arange(200), truth] += 0.7
    labels = truth.copy()
    swapped = rng.choice(200, size=6, replace=False)
    labels[swapped] = (truth[swapped] + 1) % 3
    scored = label_issues.classification_issues(labels, probs)
    assert [s.quality for s in scored] == pytest.approx(probs[np.arange(200), labels].tolist())
    assert {i for i, s in enumerate(scored) if s.is_issue} == set(swapped.tolist())
    assert set(label_issues.ranked(scored)[:6]) == set(swapped.tolist())
    assert all(scored[i].issue_type == "swap" and scored[i].suggested_class == truth[i] for i in swapped)
    assert scored[label_issues.ranked(scored)[-1]].suggested_class is None  # the model agrees
    for bad in ((labels[:5], probs), (labels + 3, probs), (labels, probs * 2)):
        with pytest.raises(ValueError):
            label_issues.classification_issues(*bad)


def _detection_set():
    """40 images of two objects (class 0 at the left, class 1 at the right) that a confident model
    finds; image 3's class-1 box is labelled class 0 (swap), image 5 lacks its class-0 box
    (overlooked), image 8's class-0 box is shifted by three quarters of its width (badloc)."""
    left, right = [10.0, 10.0, 50.0, 50.0], [60.0, 60.0, 90.0, 90.0]
    given = [[(0, list(left)), (1, list(right))] for _ in range(40)]
    predicted = [[(0, list(left), 0.99), (1, list(right), 0.98), (1, [0.0, 70.0, 8.0, 78.0], 0.2)]
                 for _ in range(40)]
    given[3][1] = (0, list(right))
    given[5] = [(1, list(right))]
    given[8][0] = (0, [40.0, 10.0, 80.0, 50.0])
    return given, predicted


def test_objectlab_finds_swapped_missing_and_shifted_boxes():
    given, predicted = _detection_set()
    scored = label_issues.detection_issues(given, predicted, 2)
    assert {i for i, s in enumerate(scored) if s.is_issue} == {3, 5, 8}
    assert set(label_issues.ranked(scored)[:3]) == {3, 5, 8}
    swap, missing, shifted = scored[3], scored[5], scored[8]
    assert swap.issue_type == "swap" and swap.suspect_box == (0, [60.0, 60.0, 90.0, 90.0])
    assert swap.suggested_class == 1 and swap.model_box[:2] == (1, [60.0, 60.0, 90.0, 90.0])
    assert missing.issue_type == "overlooked" and missing.suspect_box == (0, [10.0, 10.0, 50.0, 50.0])
    assert shifted.issue_type == "badloc" and shifted.suspect_box == (0, [40.0, 10.0, 80.0, 50.0])
    assert shifted.model_box == (0, [10.0, 10.0, 50.0, 50.0], 0.99) and shifted.suggested_class is None
    assert all(0.0 <= s.quality <= 1.0 for s in scored)
    with pytest.raises(ValueError, match="outside"):
        label_issues.detection_issues([[(2, [0, 0, 1, 1])]], [[]], 2)
    with pytest.raises(ValueError, match="confidence"):
        label_issues.detection_issues([[]], [[(0, [0, 0, 1, 1], 1.5)]], 2)
    with pytest.raises(ValueError, match="one entry per annotation"):
        label_issues.detection_issues([[]], [], 2)


def test_review_queues_by_issue_type_order_each_type_by_its_own_score():
    """Every annotation is in exactly one queue, its issue type's, ordered by that type's pooled
    score, not by the overall quality: below, the overall ranking puts the shifted box (c) first
    and the weak swap (a) before the clear one (b); the swap queue puts b first."""
    given, predicted = _detection_set()
    scored = label_issues.detection_issues(given, predicted, 2)
    queues = label_issues.ranked_by_type(scored)
    assert sorted(i for q in queues.values() for i in q) == list(range(len(scored)))
    for t, queue in queues.items():
        assert all(scored[i].issue_type == t for i in queue)
        scores = [scored[i].subtype_scores[t] for i in queue]
        assert scores == sorted(scores) and scores == [label_issues.type_score(scored[i]) for i in queue]
    assert (queues["swap"][0], queues["overlooked"][0], queues["badloc"][0]) == (3, 5, 8)
    a = label_issues.ScoredLabel(0.10, True, "swap", {"swap": 0.30, "overlooked": 0.9, "badloc": 0.8})
    b = label_issues.ScoredLabel(0.20, True, "swap", {"swap": 0.05, "overlooked": 0.9, "badloc": 0.9})
    c = label_issues.ScoredLabel(0.05, True, "badloc", {"swap": 0.9, "overlooked": 0.9, "badloc": 0.02})
    assert label_issues.ranked([a, b, c]) == [2, 0, 1]
    assert label_issues.ranked_by_type([a, b, c]) == {"swap": [1, 0], "overlooked": [], "badloc": [2]}
    # Classification: one type, scored by quality: the queue is the overall ranking.
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    plain = label_issues.classification_issues([0, 0, 1, 1], probs)
    assert label_issues.ranked_by_type(plain)["swap"] == label_issues.ranked(plain)


def test_review_queue_picks_the_flagged_rows_overall_or_per_type():
    rows = [{"id": n, "is_issue": flagged, "issue_type": t, "rank": rank, "type_rank": type_rank}
            for n, (flagged, t, rank, type_rank) in enumerate([
                (True, "badloc", 1, 1), (True, "swap", 2, 2), (False, "swap", 3, 3), (True, "swap", 4, 1),
                (True, "overlooked", 5, 1), (True, "badloc", 6, 2)])]
    ids = lambda picked: [r["id"] for r in picked]  # noqa: E731
    assert ids(label_issues.review_queue(rows, 3)) == [0, 1, 3]
    assert ids(label_issues.review_queue(rows, 10, ())) == [0, 1, 3, 4, 5]
    # Per type: the budget is per queue, queues in the order asked, each by type_rank; unflagged never.
    assert ids(label_issues.review_queue(rows, 1, ("swap", "overlooked"))) == [3, 4]
    assert ids(label_issues.review_queue(rows, 5, ("badloc", "swap", "badloc"))) == [0, 5, 3, 1]
    assert label_issues.review_queue(rows, 0, ("swap",)) == []
    with pytest.raises(ValueError, match="among swap, overlooked, badloc"):
        label_issues.review_queue(rows, 1, ("swap", "bogus"))
    with pytest.raises(ValueError, match="budget"):
        label_issues.review_queue(rows, -1)


def test_objectlab_trusts_a_detector_as_confident_as_it_is_where_annotators_agree():
    """A detector that scores right boxes 0.62-0.80 (as NanoDet-g does), never 0.95: with cleanlab's
    default threshold (0.95) no predicted box is confident, so the swapped and the missing box are
    invisible; the threshold calibrated on the agreeing boxes (their 5th percentile) finds both."""
    given, predicted = _detection_set()
    rng = np.random.default_rng(0)
    predicted = [[(c, box, float(rng.uniform(0.62, 0.8)) if score > 0.5 else score) for c, box, score in p]
                 for p in predicted]
    unmatched = {(3, 1), (5, 0), (8, 0)}  # (image, class) of the model boxes no given box agrees with
    agreeing = [score for i, p in enumerate(predicted) for c, box, score in p
                if score > 0.5 and (i, c) not in unmatched]
    threshold = label_issues.confident_threshold(given, predicted)
    assert threshold == pytest.approx(np.quantile(agreeing, 0.05))
    assert 0.62 <= threshold < 0.65
    default = label_issues.detection_issues(given, predicted, 2, high_probability_threshold=0.95)
    calibrated = label_issues.detection_issues(given, predicted, 2)
    assert default[3].subtype_scores["swap"] > 0.9 and default[5].subtype_scores["overlooked"] > 0.9
    assert calibrated[3].subtype_scores["swap"] < 0.5 and calibrated[5].subtype_scores["overlooked"] < 0.5
    assert calibrated[3].issue_type == "swap" and calibrated[5].issue_type == "overlooked"
    assert set(label_issues.ranked(calibrated)[:3]) == {3, 5, 8}
    assert not set(label_issues.ranked(default)[:3]) >= {3, 5}
    # Too few agreeing boxes to calibrate on: cleanlab's default.
    assert label_issues.confident_threshold(given[:5], predicted[:5]) == 0.95


def test_review_tasks_highlight_the_suspect_box_and_pre_annotate_the_fix():
    config = ls.review_config("detection", CLASSES)
    assert '<RectangleLabels name="suspect" toName="image">' in config and '<Header value="$review_note"/>' in config
    assert ls.kind_of_config(config) == "detection"
    issue = {"kind": "detection", "issue_type": "swap", "annotator": "a@x.org", "label": "person",
             "quality_score": 0.012, "suggested_label": "car", "frame_id": "f1", "source_uri": "/c/a.mp4",
             "frame_index": 4, "label_issue_id": "i1", "annotation_id": "a1", "model_version": "det@v1",
             "suspect_box": '{"box":[20,10,120,60],"label":"person"}',
             "model_box": '{"box":[22,10,120,60],"label":"car","score":0.97}'}
    given = [{"label": "person", "box": [20, 10, 120, 60]}, {"label": "person", "box": [0, 0, 10, 10]}]
    task = ls.make_review_task(issue, "/data/local-files/?d=m/f1.png", 200, 100, given)
    assert task["data"]["label_issue_id"] == "i1" and "(swap)" in task["data"]["review_note"]
    assert task["data"]["type_rank"] is None and "queue" not in task["data"]["review_note"]
    queued = ls.make_review_task(dict(issue, type_rank=3), "u", 200, 100, given)["data"]
    assert queued["type_rank"] == 3 and queued["review_note"].endswith("; #3 of the swap queue")
    result = task["predictions"][0]["result"]
    labels = [(r["from_name"], r["value"]["rectanglelabels"][0], r["value"]["x"]) for r in result]
    assert labels == [("label", "person", 0.0), ("label", "car", 11.0), ("suspect", "suspect", 10.0)]
    overlooked = dict(issue, issue_type="overlooked", suspect_box='{"box":[22,10,120,60],"label":"car"}')
    result = ls.make_review_task(overlooked, "u", 200, 100, given)["predictions"][0]["result"]
    assert [r["value"]["rectanglelabels"][0] for r in result] == ["person", "person", "car", "suspect"]
    choice = ls.make_review_task(dict(issue, kind="classification", suspect_box=None, model_box=None), "u", 28, 28, [])
    assert choice["predictions"][0]["result"][0]["value"] == {"choices": ["car"]}
    assert ls.local_files_url("/root/m/a b.png", "/root") == "/data/local-files/?d=m/a%20b.png"


def test_label_issue_options_are_checked_before_any_server():
    from apache_beam.options.pipeline_options import PipelineOptions
    from beam_pipelines.annotate.options import check_options
    from beam_pipelines.cli.preflight import OptionError
    with pytest.raises(OptionError, match="--review_budget must be >= 0"):
        check_options("qc", PipelineOptions(["--label_issues", "--review_budget", "-1"]))
    with pytest.raises(ValueError, match="--bigquery_label_issues_table needs --label_issues"):
        check_options("qc", PipelineOptions(["--bigquery_label_issues_table", "p:d.t"]))
    assert check_options("qc", PipelineOptions(["--label_issues", "--review_budget", "0"])).command == "qc"
    with pytest.raises(ValueError, match="--review_issue_types needs --label_issues"):
        check_options("qc", PipelineOptions(["--review_issue_types", "swap"]))
    for bad in ("swap,wrong_box", ",", ""):
        with pytest.raises(ValueError, match="--review_issue_types must list issue types among swap, overlooked"):
            check_options("qc", PipelineOptions(["--label_issues", f"--review_issue_types={bad}"]))
    job = check_options("qc", PipelineOptions(["--label_issues", "--review_issue_types", "overlooked, swap,overlooked"]))
    assert job.review_issue_types == ("overlooked", "swap")
    assert check_options("qc", PipelineOptions(["--label_issues"])).review_issue_types == ()


if __name__ == "__main__":
    harness.main(__file__)


def test_annotate_help_lists_the_options_it_shares_with_mine(capsys):
    from beam_pipelines import annotate
    annotate.main(["--help"])
    text = capsys.readouterr().out
    shared = text[text.index("shared with mine:"):]
    for flag in annotate.SHARED_OPTIONS:
        assert f"{flag} " in shared, flag
    assert "MongoDB connection string" in shared and "--selection_id" in text
