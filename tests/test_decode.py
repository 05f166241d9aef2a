"""DecodeMedia on real images and videos, and on broken files made here."""
import os
import shutil
import subprocess

import apache_beam as beam
import cv2
import numpy as np
import pytest

from tests import harness
from transforms.decode.ptransforms import DecodeError, DecodeMedia, decode_image, sniff_media_type


def _decode(globs, video_fps=1.0, pixels=True, **options):
    """Runs DecodeMedia; ``pixels=False`` collects FrameMetadata instead of Frames (long videos)."""
    def build(p):
        decoded = p | beam.Create(globs) | DecodeMedia(video_fps=video_fps, **options)
        frames = decoded.frames if pixels else decoded.frames | beam.Map(lambda f: f.metadata())
        return {"frames": frames, "outcomes": decoded.outcomes, "dead": decoded.dead_letters}
    return harness.run_collect(build)


def _head(path, n=256):
    with open(path, "rb") as f:
        return f.read(n)


@pytest.mark.parametrize("name, expected", [
    ("vtest.avi", ("video", "AVI")),
    ("box.mp4", ("video", "MP4/QuickTime")),
    ("china.jpg", ("image", "JPEG")),
    ("fashion-mnist/t10k-00000.png", ("image", "PNG")),
])
def test_sniff_real_files(name, expected):
    assert sniff_media_type(_head(harness.media(name))) == expected


def test_sniff_rejects_non_media():
    assert sniff_media_type(b"hello world, not a video\n") is None
    assert sniff_media_type(b"") is None
    assert sniff_media_type(b"RIFF\x00\x00\x00\x00WAVEfmt ") is None


def test_video_sampled_at_one_fps_with_container_timestamps():
    out = _decode([harness.media("vtest.avi")], video_fps=1.0)
    frames = sorted(out["frames"], key=lambda f: f.frame_index)
    # 795 frames at 10 fps = 79.5 s: one frame per second, the first of each second.
    assert len(frames) == 80
    assert [f.frame_index for f in frames] == list(range(0, 800, 10))
    assert [f.timestamp_s for f in frames] == pytest.approx([float(s) for s in range(80)], abs=1e-3)
    assert {(f.width, f.height, f.pixels.shape, f.pixels.dtype) for f in frames} == {
        (768, 576, (576, 768, 3), np.dtype("uint8"))}
    assert len({f.frame_id for f in frames}) == 80
    assert all(f.media_type == "video" and f.source_uri.endswith("vtest.avi") for f in frames)
    [outcome] = out["outcomes"]
    assert (outcome.frames, outcome.failed, outcome.media_type) == (80, False, "video")
    assert out["dead"] == []


