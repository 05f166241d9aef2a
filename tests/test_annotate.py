"""The labelling loop against a real Label Studio and a real mongod: export a real selection with
pre-annotations, annotators answer through Label Studio's API (two annotators on overlapping
tasks, a gold task answered wrongly, a malformed and an orphaned annotation), import, QC checked
against hand-computed figures, the next selection skips what was sent, a training set (COCO read
back with pycocotools), a retraining trigger; every step rerun duplicates nothing.

The tests run in file order and share one server of each kind (module fixtures).
"""
import csv
import json
import os
import shutil

import apache_beam as beam
import pymongo
import pytest

from tests import harness
from beam_pipelines import annotate, mine, stats
from beam_pipelines.local.label_studio import LocalLabelStudio
from beam_pipelines.local.sample_media import CLASS_NAMES
from transforms.annotate import dataset as dataset_lib
from transforms.annotate.client import LabelStudioClient

N_PNG = 12
BUDGET = 8
PROJECT = "cams"
ANN1, ANN2, ANN3 = "ann1@vendor.example", "ann2@vendor.example", "ann3@vendor.example"


def _choice(label):
    return [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]


@pytest.fixture(scope="module")
def loop():
    """mongod, Label Studio (document root = the output folder), 12 Fashion-MNIST PNGs and cup.mp4,
    and a first `mine` selection of 8 frames."""
    root = harness.tmpdir("annotate-")
    media = os.path.join(root, "in")
    os.makedirs(media)
    truth = {}
    with open(harness.media("fashion-mnist", "labels.csv")) as f:
        for row in csv.DictReader(f):
            truth[row["file"]] = row["class_name"]
    for i in range(N_PNG):
        shutil.copy(harness.media("fashion-mnist", f"t10k-{i:05d}.png"), media)
    shutil.copy(harness.media("cup.mp4"), media)
    with harness.mongod() as mongo, LocalLabelStudio(os.path.join(root, "ls-data"), document_root=root) as server:
        argv = [f"--input={media}/*", f"--output_dir={root}/mine1", f"--mongo_uri={mongo.uri}",
                f"--budget={BUDGET}", "--uniqueness_k=0", "--quiet"]
        mine.run(argv)
        with open(os.path.join(root, "mine1", "candidates.jsonl")) as f:
            first = [json.loads(line) for line in f]
        common = ["--mongo_uri", mongo.uri, "--label_studio_url", server.url, "--label_studio_api_key",
                  server.api_key, "--label_studio_document_root", root, "--output_dir", os.path.join(root, "ann"),
                  "--label_studio_project", PROJECT]
        yield {"root": root, "mongo": mongo, "server": server, "first": first, "truth": truth, "common": common,
               "db": pymongo.MongoClient(mongo.uri)["activebeam"],
               "client": LabelStudioClient(server.url, server.api_key), "argv": argv, "media": media}


def _truth_of(loop, frame):
    """The true class of a PNG frame; frames of cup.mp4 are a 'bag' for our annotators."""
    return loop["truth"].get(os.path.basename(frame["source_uri"]), "bag")


def test_export_sends_the_selection_with_pre_annotations_once(loop):
    db, client = loop["db"], loop["client"]
    selected = {c["frame_id"] for c in loop["first"]}
    # Two gold tasks: PNGs the selection did not pick, with their true Fashion-MNIST class.
    spare = [d for d in db["frames"].find({"source_uri": {"$regex": r"\.png$"}}).sort("_id", 1)
             if d["_id"] not in selected][:2]
    gold_csv = os.path.join(loop["root"], "gold.csv")
    with open(gold_csv, "w") as f:
        f.write("source_uri,frame_index,label\n")
        for d in spare:
            f.write(f"{d['source_uri']},0,{_truth_of(loop, d)}\n")
    loop["gold"] = {d["_id"]: _truth_of(loop, d) for d in spare}
    argv = ["export", "--selection_id", loop["first"][0]["selection_id"], "--overlap", "0.75", "--gold", gold_csv]
    counts = annotate.run(argv + loop["common"])
    assert counts["kind"] == "classification" and counts["classes"] == list(CLASS_NAMES)
    assert counts["tasks_in_project"] == BUDGET + 2 and counts["dead_letters"] == 0
    project = client.project_by_title(PROJECT)
    tasks = list(client.tasks(project["id"]))
    assert {t["data"]["frame_id"] for t in tasks} == selected | set(loop["gold"])
    frames = {d["_id"]: d for d in db["frames"].find({}, {"embedding": 0})}
    for task in tasks:
        frame = frames[task["data"]["frame_id"]]
        (pred,) = task["predictions"]
        assert pred["result"][0]["value"]["choices"] == [CLASS_NAMES[frame["predicted_class"]]]
        assert pred["model_version"] == f"{frame['model']['name']}@{frame['model']['version']}"
        # Label Studio serves the picture, at the frame's full resolution (video frames too).
        picture = client._session.get(client.url + task["data"]["image"])
        assert picture.status_code == 200 and picture.content[:8] == b"\x89PNG\r\n\x1a\n"
        import cv2
        import numpy as np
        decoded = cv2.imdecode(np.frombuffer(picture.content, np.uint8), cv2.IMREAD_UNCHANGED)
        assert decoded.shape[:2] == (frame["height"], frame["width"])
    assert any(frames[t["data"]["frame_id"]]["media_type"] == "video" for t in tasks)
    ledger = list(db["label_tasks"].find({"project": PROJECT}))
    assert len(ledger) == BUDGET + 2 and all(e["task_id"] for e in ledger)
    assert {e["frame_id"] for e in ledger if e["gold"]} == set(loop["gold"])
    overlap = {e["frame_id"] for e in ledger if e["overlap"] == 2 and not e["gold"]}
    assert 1 <= len(overlap) <= BUDGET
    assert {t["data"]["frame_id"] for t in tasks if t["overlap"] == 2} == overlap | set(loop["gold"])
    loop["overlap"], loop["tasks"], loop["frames"] = overlap, {t["data"]["frame_id"]: t for t in tasks}, frames
    # A second export adds nothing.
    again = annotate.run(argv + loop["common"])
    assert again["tasks_in_project"] == BUDGET + 2 and db["label_tasks"].count_documents({}) == BUDGET + 2


