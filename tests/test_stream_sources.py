"""What the streaming job reads before decoding: Cloud Storage notifications in their real format,
event times by capture time (EXIF, container creation time, notification, mtime), window file
names, literal globs. No servers."""
import datetime
import io
import json

import pytest

from tests import harness
from transforms.index.window_outputs import pane_digest, window_file_name
from transforms.intake import event_time, notifications
from transforms.decode.images import decode_image
from transforms.intake.notifications import NotificationError, Skipped, parse_notification
from transforms.decode.video import plan_video
from transforms.select.windows import WindowSpec

# An object resource as Cloud Storage's JSON API (here the GCS emulator) returns it: the data of
# a JSON_API_V1 notification.
RESOURCE = {
    "kind": "storage#object", "id": "cams/site-1/a.png/1795989955272804093",
    "selfLink": "/storage/v1/b/cams/o/site-1/a.png", "name": "site-1/a.png", "bucket": "cams",
    "generation": "1795989955272804093", "metageneration": "1", "contentType": "image/png",
    "timeCreated": "2026-11-29T22:05:55.272807Z", "updated": "2026-11-29T22:05:55.272807Z",
    "storageClass": "STANDARD", "size": "703", "md5Hash": "3ITbArAk0DULY7VfxS8FDA==",
    "crc32c": "gkI04w==", "etag": "3ITbArAk0DULY7VfxS8FDA=="}


def _attributes(event="OBJECT_FINALIZE", **overrides):
    attributes = {"notificationConfig": "projects/_/buckets/cams/notificationConfigs/1",
                  "eventType": event, "payloadFormat": "JSON_API_V1", "bucketId": "cams",
                  "objectId": "site-1/a.png", "objectGeneration": "1795989955272804093",
                  "eventTime": "2026-11-29T22:05:55.272807Z"}
    attributes.update(overrides)
    return attributes


def test_object_finalize_is_an_arrival_keyed_by_object_and_generation():
    arrival = parse_notification(_attributes(), json.dumps(RESOURCE).encode())
    assert arrival.uri == "gs://cams/site-1/a.png"
    assert arrival.key == "gs://cams/site-1/a.png#1795989955272804093"
    assert arrival.generation == "1795989955272804093" and arrival.size == 703
    assert arrival.fallback_source == "notification"
    expected = datetime.datetime(2026, 11, 29, 22, 5, 55, 272807, tzinfo=datetime.timezone.utc).timestamp()
    assert arrival.fallback_time == pytest.approx(expected, abs=1e-6)
    # The same notification again, or the same object and generation: the same key.
    again = parse_notification(_attributes(), json.dumps(RESOURCE).encode())
    assert again.key == arrival.key
    replaced = dict(RESOURCE, generation="1795989999000000000")
    assert parse_notification(_attributes(objectGeneration="1795989999000000000"),
                              json.dumps(replaced).encode()).key != arrival.key


@pytest.mark.parametrize("event", notifications.OTHER_EVENT_TYPES)
def test_other_event_types_are_skipped(event):
    skipped = parse_notification(_attributes(event), json.dumps(RESOURCE).encode())
    assert skipped == Skipped(event, "gs://cams/site-1/a.png")


@pytest.mark.parametrize("attributes, data, reason", [
    ({}, b"gs://cams/a.png", "no_event_type"),
    (_attributes(), b"{not json", "bad_json"),
    (_attributes(), b"[1, 2]", "bad_json"),
    (_attributes(), b"\xff\xfe", "bad_json"),
    ({k: v for k, v in _attributes().items() if k != "objectId"}, json.dumps(RESOURCE).encode(), "missing_attribute"),
    (_attributes(objectGeneration="abc"), json.dumps(RESOURCE).encode(), "bad_generation"),
    (_attributes(objectGeneration="17"), json.dumps(RESOURCE).encode(), "inconsistent"),
    (_attributes(payloadFormat="XML"), json.dumps(RESOURCE).encode(), "bad_payload_format"),
    (_attributes(), json.dumps(dict(RESOURCE, timeCreated="yesterday")).encode(), "bad_time"),
    (_attributes(), json.dumps(dict(RESOURCE, timeCreated="2026-11-29T22:05:55")).encode(), "bad_time"),
    (_attributes(), json.dumps({k: v for k, v in RESOURCE.items() if k != "timeCreated"}).encode(), "bad_time"),
])
def test_malformed_notifications_raise_with_a_reason(attributes, data, reason):
    with pytest.raises(NotificationError) as raised:
        parse_notification(attributes, data)
    assert raised.value.reason == reason


def test_payload_format_none_uses_the_event_time():
    arrival = parse_notification(_attributes(payloadFormat="NONE", eventTime="2026-11-29T22:06:00Z"), b"")
    assert arrival.fallback_time == datetime.datetime(2026, 11, 29, 22, 6, tzinfo=datetime.timezone.utc).timestamp()
    assert arrival.size is None


def test_rfc3339_times_with_nanoseconds_and_offsets():
    parse = notifications.parse_rfc3339
    assert parse("2026-11-29T22:05:55.123456789Z") == pytest.approx(parse("2026-11-29T22:05:55.123456Z"))
    assert parse("2026-11-29T23:05:55+01:00") == parse("2026-11-29T22:05:55Z")
    assert parse("2026-11-29T22:05:55.5-01:30") == parse("2026-11-29T23:35:55.5Z")


