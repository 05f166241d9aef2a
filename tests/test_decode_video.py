"""transforms.decode.video on the opencv-doc clips and on videos made here with ffmpeg."""
import math
import os
import subprocess

import numpy as np
import pytest

from tests import harness
from transforms.decode.ptransforms import pixel_hash
from transforms.decode.media_types import DecodeError
from transforms.decode.video import (RangeReport, Sampling, VideoFrame, decode_range, plan_video,
                              split_ranges, wanted_pts)

SAMPLINGS = [Sampling("all"), Sampling("fps", fps=1.0), Sampling("fps", fps=2.5),
             Sampling("every_n", every_n=7), Sampling("keyframes"), Sampling("scene", scene_threshold=0.05)]


def _ffmpeg(*args):
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def made():
    """Videos made from the real clips: an H.264 re-encode with 1-second keyframes and B-frames,
    a two-shot edit (cup then box), an audio-only file and a video stream with no frame, an MPEG-2 program stream."""
    d = harness.tmpdir()
    paths = {name: os.path.join(d, name) for name in
             ("gop.mp4", "cut.mp4", "audio.m4a", "empty.mkv", "program.mpg")}
    _ffmpeg("-i", harness.media("vtest.avi"), "-t", "12", "-c:v", "libx264", "-preset", "ultrafast",
            "-g", "10", "-bf", "2", "-pix_fmt", "yuv420p", paths["gop.mp4"])
    _ffmpeg("-i", harness.media("cup.mp4"), "-i", harness.media("box.mp4"), "-filter_complex",
            "[0:v]trim=0:2,setpts=PTS-STARTPTS,scale=320:240[a];"
            "[1:v]trim=0:2,setpts=PTS-STARTPTS,scale=320:240[b];[a][b]concat=n=2:v=1[v]",
            "-map", "[v]", "-r", "25", "-c:v", "libx264", "-preset", "ultrafast", "-g", "250",
            paths["cut.mp4"])
    # An MPEG-2 program stream (DVR cameras): no index, seeking lands by estimated byte position.
    _ffmpeg("-i", harness.media("vtest.avi"), "-t", "6", "-c:v", "mpeg2video", paths["program.mpg"])
    _ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=2", paths["audio.m4a"])
    _ffmpeg("-f", "lavfi", "-i", "sine=duration=1", "-f", "lavfi", "-i", "color=c=red:s=64x64:d=1",
            "-map", "0", "-map", "1", "-frames:v", "0", "-c:v", "mpeg4", paths["empty.mkv"])
    return paths


def _decode_all(path, sampling, split_seconds):
    plan = plan_video(path)
    frames, reports = [], []
    for video_range in split_ranges(plan, path, split_seconds):
        for item in decode_range(path, video_range, sampling):
            (reports if isinstance(item, RangeReport) else frames).append(item)
    return plan, frames, reports


def test_plan_records_video_metadata_once():
    plan = plan_video(harness.media("vtest.avi"))
    info = plan.info
    assert (info.codec, info.width, info.height, info.fps) == ("msmpeg4", 768, 576, 10.0)
    assert (info.frame_count, info.declared_frames, info.duration_s, info.keyframes) == (795, 795, 79.5, 4)
    assert plan.truncated is None and len(plan.pts) == 795
    # box.mp4 declares 456 frames; its last packet is cut by the edit list, so 455 are shown.
    box = plan_video(harness.media("box.mp4")).info
    assert (box.codec, box.frame_count, box.declared_frames) == ("h264", 455, 456)