def test_annotators_answer_then_import_normalises_idempotently(loop):
    client, db = loop["client"], loop["db"]
    users = {}
    for email in (ANN1, ANN2, ANN3):
        users[email] = client.request("POST", "/api/users", json={
            "email": email, "username": email, "password": "vendor-pw-12345"})["id"]
    wrong = sorted(loop["overlap"])[0]  # ann2 disagrees on the first overlap task
    gold_ids = sorted(loop["gold"])
    for frame_id, task in sorted(loop["tasks"].items()):
        truth = loop["gold"].get(frame_id) or _truth_of(loop, loop["frames"][frame_id])
        other = next(c for c in CLASS_NAMES if c != truth)
        client.request("POST", f"/api/tasks/{task['id']}/annotations",
                       json={"result": _choice(truth), "completed_by": users[ANN1], "lead_time": 10.0})
        if frame_id in loop["overlap"] or frame_id in loop["gold"]:
            answer = other if frame_id in (wrong, gold_ids[0]) else truth  # gold_ids[0]: wrong gold answer
            client.request("POST", f"/api/tasks/{task['id']}/annotations",
                           json={"result": _choice(answer), "completed_by": users[ANN2], "lead_time": 20.0})
    # ann3 answers with a class the project does not have: malformed. A task that no export made: orphaned.
    some_task = loop["tasks"][sorted(set(loop["tasks"]) - set(loop["gold"]))[0]]
    client.request("POST", f"/api/tasks/{some_task['id']}/annotations",
                   json={"result": _choice("hovercraft"), "completed_by": users[ANN3], "lead_time": 5.0})
    project = client.project_by_title(PROJECT)
    client.import_tasks(project["id"], [{"data": {"image": "/data/local-files/?d=nowhere.png"},
                                         "annotations": [{"result": _choice("bag"), "completed_by": users[ANN1]}]}])
    n_overlap = len(loop["overlap"])
    expected_rows = (BUDGET + 2) + (n_overlap + 2)
    with harness.bigquery_emulator() as endpoint:  # and the BigQuery annotations table, once
        bq = harness.bigquery_client(endpoint)
        bq.create_dataset("labels")
        table = f"{harness.BIGQUERY_PROJECT}:labels.annotations"
        for _ in range(2):
            counts = annotate.run(["import", "--bigquery_annotations_table", table] + loop["common"])
            (bq_rows,) = bq.query(f"SELECT COUNT(*) AS n, COUNT(DISTINCT annotation_id) AS ids "
                                  f"FROM `{harness.BIGQUERY_PROJECT}.labels.annotations`").result()
            assert (bq_rows["n"], bq_rows["ids"]) == (expected_rows, expected_rows)
    assert counts["annotations"] == expected_rows and counts["frames_labelled"] == BUDGET + 2
    assert counts["dead_letters"] == 2
    with open(os.path.join(loop["root"], "ann", annotate.DEAD_LETTER_FILE)) as f:
        dead = [json.loads(line) for line in f]
    assert sorted(d["error"].split(":")[0] for d in dead) == ["malformed", "orphaned"]
    assert all(d["stage"] == "label_import" for d in dead)
    row = db["annotations"].find_one({"frame_id": wrong, "annotator": ANN2})
    assert row["label"] != row.get("label_index") and row["label"] in CLASS_NAMES
    assert row["selection_id"] == loop["first"][0]["selection_id"] and row["lead_time_s"] == 20.0
    assert row["model_version"].startswith("fashion_mnist_cnn@") and row["label_task_id"] == loop["tasks"][wrong]["id"]
    # Rerun from a Label Studio JSON export file: the same rows, nothing added.
    export_file = os.path.join(loop["root"], "ls-export.json")
    with open(export_file, "w") as f:
        json.dump(client.export(project["id"]), f)
    assert annotate.run(["import", "--export_file", export_file] + loop["common"])["annotations"] == expected_rows
    assert db["annotations"].count_documents({}) == expected_rows
    loop["wrong"] = wrong