def test_video_pixels_match_opencv_rgb():
    out = _decode([harness.media("vtest.avi")], video_fps=1.0)
    frame = min(out["frames"], key=lambda f: f.frame_index)
    capture = cv2.VideoCapture(harness.media("vtest.avi"))
    ok, bgr = capture.read()
    assert ok
    # OpenCV's I420 conversion replicates chroma where swscale (VideoCapture) interpolates it.
    difference = np.abs(frame.pixels.astype(np.int16) - cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    assert difference.mean() < 1.5 and np.percentile(difference, 99) <= 3


def test_every_frame_of_h264_clip():
    out = _decode([harness.media("cup.mp4")], video_fps=0)
    assert len(out["frames"]) == 217
    assert sorted(f.frame_index for f in out["frames"]) == list(range(217))
    assert out["dead"] == []


def test_variable_frame_rate_avi_is_complete_not_broken():
    """tree.avi declares 444 frame slots but holds 68 coded frames spread over its whole 29.6 s
    (the other slots are empty AVI chunks: "no new picture"), which FFmpeg also decodes without
    error: every coded frame is decoded, nothing is dead-lettered, the counts are recorded."""
    tree = os.path.join(harness.OPENCV_DATA, "tree.avi")
    out = _decode([tree], video_fps=0)
    frames = sorted(out["frames"], key=lambda f: f.frame_index)
    assert [f.frame_index for f in frames] == list(range(68))
    assert frames[-1].timestamp_s == pytest.approx(443 * 0.066667, abs=1e-3)  # the last slot
    assert out["dead"] == []
    [outcome] = out["outcomes"]
    assert outcome.frames == 68 and not outcome.failed
    assert (outcome.video_info["frame_count"], outcome.video_info["declared_frames"]) == (68, 444)
    assert outcome.video_info["codec"] == "cinepak"


def _truncate(src, dst, fraction):
    with open(src, "rb") as f:
        data = f.read()
    with open(dst, "wb") as f:
        f.write(data[: int(len(data) * fraction)])


@pytest.mark.parametrize("name, split", [("vtest.avi", None), ("vtest.avi", 10.0), ("cup.mp4", None)])
def test_truncated_video_keeps_decoded_frames_and_one_dead_letter_says_where(name, split):
    d = harness.tmpdir()
    cut = os.path.join(d, "cut " + name)
    _truncate(harness.media(name), cut, 0.5)
    out = _decode([cut], video_fps=0, pixels=False, split_seconds=split)
    frames = sorted(out["frames"], key=lambda f: f.frame_index)
    assert len(frames) > 10
    assert [f.frame_index for f in frames] == list(range(len(frames)))  # a prefix, no gap
    [dead] = out["dead"]
    assert dead.stage == "decode" and dead.source_uri == cut
    assert "truncated" in dead.error and f"{len(frames)} frames are present" in dead.error
    [outcome] = out["outcomes"]
    assert outcome.frames == len(frames) and not outcome.failed
    assert outcome.video_info["frame_count"] == len(frames)


def test_still_images_rgb_and_sizes():
    out = _decode([harness.media("china.jpg"), harness.media("fashion-mnist", "t10k-0000[0-4].png")])
    by_name = {os.path.basename(f.source_uri): f for f in out["frames"]}
    china = by_name["china.jpg"]
    assert (china.width, china.height, china.frame_index, china.timestamp_s) == (640, 427, 0, None)
    reference = cv2.cvtColor(cv2.imread(harness.media("china.jpg")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(china.pixels, reference)
    png = by_name["t10k-00000.png"]
    assert png.pixels.shape == (28, 28, 3)
    assert np.array_equal(png.pixels[..., 0], png.pixels[..., 2])  # grey expanded to RGB
    assert len(out["outcomes"]) == 6 and out["dead"] == []


def test_bad_inputs_are_dead_letters_and_every_file_is_accounted_for():
    d = harness.tmpdir()
    china = harness.media("china.jpg")
    with open(china, "rb") as f:
        jpeg = f.read()
    png = _head(harness.media("fashion-mnist", "t10k-00000.png"), 10_000)
    files = {
        "good photo.jpg": jpeg,                    # space in the name
        "фото-кадр.jpg": jpeg,                     # unicode name, same pixels
        "jpeg-named.png": jpeg,                    # format decided by content
        "empty.jpg": b"",
        "truncated.jpg": jpeg[: len(jpeg) // 3],
        "truncated.png": png[: len(png) // 2],
        "text.mp4": b"this is not a video\n" * 10,
        "not-media.bin": os.urandom(4096),
        "fake-video.avi": b"RIFF\x00\x10\x00\x00AVI LIST" + b"\x00" * 200,  # header only
    }
    for name, data in files.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    missing_glob = os.path.join(d, "nothing-here", "*.jpg")
    out = _decode([os.path.join(d, "*"), os.path.join(d, "*.jpg"), missing_glob])

    outcomes = {os.path.basename(o.source_uri): o for o in out["outcomes"]}
    assert sorted(outcomes) == sorted(files)  # each file once, though two globs match some
    decoded = {n for n, o in outcomes.items() if not o.failed}
    assert decoded == {"good photo.jpg", "фото-кадр.jpg", "jpeg-named.png"}
    dead = {os.path.basename(x.source_uri): x for x in out["dead"]}
    assert set(dead) == set(files) - decoded | {"*.jpg"}
    assert dead["*.jpg"].stage == "match" and dead["*.jpg"].source_uri == missing_glob
    assert "empty file" in dead["empty.jpg"].error
    assert "could not decode this JPEG" in dead["truncated.jpg"].error
    assert "could not decode this PNG" in dead["truncated.png"].error
    assert "not an image or video" in dead["text.mp4"].error
    assert "not an image or video" in dead["not-media.bin"].error
    assert dead["fake-video.avi"].stage == "decode"
    assert all(x.stage in ("decode", "match") and x.error for x in out["dead"])
    assert len(out["frames"]) == 3
    assert len({f.pixel_hash for f in out["frames"]}) == 1  # identical pixels, identical hash


def test_other_image_formats_and_pixel_layouts():
    """Formats and layouts the bundled media do not cover, made from a real photo."""
    d = harness.tmpdir()
    bgr = cv2.imread(harness.media("china.jpg"))
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    rgba = cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)
    made = {
        "photo.webp": bgr, "photo.bmp": bgr, "photo.tiff": bgr, "grey.png": grey,
        "alpha.png": rgba, "deep.png": bgr.astype(np.uint16) * 257,
    }
    for name, image in made.items():
        assert cv2.imwrite(os.path.join(d, name), image), name
    out = _decode([d])  # a directory stands for everything below it
    assert out["dead"] == [] and len(out["outcomes"]) == len(made)
    frames = {os.path.basename(f.source_uri): f for f in out["frames"]}
    assert set(frames) == set(made)
    for name, frame in frames.items():
        assert frame.pixels.shape == (427, 640, 3) and frame.pixels.dtype == np.uint8, name
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    for lossless in ("photo.bmp", "photo.tiff", "alpha.png", "deep.png"):
        np.testing.assert_array_equal(frames[lossless].pixels, rgb, err_msg=lossless)
    assert np.array_equal(frames["grey.png"].pixels[..., 0], grey)


def test_other_video_containers_made_with_ffmpeg():
    d = harness.tmpdir()
    cup = harness.media("cup.mp4")
    for name in ("cup.ts", "cup.mkv", "cup.mov"):
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", cup, "-c", "copy", "-t", "4",
                        os.path.join(d, name)], check=True)
    out = _decode([os.path.join(d, "*")], video_fps=1.0)
    assert out["dead"] == []
    counts = {os.path.basename(o.source_uri): (o.media_type, o.frames) for o in out["outcomes"]}
    assert counts == {n: ("video", 4) for n in ("cup.ts", "cup.mkv", "cup.mov")}
    assert {sniff_media_type(_head(os.path.join(d, n)))[1] for n in counts} == {
        "MPEG-TS", "Matroska/WebM", "MP4/QuickTime"}


def test_recursive_glob_skips_directories():
    d = harness.tmpdir()
    os.makedirs(os.path.join(d, "cam1", "day1"))
    shutil.copy(harness.media("china.jpg"), os.path.join(d, "cam1", "day1", "a.jpg"))
    shutil.copy(harness.media("flower.jpg"), os.path.join(d, "cam1", "b.jpg"))
    out = _decode([os.path.join(d, "**")])
    assert sorted(os.path.basename(o.source_uri) for o in out["outcomes"]) == ["a.jpg", "b.jpg"]
    assert out["dead"] == []


def test_decode_image_raises_clear_error():
    with pytest.raises(DecodeError, match="truncated or corrupt"):
        decode_image(b"\xff\xd8\xff\xe0" + b"\x00" * 20, "JPEG")


def test_gcs_inputs_through_the_storage_emulator():
    from transforms.common import gcp_emulators
    with harness.gcs_emulator() as bucket:
        assert gcp_emulators.use_emulators_if_configured()
        bucket.blob("cams/cup clip.mp4").upload_from_filename(harness.media("cup.mp4"))
        bucket.blob("cams/china.jpg").upload_from_filename(harness.media("china.jpg"))
        bucket.blob("cams/broken.jpg").upload_from_string(b"\xff\xd8\xff\xe0 truncated")
        out = _decode([f"gs://{bucket.name}/cams/*"], video_fps=1.0)
    uris = sorted({f.source_uri for f in out["frames"]})
    assert uris == [f"gs://{bucket.name}/cams/china.jpg", f"gs://{bucket.name}/cams/cup clip.mp4"]
    assert len(out["frames"]) == 1 + 9
    [dead] = out["dead"]
    assert dead.source_uri == f"gs://{bucket.name}/cams/broken.jpg" and dead.stage == "decode"
    assert len(out["outcomes"]) == 3


def test_video_fps_validated():
    with pytest.raises(ValueError, match="video_fps"):
        DecodeMedia(video_fps="fast")


if __name__ == "__main__":
    harness.main(__file__)


def _make_edge_cases(d):
    """Edge-case files next to real media; returns {name: expected failure reason or None}."""
    with open(harness.media("china.jpg"), "rb") as f:
        jpeg = f.read()
    png = _head(harness.media("fashion-mnist", "t10k-00000.png"), 10_000)
    files = {"empty.jpg": b"", "not media.txt": b"camera 7 was offline\n" * 20,
             "truncated.jpg": jpeg[: len(jpeg) // 3], "truncated.png": png[: len(png) // 2],
             "bomb.png": harness.png_header_only(60_000, 60_000), "photo.mp4": jpeg}
    for name, data in files.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "sine=duration=1",
                    os.path.join(d, "audio only.mp4")], check=True)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "sine=duration=1", "-f", "lavfi",
                    "-i", "color=s=64x64:d=1", "-map", "0", "-map", "1", "-frames:v", "0", "-c:v",
                    "mpeg4", os.path.join(d, "zero frames.mkv")], check=True)
    shutil.copy(harness.media("cup.mp4"), os.path.join(d, "камера 1 (копия).mp4"))
    return {"empty.jpg": "empty", "not media.txt": "not_media", "truncated.jpg": "corrupt",
            "truncated.png": "corrupt", "bomb.png": "too_many_pixels", "photo.mp4": None,
            "audio only.mp4": "no_video_stream", "zero frames.mkv": "no_frames",
            "камера 1 (копия).mp4": None}