@pytest.mark.parametrize("split_seconds", [None, 0.5, 2.0, 5.0])
def test_ranges_partition_the_frames_and_start_on_keyframes(made, split_seconds):
    plan = plan_video(made["gop.mp4"])
    ranges = split_ranges(plan, "x", split_seconds)
    assert [p for r in ranges for p in r.pts] == [int(p) for p in plan.pts]  # each frame once, in order
    assert [r.first_index for r in ranges] == list(np.cumsum([0] + [len(r.pts) for r in ranges[:-1]]))
    keys = set(int(k) for k in plan.keyframe_pts)
    assert all(r.start_pts in keys for r in ranges)
    seconds = plan.time_base[0] / plan.time_base[1]
    if split_seconds:
        assert all((b.start_pts - a.start_pts) * seconds >= split_seconds - 1e-6
                   for a, b in zip(ranges, ranges[1:]))
        assert len(ranges) == math.ceil(12 / max(split_seconds, 1.0))  # keyframes every second


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=lambda s: f"{s.mode}-{s.fps}-{s.every_n}")
@pytest.mark.parametrize("name", ["gop.mp4", "cup.mp4", "box.mp4", "program.mpg"])
def test_split_decoding_equals_whole_decoding_and_full_decode(made, name, sampling):
    """No frame lost or doubled at a range boundary, and frames sampled with skipped decoding
    are pixel-identical to the same frames of a full decode."""
    path = made[name] if name in made else harness.media(name)
    _, whole, [whole_report] = _decode_all(path, sampling, None)
    _, split, reports = _decode_all(path, sampling, 2.0)
    key = lambda f: (f.frame_index, f.timestamp_s, pixel_hash(f.pixels))  # noqa: E731
    if sampling.mode == "scene":  # each range starts with a new scene by construction
        assert {f.frame_index for f in whole} <= {f.frame_index for f in split}
    else:
        assert sorted(map(key, split)) == sorted(map(key, whole))
    assert whole_report.missing == 0 and all(r.missing == 0 and r.error is None for r in reports)
    _, full, _ = _decode_all(path, Sampling("all"), None)
    by_index = {f.frame_index: pixel_hash(f.pixels) for f in full}
    assert all(by_index[f.frame_index] == pixel_hash(f.pixels) for f in whole)
    indices = [f.frame_index for f in whole]
    assert len(indices) == len(set(indices))