def test_qc_figures_equal_hand_computed_values_and_failures_go_back(loop):
    db, client = loop["db"], loop["client"]
    k = len(loop["overlap"])
    report = annotate.run(["qc"] + loop["common"])
    a1, a2 = report["annotators"][ANN1], report["annotators"][ANN2]
    # Pairs: k overlap tasks (one disagreement) + 2 gold tasks (one disagreement).
    assert a1["overlap_pairs"] == a2["overlap_pairs"] == k + 2
    assert a1["class_agreement"] == pytest.approx(k / (k + 2)) == a2["class_agreement"]
    assert (a1["gold_answers"], a1["gold_accuracy"]) == (2, 1.0)
    assert (a2["gold_answers"], a2["gold_accuracy"]) == (2, 0.5)  # one gold task answered wrongly
    assert a1["annotations"] == BUDGET + 2 and a1["per_hour"] == pytest.approx(360.0)  # 10 s each
    assert a2["annotations"] == k + 2 and a2["per_hour"] == pytest.approx(180.0)  # 20 s each
    assert (report["accepted"], report["relabel"], report["gold"]) == (BUDGET - 1, 1, 2)
    batch = report["batches"][loop["first"][0]["selection_id"]]
    assert batch["gold_accuracy"] == 0.75 and batch["annotations"] == BUDGET + 2 + k + 2
    ledger = {e["frame_id"]: e for e in db["label_tasks"].find({"project": PROJECT})}
    assert ledger[loop["wrong"]]["status"] == "relabel"
    assert client.request("GET", f"/api/tasks/{loop['tasks'][loop['wrong']]['id']}")["overlap"] == 3
    accepted = [e for e in ledger.values() if e["status"] == "accepted"]
    assert all(e["accepted_label"] == _truth_of(loop, loop["frames"][e["frame_id"]]) for e in accepted)
    with open(report["report"]) as f:
        assert json.load(f)["qc_id"] == report["qc_id"]
    # Rerun: same QC id, same rows.
    rows = db["qc_reports"].count_documents({})
    assert rows == 3 and annotate.run(["qc"] + loop["common"])["qc_id"] == report["qc_id"]
    assert db["qc_reports"].count_documents({}) == rows
    # stats: the funnel and the QC table.
    reports = stats.mongo_stats(loop["mongo"].uri)
    assert reports["labelling_funnel"] == [{"selection_id": loop["first"][0]["selection_id"], "selected": BUDGET,
                                            "exported": BUDGET, "labelled": BUDGET, "accepted": BUDGET - 1,
                                            "relabel": 1}]
    assert {(r["scope"], r["name"]) for r in reports["qc_per_annotator"]} == {
        ("annotator", ANN1), ("annotator", ANN2), ("batch", loop["first"][0]["selection_id"])}