def test_edge_cases_each_get_one_outcome_a_reason_and_a_counter():
    d = harness.tmpdir()
    expected = _make_edge_cases(d)
    collected = harness.tmpdir()
    pipeline = beam.Pipeline(options=harness.local_options())
    decoded = pipeline | beam.Create([os.path.join(d, "*")]) | DecodeMedia(video_fps=1.0)
    for name, pcoll in (("frames", decoded.frames), ("outcomes", decoded.outcomes),
                        ("dead", decoded.dead_letters)):
        _ = (pcoll | f"List{name}" >> beam.combiners.ToList()
             | f"Dump{name}" >> beam.Map(harness._dump, os.path.join(collected, name)))  # noqa
    result = pipeline.run()
    result.wait_until_finish()
    import pickle
    out = {}
    for name in ("frames", "outcomes", "dead"):
        with open(os.path.join(collected, name), "rb") as f:
            out[name] = pickle.load(f)
    outcomes = {os.path.basename(o.source_uri): o for o in out["outcomes"]}
    assert sorted(outcomes) == sorted(expected)
    assert {n for n, o in outcomes.items() if o.failed} == {n for n, r in expected.items() if r}
    dead = {os.path.basename(x.source_uri): x for x in out["dead"]}
    assert set(dead) == {n for n, r in expected.items() if r}
    assert "3600000000 pixels" in dead["bomb.png"].error and "not decoded" in dead["bomb.png"].error
    assert "no video stream (streams: audio)" in dead["audio only.mp4"].error
    assert "zero-frame video" in dead["zero frames.mkv"].error
    video = outcomes["камера 1 (копия).mp4"]
    assert video.frames == 9 and video.video_info["codec"] == "h264"
    assert outcomes["photo.mp4"].media_type == "image"  # content, not extension
    counters = {}
    for counter in result.metrics().query()["counters"]:  # the same name may count in several steps
        counters[counter.key.metric.name] = counters.get(counter.key.metric.name, 0) + counter.committed
    reasons = [r for r in expected.values() if r]
    for reason in set(reasons):
        assert counters[f"failed_decode_{reason}"] == reasons.count(reason), reason
    assert counters["files_failed"] == len(reasons) and counters["files_matched"] == len(expected)
    assert counters["frames_decoded"] == len(out["frames"]) == 1 + 9
    assert counters["videos_planned"] == 1 and counters["images_decoded"] == 1