def test_watched_file_key_changes_when_the_file_is_replaced():
    first = notifications.watched_arrival("/data/cam/a.jpg", 1700000000.25, 100)
    assert first.key == "/data/cam/a.jpg#1700000000250000:100" and first.fallback_source == "mtime"
    assert notifications.watched_arrival("/data/cam/a.jpg", 1700000001.0, 100).key != first.key
    assert notifications.watched_arrival("/data/cam/a.jpg", 1700000000.25, 101).key != first.key


NOW = datetime.datetime(2026, 11, 29, 22, 0, tzinfo=datetime.timezone.utc).timestamp()


def test_event_time_precedence():
    fallback = NOW - 5
    exif = "2026-11-29T21:59:00"
    container = "2026-11-29T21:58:00.000000Z"
    assert event_time.event_time(exif, container, 3.5, fallback, "notification", NOW) == (NOW - 60, "exif")
    assert event_time.event_time(None, container, 3.5, fallback, "notification", NOW) == (NOW - 120 + 3.5, "container")
    assert event_time.event_time(None, None, 3.5, fallback, "notification", NOW) == (fallback, "notification")
    assert event_time.event_time(None, None, None, fallback, "mtime", NOW) == (fallback, "mtime")
    # Unset camera clocks and clocks far in the future fall through to the next source.
    assert event_time.event_time("1970-01-01T00:00:00", container, 0.0, fallback, "mtime", NOW)[1] == "container"
    assert event_time.event_time("1904-01-01T00:00:00", "1904-01-01T00:00:00Z", 0.0, fallback, "mtime", NOW) == (fallback, "mtime")
    assert event_time.event_time("2031-01-01T00:00:00", None, None, fallback, "mtime", NOW) == (fallback, "mtime")
    assert event_time.event_time("garbage", "also garbage", 1.0, fallback, "mtime", NOW) == (fallback, "mtime")
    with pytest.raises(ValueError, match="fallback_source"):
        event_time.event_time(None, None, None, fallback, "exif", NOW)


def test_event_time_of_real_files():
    # A JPEG with EXIF DateTimeOriginal (made from a Fashion-MNIST image) and the bundled H.264
    # clip box.mp4, whose MP4 header says it was created on 2014-06-09 15:54:39 UTC.
    from PIL import Image
    image = Image.open(harness.media("fashion-mnist", "t10k-00003.png")).convert("RGB")
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = "2026:11:29 21:59:30"  # DateTimeOriginal
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    decoded = decode_image(buffer.getvalue(), "JPEG")
    assert event_time.event_time(decoded.capture_time, None, None, NOW, "notification", NOW) == (NOW - 30, "exif")

    plan = plan_video(harness.media("box.mp4"))
    assert plan.info.creation_time.startswith("2014-06-09T15:54:39")
    created = datetime.datetime(2014, 6, 9, 15, 54, 39, tzinfo=datetime.timezone.utc).timestamp()
    assert event_time.event_time(None, plan.info.creation_time, 2.0, NOW, "notification", NOW) == (created + 2.0, "container")
    # vtest.avi has no creation time: its frames take the fallback.
    assert plan_video(harness.media("vtest.avi")).info.creation_time is None


def test_window_file_names_are_utc_iso_8601_basic():
    start = datetime.datetime(2026, 1, 31, 12, 0, tzinfo=datetime.timezone.utc).timestamp()
    assert window_file_name(start, start + 60) == "20260131T120000Z_20260131T120100Z.jsonl"
    assert window_file_name(start + 0.5, start + 1.5) == "20260131T120000.500Z_20260131T120001.500Z.jsonl"
    assert pane_digest("a", "", 1, 2) == pane_digest("a", "", 1, 2) != pane_digest("a", "", 1, 3)


def test_window_spec():
    assert WindowSpec(60).latest_end(125.0) == 180.0
    assert WindowSpec(60, 20).latest_end(125.0) == 180.0  # windows [80,140) [100,160) [120,180)
    with pytest.raises(ValueError, match="period_s"):
        WindowSpec(60, 90).validated()
    with pytest.raises(ValueError, match="window_s"):
        WindowSpec(0).validated()


def test_the_model_watch_never_switches_to_a_hidden_file_being_written(tmp_path):
    """An atomic save writes a temporary file in the watched folder first, and Keras only saves
    to ``*.keras``: the feed must not switch to that half-written ``.tmp-model.keras``."""
    import os
    import time
    from transforms.intake.watch import ArrivalFeed, is_hidden
    feed = ArrivalFeed(glob=str(tmp_path / "in" / "*.png"), model_glob=str(tmp_path / "*.keras"))
    time.sleep(0.05)  # files written after the feed started
    (tmp_path / "retrained.keras").write_bytes(b"done")
    (tmp_path / ".tmp-model.keras").write_bytes(b"half")  # newer: what a save in progress leaves
    later = time.time() + 5
    os.utime(tmp_path / ".tmp-model.keras", (later, later))
    feed._check_models()
    assert feed._model == str(tmp_path / "retrained.keras") and feed.counts["model_switches"] == 1
    feed._check_models()  # still the same model: no second switch
    assert feed.counts["model_switches"] == 1
    assert is_hidden("gs://b/models/.m.keras") and is_hidden("/m/.x/") and not is_hidden("/m/.x/y.keras")


if __name__ == "__main__":
    harness.main(__file__)