def test_label_issues_score_every_answer_against_the_model_and_go_to_review(loop):
    """qc --label_issues on the real annotations: one label_issues row per scorable answer whose
    score is the model's probability of the given class (cleanlab's self-confidence), ranked;
    the flagged ones become review tasks once, however often qc runs."""
    db, client = loop["db"], loop["client"]
    argv = ["qc", "--label_issues", "--review_budget", "3", "--no_relabel"] + loop["common"]
    section = annotate.run(argv)["label_issues"]
    rows = list(db["label_issues"].find({"project": PROJECT}).sort("rank", 1))
    answers = list(db["annotations"].find({"label_project": PROJECT}))
    assert section["scored"] == len(rows) == len(answers) and section["unscorable"] == 0
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    assert [r["quality_score"] for r in rows] == sorted(r["quality_score"] for r in rows)
    by_answer = {a["_id"]: a for a in answers}
    for r in rows:
        frame = loop["frames"][r["frame_id"]]
        assert r["quality_score"] == pytest.approx(frame["probabilities"][CLASS_NAMES.index(r["label"])], abs=1e-6)
        assert r["annotator"] == by_answer[r["annotation_id"]]["annotator"] and r["issue_type"] == "swap"
        argmax = CLASS_NAMES[max(range(10), key=lambda k: frame["probabilities"][k])]
        assert r["suggested_label"] == (argmax if argmax != r["label"] else None)
        assert r["method"].endswith("(cleanlab 2.9.0)") and r["model_version"].startswith("fashion_mnist_cnn@")
        # One issue type, scored by quality: its review queue is the overall ranking.
        assert (r["type_rank"], r["type_score"]) == (r["rank"], r["quality_score"])
    flagged = [r for r in rows if r["is_issue"]]
    assert section["flagged"] == len(flagged) >= 1 and section["flagged_by_type"]["swap"] == len(flagged)
    # A box issue type for a classification project is an option error, before anything runs.
    from beam_pipelines.cli.preflight import OptionError
    with pytest.raises(OptionError, match=r"^--review_issue_types overlooked: project .* labels classes, whose "
                                          r"only label issue type is swap \(a wrong class\); overlooked and badloc"):
        annotate.run(argv + ["--review_issue_types", "swap,overlooked"])
    assert db["label_issues"].count_documents({"project": PROJECT}) == len(rows)
    # The flags are cleanlab's confident learning on the same labels and stored probabilities.
    from cleanlab.filter import find_label_issues
    import numpy as np
    expected_flags = find_label_issues(np.array([CLASS_NAMES.index(r["label"]) for r in rows]),
                                       np.array([loop["frames"][r["frame_id"]]["probabilities"] for r in rows]),
                                       filter_by="prune_by_noise_rate")
    assert [r["is_issue"] for r in rows] == expected_flags.tolist()
    # Review tasks: the worst flagged (at most --review_budget), one per frame, pre-annotated with the model's class.
    review = client.project_by_title(PROJECT + "-review")
    tasks = list(client.tasks(review["id"]))
    expected = {r["frame_id"] for r in flagged[:3]}
    assert {t["data"]["frame_id"] for t in tasks} == expected and len(tasks) == len(expected)
    for task in tasks:
        row = db["label_issues"].find_one({"_id": task["data"]["label_issue_id"]})
        assert row["review_task_id"] == task["id"]
        (choice,) = task["predictions"][0]["result"]
        assert choice["value"]["choices"] == [row["suggested_label"] or row["label"]]
        picture = client._session.get(client.url + task["data"]["image"])
        assert picture.status_code == 200 and picture.content[:4] == b"\x89PNG"
    with open(os.path.join(loop["root"], "ann", annotate.QC_REPORT_FILE)) as f:
        assert json.load(f)["label_issues"]["worst"][0]["rank"] == 1
    # The selection's HTML report lists the flagged issues of its frames.
    from beam_pipelines import report
    selection = loop["first"][0]["selection_id"]
    page = report.report_for_selection(loop["mongo"].uri, selection, os.path.join(loop["root"], "sel-report"))
    with open(page) as f:
        text = f.read()
    selected = {c["frame_id"] for c in loop["first"]}
    shown = [r for r in flagged if r["frame_id"] in selected]
    table = text[text.index("<h2>Label issues</h2>"):text.index("<h2>Dead letters</h2>")]
    assert f"{len(shown)} likely label errors" in table if shown else "None flagged" in table
    assert (f"<h3>swap: wrong class ({len(shown)})</h3>" in table) == bool(shown) and "<h3>badloc" not in table
    assert all(r["frame_id"] in table for r in shown)
    # Rerun, also to BigQuery (twice): the same rows (ids, ranks), appended once; no second
    # review task, review ids kept.
    with harness.bigquery_emulator() as endpoint:
        bq = harness.bigquery_client(endpoint)
        bq.create_dataset("issues")
        for _ in range(2):
            again = annotate.run(argv + ["--bigquery_label_issues_table",
                                         f"{harness.BIGQUERY_PROJECT}:issues.label_issues"])["label_issues"]
            (stored,) = bq.query(f"SELECT COUNT(*) AS n, COUNT(DISTINCT label_issue_id) AS ids, MIN(`rank`) AS first, "
                                 f"COUNTIF(type_rank = `rank`) AS queued "
                                 f"FROM `{harness.BIGQUERY_PROJECT}.issues.label_issues`").result()
            assert (stored["n"], stored["ids"], stored["first"], stored["queued"]) == (len(rows), len(rows), 1, len(rows))
    assert again["run_id"] == section["run_id"] and again["review_tasks"] == len(tasks)
    assert db["label_issues"].count_documents({}) == len(rows)
    assert len(list(client.tasks(review["id"]))) == len(tasks)
    assert db["label_issues"].count_documents({"review_task_id": {"$type": "int"}}) == len(tasks)