def test_long_video_ranges_decoded_separately_lose_and_double_nothing():
    path = harness.media("vtest.avi")  # keyframes at 0, 25, 50, 75 s
    split = _decode([path], video_fps=0, pixels=False, split_seconds=10.0)
    whole = _decode([path], video_fps=0, pixels=False, split_seconds=None)
    assert sorted(f.frame_index for f in split["frames"]) == list(range(795))
    key = lambda f: (f.frame_index, f.timestamp_s, f.pixel_hash)  # noqa: E731
    assert sorted(map(key, split["frames"])) == sorted(map(key, whole["frames"]))
    [outcome] = split["outcomes"]
    assert (outcome.frames, outcome.video_info["ranges"], outcome.failed) == (795, 4, False)
    assert split["dead"] == [] and whole["outcomes"][0].video_info["ranges"] == 1


def test_frames_carry_file_metadata_and_resize_applies_to_images():
    out = _decode([harness.media("china.jpg"), harness.media("cup.mp4")], max_side=320)
    by_type = {}
    for frame in out["frames"]:
        by_type.setdefault(frame.media_type, []).append(frame)
    [photo] = by_type["image"]
    with open(harness.media("china.jpg"), "rb") as f:
        data = f.read()
    import hashlib
    assert (photo.width, photo.height, photo.pixels.shape) == (320, 214, (214, 320, 3))
    assert (photo.format, photo.channels, photo.file_size) == ("JPEG", 3, len(data))
    assert photo.content_sha256 == hashlib.sha256(data).hexdigest()
    assert photo.metadata().content_sha256 == photo.content_sha256
    clip = by_type["video"][0]
    assert (clip.format, clip.channels, clip.file_size) == (
        "MP4/QuickTime/h264", 3, os.path.getsize(harness.media("cup.mp4")))
    assert (clip.width, clip.height) == (640, 480)  # max_side applies to still images only


