"""What a file is, decided from its first bytes (never from its name), and the decode error type."""
from typing import Optional, Tuple

IMAGE = "image"
VIDEO = "video"
HEAD_BYTES = 512  # MPEG-TS needs two 188-byte packets to be recognised

# Leading bytes of the containers we recognise: (offset, magic, media type, format name).
_SIGNATURES = (
    (0, b"\xff\xd8\xff", IMAGE, "JPEG"),
    (0, b"\x89PNG\r\n\x1a\n", IMAGE, "PNG"),
    (0, b"GIF87a", IMAGE, "GIF"),
    (0, b"GIF89a", IMAGE, "GIF"),
    (0, b"BM", IMAGE, "BMP"),
    (0, b"II*\x00", IMAGE, "TIFF"),
    (0, b"MM\x00*", IMAGE, "TIFF"),
    (0, b"\x00\x00\x00\x0cjP  \r\n\x87\n", IMAGE, "JPEG 2000"),
    (0, b"\xff\x4f\xff\x51", IMAGE, "JPEG 2000"),
    (0, b"\x1aE\xdf\xa3", VIDEO, "Matroska/WebM"),
    (0, b"FLV", VIDEO, "FLV"),
    (0, b"\x00\x00\x01\xba", VIDEO, "MPEG-PS"),
    (0, b"0&\xb2u\x8e\x66\xcf\x11", VIDEO, "ASF/WMV"),
    (0, b"OggS", VIDEO, "Ogg"),
)
_IMAGE_FTYP_BRANDS = (b"avif", b"avis", b"heic", b"heix", b"mif1", b"msf1")


class DecodeError(ValueError):
    """A file or frame that cannot be decoded; the message says why, for a person to act on.

    ``reason`` is a short machine-readable cause (``empty``, ``not_media``, ``corrupt``,
    ``too_many_pixels``, ``no_video_stream``, ``no_frames``, ...) used to name failure counters.
    """

    def __init__(self, message: str, reason: str = "corrupt"):
        super().__init__(message)
        self.reason = reason


def sniff_media_type(head: bytes) -> Optional[Tuple[str, str]]:
    """Identifies a media container from the first bytes of a file.

    Parameters
    ----------
    head : bytes
        The first bytes of the file: 16 suffice for most containers, MPEG-TS needs 189.

    Returns
    -------
    (media_type, format) or None
        ``media_type`` is ``"image"`` or ``"video"``; ``format`` a human-readable container name.
        ``None`` when the bytes match no known image or video container.
    """
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return IMAGE, "WebP"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return VIDEO, "AVI"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _IMAGE_FTYP_BRANDS:
            return IMAGE, "HEIF/AVIF"
        return VIDEO, "MP4/QuickTime"
    if len(head) > 188 and head[0] == 0x47 and head[188] == 0x47:
        return VIDEO, "MPEG-TS"
    if len(head) >= 2 and head[0:1] == b"P" and head[1:2] in b"123456":
        return IMAGE, "PNM"
    for offset, magic, media_type, name in _SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            return media_type, name
    return None