def test_find_label_issues_in_beam_ranks_boxes_and_dead_letters_the_unscorable():
    """FindLabelIssues on a pipeline (no server): 30 frames whose detector found a cup and a
    person; one annotation calls the person a cup (swap), one forgot the cup (overlooked). Frames
    missing from the index, without detections, or a box label outside the classes are dead letters."""
    from transforms.annotate.ptransforms import FindLabelIssues
    cup, person = [10.0, 10.0, 50.0, 50.0], [60.0, 60.0, 90.0, 90.0]
    frames = [{"_id": f"f{i:02d}", "model": {"detector_name": "det", "detector_version": "v1"},
               "detections": [{"label": "cup", "score": 0.99, "box": cup}, {"label": "person", "score": 0.98, "box": person},
                              {"label": "bus", "score": 0.99, "box": [0, 0, 5, 5]}]} for i in range(30)]
    frames.append({"_id": "no-detector", "model": {"name": "m"}})

    def answer(frame_id, boxes, who="a@x.org"):
        return {"annotation_id": f"ann-{frame_id}", "frame_id": frame_id, "source_uri": f"/cam/{frame_id}.png",
                "frame_index": 0, "annotator": who, "label": ",".join(sorted({b["label"] for b in boxes})),
                "boxes": json.dumps(boxes)}
    right = [{"label": "cup", "box": cup}, {"label": "person", "box": person}]
    annotations = [answer(f"f{i:02d}", right) for i in range(3, 30)]
    annotations += [answer("f00", [{"label": "cup", "box": cup}, {"label": "cup", "box": person}]),
                    answer("f01", [{"label": "person", "box": person}]),
                    answer("f02", [{"label": "hovercraft", "box": cup}]),
                    answer("missing", right), answer("no-detector", right)]
    out = harness.run_collect(lambda p: (lambda found: {"issues": found.issues, "dead": found.dead_letters})(
        p | "Annotations" >> beam.Create(annotations)
        | FindLabelIssues("detection", ["cup", "person"], p | "Frames" >> beam.Create(frames), "cams", "run1")))
    issues = sorted(out["issues"], key=lambda r: r["rank"])
    assert [r["rank"] for r in issues] == list(range(1, 30)) and {r["project"] for r in issues} == {"cams"}
    assert {r["frame_id"] for r in issues[:2]} == {"f00", "f01"} and not any(r["is_issue"] for r in issues[2:])
    swap, missing = sorted(issues[:2], key=lambda r: r["frame_id"])
    assert (swap["issue_type"], swap["suggested_label"], json.loads(swap["suspect_box"])) == (
        "swap", "person", {"label": "cup", "box": person})
    assert (missing["issue_type"], json.loads(missing["suspect_box"])) == ("overlooked", {"label": "cup", "box": cup})
    assert json.loads(missing["model_box"]) == {"label": "cup", "box": cup, "score": 0.99}
    assert swap["model_version"] == "det@v1" and swap["label_issue_id"] != missing["label_issue_id"]
    from schemas import tables
    assert all(tables.bigquery_row_errors(tables.label_issues_table(), r) == [] for r in issues)  # BigQuery-ready
    reasons = sorted(d.error.split(": ", 1)[1] for d in out["dead"])
    assert [d.stage for d in out["dead"]] == ["label_issues"] * 3
    assert reasons == ["box label 'hovercraft' is not one of the project's classes",
                       "frame missing is not in the frames index", "the frame carries no detections (no detector ran)"]


def test_next_selection_skips_frames_sent_for_labelling(loop):
    argv = [a.replace("/mine1", "/mine2") for a in loop["argv"]]
    mine.run(argv)
    with open(os.path.join(loop["root"], "mine2", "candidates.jsonl")) as f:
        second = [json.loads(line) for line in f]
    sent = {e["frame_id"] for e in loop["db"]["label_tasks"].find()}
    assert second and not {c["frame_id"] for c in second} & sent
    assert second[0]["selection_id"] != loop["first"][0]["selection_id"]
    assert len(second) <= BUDGET


def _with_pubsub_topic(fn):
    """``fn(topic)`` with a topic of the Cloud SDK's Pub/Sub emulator, then the messages on it
    (``fn(None)`` and no messages where that emulator is not installed)."""
    from beam_pipelines.local import emulators
    try:
        context = emulators.pubsub_emulator(log_dir=harness.tmpdir("pubsub-emulator-"))
        context.__enter__()
    except emulators.EmulatorNotFound:
        return fn(None), None
    try:
        from google.cloud import pubsub_v1
        publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
        topic, subscription = "projects/activebeam-test/topics/retrain", "projects/activebeam-test/subscriptions/trainer"
        publisher.create_topic(name=topic)
        subscriber.create_subscription(name=subscription, topic=topic)
        result = fn(topic)
        pulled = subscriber.pull(subscription=subscription, max_messages=10, timeout=30)
        return result, [m.message for m in pulled.received_messages]
    finally:
        context.__exit__(None, None, None)


def test_labelled_frames_and_their_near_duplicates_are_excluded(loop):
    """``duplicate_group`` (the detector engineer's field): a labelled frame's group is excluded too."""
    from transforms.annotate.ptransforms import ReadLabelledFrameIds
    db = pymongo.MongoClient(loop["mongo"].uri)["dups"]
    db["frames"].insert_many([{"_id": "rep", "duplicate_group": "rep"}, {"_id": "twin", "duplicate_group": "rep"},
                              {"_id": "sent", "duplicate_group": None}, {"_id": "other", "duplicate_group": "x"},
                              {"_id": "x"}, {"_id": "near-sent", "duplicate_group": "sent"}])
    db["label_tasks"].insert_one({"_id": "k1", "frame_id": "twin"})
    db["annotations"].insert_one({"_id": "a1", "frame_id": "sent"})
    ids = harness.run_collect(lambda p: {"ids": p | ReadLabelledFrameIds(loop["mongo"].uri, "dups")})["ids"]
    assert sorted(ids) == ["near-sent", "rep", "sent", "twin"]
    assert harness.run_collect(lambda p: {"ids": p | ReadLabelledFrameIds(loop["mongo"].uri, "empty")})["ids"] == []


