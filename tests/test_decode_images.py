"""transforms.decode.images on a real photo and on variants of it made here (orientation, CMYK, bombs)."""
import hashlib
import io

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from tests import harness
from transforms.decode import images
from transforms.decode.images import DecodeError, apply_orientation, decode_image, probe_image


@pytest.fixture(scope="module")
def photo():
    """china.jpg (scikit-learn's sample photo, 640x427) as a Pillow image and its bytes."""
    with open(harness.media("china.jpg"), "rb") as f:
        data = f.read()
    return Image.open(io.BytesIO(data)).convert("RGB"), data


def _encode(image, fmt="PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow_exif_transpose(photo, orientation):
    image, _ = photo
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(image, "PNG", exif=exif.tobytes())  # lossless: exact comparison
    decoded = decode_image(data)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    np.testing.assert_array_equal(decoded.pixels, expected)
    assert decoded.pixels.shape == ((640, 427, 3) if orientation >= 5 else (427, 640, 3))


def test_apply_orientation_rejects_nothing_and_keeps_unknown_values():
    pixels = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    assert apply_orientation(pixels, 1) is pixels
    assert apply_orientation(pixels, 9) is pixels


def test_metadata_capture_time_hash_and_size(photo):
    image, _ = photo
    exif = Image.Exif()
    exif[0x0132] = "2020:01:01 00:00:00"  # DateTime: used only without DateTimeOriginal
    exif.get_ifd(0x8769)[0x9003] = "2023:07:14 09:30:05"
    data = _encode(image, "JPEG", exif=exif.tobytes(), quality=90)
    decoded = decode_image(data, "JPEG")
    assert decoded.capture_time == "2023-07-14T09:30:05"
    assert decoded.content_sha256 == hashlib.sha256(data).hexdigest()
    assert (decoded.file_size, decoded.format, decoded.channels) == (len(data), "JPEG", 3)
    plain = decode_image(_encode(image, "JPEG"))
    assert plain.capture_time is None


def test_cmyk_jpeg_converted_to_rgb(photo):
    image, _ = photo
    data = _encode(image.convert("CMYK"), "JPEG", quality=95)
    decoded = decode_image(data)
    assert decoded.channels == 4 and decoded.pixels.shape == (427, 640, 3)
    reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)
    assert np.abs(decoded.pixels.astype(np.int16) - reference).mean() < 2.0


@pytest.mark.parametrize("mode, channels", [("L", 1), ("LA", 2), ("RGBA", 4), ("P", 3), ("I;16", 1)])
def test_pixel_layouts_become_rgb_uint8(photo, mode, channels):
    image, _ = photo
    variant = image.convert("L").convert(mode) if mode == "I;16" else image.convert(mode)
    decoded = decode_image(_encode(variant, "PNG"))
    assert decoded.channels == channels
    assert decoded.pixels.shape == (427, 640, 3) and decoded.pixels.dtype == np.uint8
    if mode in ("L", "LA"):
        np.testing.assert_array_equal(decoded.pixels[..., 0], np.asarray(image.convert("L")))


def test_png_headers_read_directly_are_pillows(photo, monkeypatch):
    """The direct PNG header reader gives what Pillow gives, on real PNGs and on every colour
    type, bit depth, palette transparency; an eXIf chunk is left to Pillow."""
    image, _ = photo
    small = image.resize((64, 43))
    palette_alpha = small.convert("P")
    palette_alpha.info["transparency"] = 0
    variants = [_encode(small.convert(mode)) for mode in ("L", "LA", "RGB", "RGBA", "P", "I;16", "1")]
    variants += [_encode(palette_alpha, transparency=0), _encode(small, optimize=True),
                 cv2.imencode(".png", np.zeros((5, 7, 4), np.uint16))[1].tobytes()]
    for name in ("fashion-mnist/t10k-00000.png", "fashion-mnist/t10k-00007.png"):
        with open(harness.media(*name.split("/")), "rb") as f:
            variants.append(f.read())
    with open("/usr/share/doc/opencv-doc/examples/data/digits.png", "rb") as f:
        variants.append(f.read())
    direct = [images.probe_png(data) for data in variants]
    assert None not in direct
    monkeypatch.setattr(images, "probe_png", lambda data: None)  # Pillow alone
    assert direct == [probe_image(data) for data in variants]
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: Pillow must read it
    with_exif = _encode(small, exif=exif.tobytes())
    monkeypatch.undo()
    assert images.probe_png(with_exif) is None and probe_image(with_exif).orientation == 6


@pytest.mark.parametrize("width, height", [(100_000, 100_000), (20_000, 10_000)])
def test_huge_declared_dimensions_refused_before_decoding(width, height):
    data = harness.png_header_only(width, height)
    with pytest.raises(DecodeError, match="pixels") as raised:
        decode_image(data, "PNG", max_pixels=100_000_000)
    assert raised.value.reason == "too_many_pixels" and "not decoded" in str(raised.value)


def test_header_probe_reads_declared_size_without_decoding():
    header = probe_image(harness.png_header_only(12_000, 9_000))  # 108 MP declared, 100 bytes of data
    assert (header.format, header.width, header.height, header.channels) == ("PNG", 12_000, 9_000, 3)
    with pytest.raises(DecodeError, match="108,000,000 pixels, more than the limit of 50,000,000"):
        decode_image(harness.png_header_only(12_000, 9_000), "PNG", max_pixels=50_000_000)


def test_pixel_limit_is_an_option(photo):
    _, data = photo
    with pytest.raises(DecodeError, match="more than the limit of 100,000") as raised:
        decode_image(data, "JPEG", max_pixels=100_000)
    assert raised.value.reason == "too_many_pixels"
    assert decode_image(data, "JPEG", max_pixels=640 * 427).pixels.shape == (427, 640, 3)
    assert decode_image(data, "JPEG", max_pixels=None).pixels.shape == (427, 640, 3)


@pytest.mark.parametrize("max_side, shape", [(320, (214, 320, 3)), (100, (67, 100, 3)),
                                             (640, (427, 640, 3)), (5000, (427, 640, 3))])
def test_resize_longest_side_keeps_aspect_and_is_close_to_full_decode(photo, max_side, shape):
    _, data = photo
    decoded = decode_image(data, "JPEG", max_side=max_side)  # JPEG: reduced DCT decode if >= 2x
    assert decoded.pixels.shape == shape
    full = cv2.cvtColor(cv2.imread(harness.media("china.jpg")), cv2.COLOR_BGR2RGB)
    reference = cv2.resize(full, shape[1::-1], interpolation=cv2.INTER_AREA).astype(np.float64)
    # libjpeg's DCT-domain 1/2..1/8 scaling samples slightly differently from area resampling.
    psnr = 10 * np.log10(255.0 ** 2 / max(np.mean((decoded.pixels - reference) ** 2), 1e-12))
    assert psnr > 27.0


def test_truncated_and_garbage_bytes_raise_clear_errors(photo):
    _, data = photo
    for broken in (data[: len(data) // 3], b"\xff\xd8\xff\xe0" + b"\x00" * 20):
        with pytest.raises(DecodeError, match="truncated or corrupt") as raised:
            decode_image(broken, "JPEG")
        assert raised.value.reason == "corrupt"


if __name__ == "__main__":
    harness.main(__file__)