@pytest.mark.parametrize("name", ["gop.mp4", "box.mp4", "program.mpg"])
def test_decoding_the_wanted_frames_again_gives_the_same_pixels(made, name):
    """RangeDecoder(wanted=pts) (frames decoded again by index, two-stage scoring): exactly the
    wanted frames, pixel-identical to a full decode, with the unwanted non-reference frames skipped."""
    from transforms.decode.video import RangeDecoder
    path = made[name] if name in made else harness.media(name)
    _, full, _ = _decode_all(path, Sampling("all"), None)
    by_index = {f.frame_index: pixel_hash(f.pixels) for f in full}
    whole = split_ranges(plan_video(path), path, None)[0]
    wanted = sorted({3, 4, len(whole.pts) // 2, len(whole.pts) - 1})
    items = list(RangeDecoder(whole, wanted={whole.pts[i] for i in wanted}).decode(path))
    frames = [f for f in items if isinstance(f, VideoFrame)]
    assert sorted(f.frame_index for f in frames) == wanted
    assert all(pixel_hash(f.pixels) == by_index[f.frame_index] for f in frames)
    assert items[-1].missing == 0 and items[-1].emitted == len(wanted)


def test_sampling_rules_follow_presentation_times(made):
    path = made["gop.mp4"]
    plan, frames, [report] = _decode_all(path, Sampling("fps", fps=1.0), None)
    seconds = plan.time_base[0] / plan.time_base[1]
    times = (plan.pts - plan.pts[0]) * seconds
    expected = [i for i, t in enumerate(times) if i == 0 or math.floor(t + 1e-6) > math.floor(times[i - 1] + 1e-6)]
    assert sorted(f.frame_index for f in frames) == expected
    assert all(f.timestamp_s == pytest.approx(times[f.frame_index], abs=1e-6) for f in frames)
    # 1 fps with a keyframe every second: only the keyframes are decoded.
    assert report.decoded == len(frames) == 12
    _, frames, _ = _decode_all(path, Sampling("every_n", every_n=7), 3.0)
    assert sorted(f.frame_index for f in frames) == list(range(0, len(plan.pts), 7))
    _, frames, reports = _decode_all(path, Sampling("keyframes"), None)
    keys = np.searchsorted(plan.pts, plan.keyframe_pts)
    assert sorted(f.frame_index for f in frames) == list(keys)
    assert reports[0].decoded == len(keys)  # nothing but keyframes decoded


def test_timestamps_are_container_presentation_times_and_increase_with_index():
    plan, frames, _ = _decode_all(harness.media("box.mp4"), Sampling("all"), None)
    frames.sort(key=lambda f: f.frame_index)
    assert [f.frame_index for f in frames] == list(range(455))
    times = [f.timestamp_s for f in frames]
    assert times == sorted(times) and len(set(times)) == 455
    assert times[1] == pytest.approx(0.034) and times[-1] == pytest.approx(15.151)


def test_scene_sampling_finds_the_cut(made):
    _, frames, [report] = _decode_all(made["cut.mp4"], Sampling("scene", scene_threshold=0.15), None)
    first, second = sorted(frames, key=lambda f: f.frame_index)  # 2 s of cup, then box
    assert first.frame_index == 0 and 1.95 <= second.timestamp_s <= 2.1
    assert report.wanted == report.decoded == 101 and report.missing == 0  # every frame compared


def test_every_frame_is_decoded_with_one_thread_or_several():
    path = harness.media("cup.mp4")
    plan = plan_video(path)
    [whole] = split_ranges(plan, path, None)
    one = [f for f in decode_range(path, whole, Sampling("all"), threads=1) if isinstance(f, VideoFrame)]
    many = [f for f in decode_range(path, whole, Sampling("all"), threads=2) if isinstance(f, VideoFrame)]
    assert len(one) == 217 and [pixel_hash(f.pixels) for f in one] == [pixel_hash(f.pixels) for f in many]


def test_no_video_stream_and_zero_frames_are_clear_errors(made):
    with pytest.raises(DecodeError, match="no video stream .streams: audio.") as raised:
        plan_video(made["audio.m4a"])
    assert raised.value.reason == "no_video_stream"
    with pytest.raises(DecodeError, match="no coded frame") as raised:
        plan_video(made["empty.mkv"])
    assert raised.value.reason == "no_frames"


def test_truncated_file_is_detected_by_the_plan():
    d = harness.tmpdir()
    with open(harness.media("vtest.avi"), "rb") as f:
        data = f.read()
    cut = os.path.join(d, "cut.avi")
    with open(cut, "wb") as f:
        f.write(data[: len(data) // 2])
    plan = plan_video(cut)
    assert plan.info.declared_frames == 795 and 300 < plan.info.frame_count < 500
    assert "truncated" in plan.truncated and "79.500 s" in plan.truncated
    # An index-less AVI flags every packet as a keyframe: not trusted, so it is not split.
    assert len(plan.keyframe_pts) == 1 and len(split_ranges(plan, cut, 5.0)) == 1


def test_wanted_pts_agree_across_range_boundaries(made):
    plan = plan_video(made["gop.mp4"])
    for sampling in SAMPLINGS[:4]:
        whole = wanted_pts(split_ranges(plan, "x", None)[0], sampling)
        parts = set().union(*(wanted_pts(r, sampling) for r in split_ranges(plan, "x", 1.0)))
        assert parts == whole, sampling


def test_display_rotation_is_applied_like_ffmpeg(made):
    """A phone-style portrait clip (landscape pictures plus a 90-degree display matrix) decodes
    upright, pixel for pixel what ffmpeg's autorotate gives."""
    rotated = os.path.join(os.path.dirname(made["gop.mp4"]), "portrait.mp4")
    _ffmpeg("-i", made["gop.mp4"], "-t", "2", "-c", "copy", "-metadata:s:v:0", "rotate=90", rotated)
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", rotated, "-frames:v", "1", "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "-"], check=True, capture_output=True).stdout
    _, frames, _ = _decode_all(rotated, Sampling("all"), None)
    first = min(frames, key=lambda f: f.frame_index).pixels
    assert first.shape == (768, 576, 3)  # the stored pictures are 768x576 landscape
    expected = np.frombuffer(raw, np.uint8).reshape(first.shape).astype(int)
    # OpenCV's I420 conversion replicates chroma where swscale interpolates: about 1 grey level.
    assert np.abs(first.astype(int) - expected).mean() < 2.5


def test_sampling_validated():
    with pytest.raises(ValueError, match="one of"):
        Sampling("sometimes").validated()
    with pytest.raises(ValueError, match="every_n"):
        Sampling("every_n", every_n=0).validated()
    with pytest.raises(ValueError, match="scene_threshold"):
        Sampling("scene", scene_threshold=0).validated()


if __name__ == "__main__":
    harness.main(__file__)