def test_dataset_and_retraining_trigger_written_once(loop):
    out = os.path.join(loop["root"], "dataset")
    argv = ["dataset", "--dataset_dir", out, "--retrain_after", str(BUDGET - 1)] + loop["common"]
    result, messages = _with_pubsub_topic(
        lambda topic: annotate.run(argv + (["--retrain_topic", topic] if topic else [])))
    assert result["accepted_labels"] == BUDGET - 1 and result["trigger"]["new"]
    if messages is not None:  # the training job's start signal
        (message,) = messages
        assert message.attributes["trigger_id"] == result["trigger"]["trigger_id"]
        assert json.loads(message.data)["accepted_labels"] == BUDGET - 1
    with open(os.path.join(out, "manifest.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == BUDGET - 1 and all(r["split"] == dataset_lib.split_of(r["frame_id"], 0.2) for r in rows)
    for r in rows:
        assert os.path.exists(os.path.join(out, r["split"], r["label"].replace("/", "_"), f"{r['frame_id']}.png"))
    with open(os.path.join(out, "dataset.json")) as f:
        lineage = json.load(f)
    assert lineage["selections"] == [loop["first"][0]["selection_id"]] and lineage["qc_id"]
    again = annotate.run(argv)
    assert again["dataset_version"] == result["dataset_version"] and not again["trigger"]["new"]
    assert loop["db"]["retrain_triggers"].count_documents({}) == 1


def test_detection_export_boxes_and_coco_read_back_with_pycocotools(loop):
    """Frames carrying detections (added to their documents after `mine`, as a detector will write
    them) become box pre-annotations; annotated boxes come back; the COCO file loads in pycocotools."""
    from pycocotools.coco import COCO
    db, client = loop["db"], loop["client"]
    video = sorted(db["frames"].find({"media_type": "video"}, {"embedding": 0}), key=lambda d: d["frame_index"])[:2]
    for d in video:
        db["frames"].update_one({"_id": d["_id"]}, {"$set": {"detections": [
            {"label": "cup", "class_id": 41, "score": 0.8, "box": [64, 48, 320, 240]}]}})
        db["candidates"].insert_one({"_id": f"det:{d['_id']}", "selection_id": "det-sel", "frame_id": d["_id"],
                                     "rank": 1}, bypass_document_validation=True)
    common = [a if a != PROJECT else "cups" for a in loop["common"]]
    counts = annotate.run(["export", "--selection_id", "det-sel", "--classes", "cup,person"] + common)
    assert counts["kind"] == "detection" and counts["tasks_in_project"] == 2
    # what the export costs to label: 2 frames of one predicted box each, at the cost model in use
    # (the index's annotations are too few to fit one: the published 5 s per frame + 7 s per box)
    assert (counts["frames"], counts["predicted_boxes"], counts["estimated_label_seconds"]) == (2, 2, 24.0)
    assert counts["cost_model"]["source"] == "published"
    project = client.project_by_title("cups")
    for task in client.tasks(project["id"]):
        (region,) = task["predictions"][0]["result"]
        w, h = task["data"]["width"], task["data"]["height"]
        assert region["value"]["x"] == pytest.approx(100 * 64 / w) and region["value"]["width"] == pytest.approx(100 * 256 / w)
        result = [dict(region, value=dict(region["value"], rectanglelabels=["cup"]))]
        result[0].pop("score", None)
        client.create_annotation(task["id"], result, lead_time=4.0)
    assert annotate.run(["import"] + common)["annotations"] == 2
    assert annotate.run(["qc"] + common)["accepted"] == 2
    out = os.path.join(loop["root"], "coco")
    annotate.run(["dataset", "--dataset_dir", out, "--val_fraction", "0"] + common)
    coco = COCO(os.path.join(out, "coco_train.json"))
    assert len(coco.getImgIds()) == 2 and coco.getCatIds(catNms=["cup"]) == [1]
    ann = coco.loadAnns(coco.getAnnIds())[0]
    image = coco.loadImgs(ann["image_id"])[0]
    sx = image["width"] / video[0]["width"]
    assert ann["bbox"] == pytest.approx([64 * sx, 48 * sx, 256 * sx, 192 * sx], abs=0.05)


def _boxes_of(task, labels=None):
    """A task's pre-annotated boxes as an annotation result (optionally relabelled, in order)."""
    keep = ("from_name", "to_name", "type", "original_width", "original_height", "value")
    result = [{k: r[k] for k in keep} for r in task["predictions"][0]["result"]]
    for region, label in zip(result, labels or ()):
        region["value"] = dict(region["value"], rectanglelabels=[label])
    return result


def test_label_issues_on_boxes_review_tasks_and_the_fix_loop(loop):
    """Every indexed frame gets confident detections (a cup on the left, a person on the right, a
    faint false positive); an annotator draws them, but calls one person a cup (swap) and forgets
    one cup (missing box). qc --label_issues ranks those two first; their review tasks show the
    suspect box; the reviewer's fix replaces the label at the next import, QC accepts it and the
    dataset's lineage names the reviewed frame."""
    from pycocotools.coco import COCO
    db, client = loop["db"], loop["client"]
    frames = sorted(db["frames"].find({}, {"embedding": 0}), key=lambda d: d["_id"])
    for i, d in enumerate(frames):
        w, h = d["width"], d["height"]
        box = lambda x1, y1, x2, y2: [round(x1 * w, 3), round(y1 * h, 3), round(x2 * w, 3), round(y2 * h, 3)]  # noqa: E731
        db["frames"].update_one({"_id": d["_id"]}, {"$set": {"detections": [
            {"label": "cup", "class_id": 41, "score": 0.99, "box": box(0.05, 0.1, 0.45, 0.6)},
            {"label": "person", "class_id": 0, "score": 0.98, "box": box(0.55, 0.3, 0.95, 0.9)},
            {"label": "person", "class_id": 0, "score": 0.2, "box": box(0.0, 0.7 + 0.01 * (i % 5), 0.1, 0.8)}]}})
        db["candidates"].insert_one({"_id": f"boxes:{d['_id']}", "selection_id": "boxes-sel", "frame_id": d["_id"],
                                     "rank": i + 1}, bypass_document_validation=True)
    common = [a if a != PROJECT else "boxes" for a in loop["common"]]
    annotate.run(["export", "--selection_id", "boxes-sel", "--classes", "cup,person"] + common)
    project = client.project_by_title("boxes")
    tasks = {t["data"]["frame_id"]: t for t in client.tasks(project["id"])}
    swapped, missing = frames[1]["_id"], frames[2]["_id"]
    for frame_id, task in tasks.items():
        result = _boxes_of(task)[:2]  # the faint false positive is not drawn
        if frame_id == swapped:
            result = _boxes_of(task, ["cup", "cup"])[:2]
        elif frame_id == missing:
            result = result[1:]
        client.create_annotation(task["id"], result, lead_time=2.0)
    assert annotate.run(["import"] + common)["annotations"] == len(frames)
    # The missing-box reviewer's queue first: only overlooked issues go to review.
    section = annotate.run(["qc", "--label_issues", "--review_budget", "5", "--review_issue_types", "overlooked"]
                           + common)["label_issues"]
    assert section["scored"] == len(frames) and section["unscorable"] == 0 and section["review_by"] == ["overlooked"]
    assert [i["frame_id"] for i in section["worst_by_type"]["overlooked"][:1]] == [missing]
    (queued,) = client.tasks(client.project_by_title("boxes-review")["id"])
    assert (queued["data"]["frame_id"], queued["data"]["issue_type"], queued["data"]["type_rank"]) == (
        missing, "overlooked", 1)
    section = annotate.run(["qc", "--label_issues", "--review_budget", "5"] + common)["label_issues"]
    assert section["review_by"] == "quality"
    rows = list(db["label_issues"].find({"project": "boxes"}).sort("rank", 1))
    assert {r["frame_id"] for r in rows[:2]} == {swapped, missing} and all(r["is_issue"] for r in rows[:2])
    by_frame = {r["frame_id"]: r for r in rows}
    assert (by_frame[swapped]["issue_type"], by_frame[swapped]["suggested_label"]) == ("swap", "person")
    assert by_frame[missing]["issue_type"] == "overlooked"
    assert json.loads(by_frame[missing]["suspect_box"])["label"] == "cup"
    # Each type's queue: its rows by their own type's score, numbered from 1.
    for t in ("swap", "overlooked", "badloc"):
        queue = sorted((r for r in rows if r["issue_type"] == t), key=lambda r: r["type_rank"])
        assert [r["type_rank"] for r in queue] == list(range(1, len(queue) + 1))
        assert [r["type_score"] for r in queue] == sorted(r[f"{t}_score"] for r in queue)
    assert by_frame[swapped]["type_rank"] == by_frame[missing]["type_rank"] == 1
    # The report groups the flagged issues by type, each group in its queue's order.
    from beam_pipelines import report
    with open(report.write_report(os.path.join(loop["root"], "boxes-report"), [], label_issues=rows)) as f:
        page = f.read()
    swap_table = page[page.index("<h3>swap: wrong class"):page.index("<h3>overlooked: missing box")]
    assert swapped in swap_table and missing not in swap_table and missing in page[page.index("<h3>overlooked"):]
    review = client.project_by_title("boxes-review")
    review_tasks = {t["data"]["frame_id"]: t for t in client.tasks(review["id"])}
    assert set(review_tasks) == {r["frame_id"] for r in rows if r["is_issue"]} and len(review_tasks) <= 5
    fix = review_tasks[missing]
    assert fix["id"] == by_frame[missing]["review_task_id"]
    regions = [(r["from_name"], r["value"]["rectanglelabels"][0]) for r in fix["predictions"][0]["result"]]
    assert sorted(regions) == [("label", "cup"), ("label", "person"), ("suspect", "suspect")]
    assert annotate.run(["qc", "--label_issues", "--review_budget", "5"] + common)["label_issues"]["review_tasks"] == \
        len(review_tasks) == len(list(client.tasks(review["id"])))
    # The reviewer accepts the pre-annotated fix (the suspect region comes back too, and is ignored).
    client.create_annotation(fix["id"], _boxes_of(fix), lead_time=3.0)
    for _ in range(2):  # a rerun changes nothing
        imported = annotate.run(["import"] + common)
        assert (imported["annotations"], imported["reviewed"]) == (len(frames), 1)
        row = db["annotations"].find_one({"_id": by_frame[missing]["annotation_id"]})
        assert (row["label"], row["label_before_review"], row["review_task_id"]) == ("cup,person", "person", fix["id"])
        assert sorted(b["label"] for b in json.loads(row["boxes"])) == ["cup", "person"] and row["reviewed_by"]
    with open(os.path.join(loop["root"], "ann", annotate.DEAD_LETTER_FILE)) as f:
        (superseded,) = [json.loads(line) for line in f if "by review task" in line]
    assert superseded["error"].startswith("superseded: ") and superseded["frame_id"] == missing
    assert annotate.run(["qc"] + common)["accepted"] == len(frames)
    out = os.path.join(loop["root"], "boxes-dataset")
    lineage = annotate.run(["dataset", "--dataset_dir", out, "--val_fraction", "0"] + common)
    assert lineage["reviewed_frames"] == [missing]
    coco = COCO(os.path.join(out, "coco_train.json"))
    assert len(coco.getAnnIds()) == 2 * len(frames)  # the missing cup is back


def test_cli_with_embedded_label_studio_and_one_line_errors(loop):
    """The command line, with the embedded Label Studio started on a copy of the test server's
    initialised data (5-10 s instead of 40 s), and exit code 2 for a bad option."""
    import subprocess
    import sys
    out = os.path.join(loop["root"], "embedded")
    shutil.copytree(os.path.join(loop["root"], "ls-data"), os.path.join(out, "label-studio"),
                    ignore=shutil.ignore_patterns("*.log", "home"))
    env = dict(os.environ, PYTHONPATH=harness.CHECKOUT)
    done = subprocess.run([sys.executable, "-m", "beam_pipelines.annotate", "import", "--output_dir", out,
                           "--mongo_uri", loop["mongo"].uri, "--label_studio_project", PROJECT],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Label Studio: http://127.0.0.1:" in done.stdout and "user admin@activebeam.local" in done.stdout
    assert json.loads(done.stdout[done.stdout.index("{"):])["annotations"] == loop["db"]["annotations"].count_documents(
        {"label_project": PROJECT})
    bad = subprocess.run([sys.executable, "-m", "beam_pipelines.annotate", "export", "--overlap", "2",
                          "--selection_id", "x"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip() == "annotate: error: --overlap must be in [0, 1], got 2.0"


def test_export_to_a_label_studio_without_shared_disk_uploads_the_pictures(loop):
    """A Label Studio with its own data directory and document root, which the exporter is never
    told about (as on another machine): pictures go through its import API into its own storage,
    it serves them, and a second export uploads nothing again."""
    import cv2
    import numpy as np
    data_dir = os.path.join(harness.tmpdir("remote-ls-"), "data")
    shutil.copytree(os.path.join(loop["root"], "ls-data"), data_dir, ignore=shutil.ignore_patterns("*.log", "home"))
    server_root = harness.tmpdir("remote-ls-root-")  # its LOCAL_FILES_DOCUMENT_ROOT: never written by us
    out = harness.tmpdir("remote-export-")
    argv = ["export", "--selection_id", loop["first"][0]["selection_id"], "--mongo_uri", loop["mongo"].uri,
            "--output_dir", out, "--label_studio_project", "cams-remote"]
    with LocalLabelStudio(data_dir, document_root=server_root) as server:
        remote = argv + ["--label_studio_url", server.url, "--label_studio_api_key", server.api_key]
        with pytest.raises(ValueError, match="--label_studio_media=local_files needs --label_studio_document_root"):
            annotate.run(remote + ["--label_studio_media", "local_files"])
        counts = annotate.run(remote)
        assert counts["media"] == "upload" and counts["tasks_in_project"] == BUDGET and counts["dead_letters"] == 0
        client = LabelStudioClient(server.url, server.api_key)
        project = client.project_by_title("cams-remote")
        tasks = list(client.tasks(project["id"]))
        assert {t["data"]["frame_id"] for t in tasks} == {c["frame_id"] for c in loop["first"]}
        frames = {d["_id"]: d for d in loop["db"]["frames"].find({}, {"embedding": 0})}
        for task in tasks:
            image = task["data"]["image"]
            assert image.startswith(f"/data/upload/{project['id']}/")
            # In the server's own storage, served by the server at the frame's full resolution.
            assert os.path.isfile(os.path.join(data_dir, "media", image[len("/data/"):]))
            picture = client._session.get(client.url + image)
            assert picture.status_code == 200
            decoded = cv2.imdecode(np.frombuffer(picture.content, np.uint8), cv2.IMREAD_UNCHANGED)
            frame = frames[task["data"]["frame_id"]]
            assert decoded.shape[:2] == (frame["height"], frame["width"])
        uploads = len(client.file_uploads(project["id"]))
        assert uploads == BUDGET
        again = annotate.run(remote)
        assert again["tasks_in_project"] == BUDGET and len(client.file_uploads(project["id"])) == uploads
    assert os.listdir(server_root) == []


if __name__ == "__main__":
    harness.main(__file__)