@pytest.mark.parametrize("options, match", [
    ({"sampling": "often"}, "sampling mode"), ({"every_n": 0, "sampling": "every_n"}, "every_n"),
    ({"max_pixels": -1}, "max_pixels"), ({"split_seconds": float("nan")}, "split_seconds"),
    ({"scene_threshold": 2.0}, "scene_threshold"), ({"video_threads": -1}, "video_threads")])
def test_options_validated_with_the_parameter_named(options, match):
    with pytest.raises(ValueError, match=match):
        DecodeMedia(**options)


def test_mine_summary_reconciles_and_records_frames_per_video():
    from beam_pipelines import mine
    d = os.path.join(harness.tmpdir(), "cam drop")
    os.makedirs(d)
    shutil.copy(harness.media("cup.mp4"), d)
    shutil.copy(harness.media("china.jpg"), d)
    shutil.copy(os.path.join(harness.OPENCV_DATA, "tree.avi"), d)
    with open(harness.media("vtest.avi"), "rb") as f:
        data = f.read()
    with open(os.path.join(d, "cut.avi"), "wb") as f:
        f.write(data[: len(data) // 2])
    out_dir = harness.tmpdir("mine-out-")
    with harness.mongod() as mongo:
        summary = mine.run([f"--input={d}/*", f"--output_dir={out_dir}", f"--mongo_uri={mongo.uri}",
                            "--budget=5", "--video_sampling=every_n", "--video_every_n=10",
                            "--video_split_seconds=20"])
    assert summary["files_matched"] == 4 == summary["files_decoded"] + summary["files_failed"]
    videos = {os.path.basename(k): v for k, v in summary["videos"].items()}
    assert sorted(videos) == ["cup.mp4", "cut.avi", "tree.avi"]
    assert videos["cup.mp4"]["frames"] == 22 and videos["tree.avi"]["frames"] == 7
    assert videos["cut.avi"]["declared_frames"] == 795
    assert summary["frames_decoded"] == 1 + sum(v["frames"] for v in videos.values())
    assert summary["dead_letters"] == 1  # the truncated AVI, once
    assert summary["decode"]["sampling"] == "every_n"


def test_pixel_hash_equal_exactly_for_identical_frames():
    from transforms.decode.ptransforms import pixel_hash
    frame = cv2.cvtColor(cv2.imread(harness.media("china.jpg")), cv2.COLOR_BGR2RGB)
    assert pixel_hash(frame) == pixel_hash(frame.copy()) == pixel_hash(np.asfortranarray(frame))
    changed = frame.copy()
    changed[200, 300, 1] ^= 1  # one bit of one pixel
    assert pixel_hash(changed) != pixel_hash(frame)
    flat = frame.reshape(427 * 640, 1, 3)  # same bytes, another shape
    assert pixel_hash(flat) != pixel_hash(frame) and len(pixel_hash(frame)) == 32


def test_ranges_of_one_video_decoded_by_two_worker_processes():
    """The fan-out on a multi-process runner: the 4 ranges of vtest.avi (keyframes every 25 s) are
    decoded in SDK worker processes, each by one; every frame arrives exactly once, identical to a
    decode in one piece."""
    def build(p):
        decoded = (p | beam.Create([harness.media("vtest.avi")])
                   | DecodeMedia(video_fps=0, split_seconds=10.0))
        return {"keys": decoded.frames | beam.Map(lambda f: (f.frame_index, f.pixel_hash, os.getpid())),
                "outcomes": decoded.outcomes}
    out = harness.run_collect(build, harness.local_options(
        direct_running_mode="multi_processing", direct_num_workers=2))
    assert sorted(index for index, _, _ in out["keys"]) == list(range(795))
    workers = {}
    for index, _, pid in out["keys"]:
        workers.setdefault(index // 250, set()).add(pid)  # ranges start at 0, 25, 50, 75 s
    assert all(len(pids) == 1 for pids in workers.values())  # one worker decodes one range
    assert os.getpid() not in set().union(*workers.values())  # in SDK worker processes
    [outcome] = out["outcomes"]
    assert outcome.video_info["ranges"] == 4 and outcome.frames == 795
    whole = _decode([harness.media("vtest.avi")], video_fps=0, pixels=False, split_seconds=None)
    assert {i: digest for i, digest, _ in out["keys"]} == {f.frame_index: f.pixel_hash
                                                           for f in whole["frames"]}


@pytest.mark.parametrize("split", [None, 2.0])
def test_corrupt_middle_keeps_other_frames_and_one_dead_letter_says_where_and_why(split):
    """cup.mp4 with 300 kB of its H.264 data zeroed in the middle: the frames before and after
    the hole decode; the video gets exactly one dead letter, whatever the number of ranges."""
    d = harness.tmpdir()
    with open(harness.media("cup.mp4"), "rb") as f:
        data = bytearray(f.read())
    middle = len(data) // 2
    data[middle:middle + 300_000] = bytes(300_000)
    holed = os.path.join(d, "holed.mp4")
    with open(holed, "wb") as f:
        f.write(data)
    out = _decode([holed], video_fps=0, pixels=False, split_seconds=split)
    indices = sorted(f.frame_index for f in out["frames"])
    assert 0 < len(indices) < 217 and indices[0] == 0 and indices[-1] == 216  # both sides of the hole
    [dead] = out["dead"]
    missing = 217 - len(indices)
    assert f"{missing} of 217 sampled frames did not decode, the first at" in dead.error
    assert "decoder error at" in dead.error and "Invalid data" in dead.error
    [outcome] = out["outcomes"]
    assert outcome.frames == len(indices) and not outcome.failed
