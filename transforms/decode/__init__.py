"""Stage **Decode**: image files and video streams into frames.

Public transform: :class:`DecodeMedia` (:mod:`.ptransforms`, the Beam plumbing); the streaming
job's arrivals of new files are the stage before, :mod:`transforms.intake`. Pure modules (no Beam;
enforced by ``//transforms/decode:pure_test``):

* :mod:`.media_types`: the media type of a file from its first bytes (magic numbers).
* :mod:`.images`: header probe, EXIF orientation and capture time, one-buffer image decoding.
* :mod:`.video`: packet-header plans, keyframe-aligned ranges, frame sampling modes, decoding of a range.
"""
from transforms._exports import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "ptransforms": ("DecodeMedia", "DecodedMedia", "DEFAULT_SPLIT_SECONDS"),
    "media_types": ("DecodeError", "sniff_media_type"),
    "images": ("DEFAULT_MAX_PIXELS", "decode_image"),
})
