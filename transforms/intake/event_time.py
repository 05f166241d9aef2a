"""Event time of a frame in the streaming ``mine`` job: when it was captured, and how we know.

Pure (no Beam). A frame is windowed by the first of these that is known and plausible:

1. ``exif``: the image's EXIF ``DateTimeOriginal`` (else ``DateTime``), read as UTC: EXIF stores
   local time without a zone, so set cameras to UTC (an ``OffsetTimeOriginal`` is not read);
2. ``container``: the video container's ``creation_time`` (MP4/MOV ``mvhd``, MKV ``DateUTC``)
   plus the frame's presentation time from the start of the stream;
3. ``notification``: the Cloud Storage object's ``timeCreated`` from its notification;
4. ``mtime``: the watched file's modification time.

A capture time before :data:`EARLIEST` (cameras with an unset clock write 1904, 1970 or 1980)
or more than :data:`FUTURE_SLACK_S` after the moment it is read is ignored, and the next
source is used::

    when, source = event_time(frame.capture_time, None, None, arrival.fallback_time,
                              arrival.fallback_source, now=time.time())
    # (1714564800.0, "exif")
"""
import datetime
from typing import Optional, Tuple

EXIF = "exif"
CONTAINER = "container"
NOTIFICATION = "notification"
MTIME = "mtime"
#: The sources in order of precedence.
PRECEDENCE = (EXIF, CONTAINER, NOTIFICATION, MTIME)
#: Capture times before this (1990-01-01 UTC, seconds since the epoch) are unset camera clocks.
EARLIEST = 631152000.0
#: Capture times more than this many seconds in the future (a day) are wrong camera clocks.
FUTURE_SLACK_S = 86400.0


def exif_seconds(capture_time: Optional[str]) -> Optional[float]:
    """Seconds since the epoch of an EXIF time as :mod:`transforms.decode.images` gives it (ISO 8601
    without a zone, read as UTC; an ISO time with an offset is honoured); None if absent or
    malformed."""
    return _iso_seconds(capture_time) if capture_time else None


def container_seconds(creation_time: Optional[str]) -> Optional[float]:
    """Seconds since the epoch of a container's ``creation_time`` tag (FFmpeg writes
    ``2017-09-01T02:23:48.000000Z``; a time without a zone is UTC); None if absent or malformed."""
    if not creation_time or not isinstance(creation_time, str):
        return None
    text = creation_time.strip().replace(" ", "T", 1)
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    return _iso_seconds(text)


def _iso_seconds(text: str) -> Optional[float]:
    """Seconds since the epoch of an ISO 8601 time (UTC when it has no zone); None if malformed."""
    try:
        parsed = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed.timestamp()


def plausible(seconds: Optional[float], now: float) -> bool:
    """Whether a capture time is set and not in the far future (see the module docstring)."""
    return seconds is not None and EARLIEST <= seconds <= now + FUTURE_SLACK_S


def event_time(capture_time: Optional[str], creation_time: Optional[str],
               presentation_s: Optional[float], fallback_time: float, fallback_source: str,
               now: float) -> Tuple[float, str]:
    """A frame's event time and its source, by the precedence of the module docstring.

    Parameters
    ----------
    capture_time : str or None
        ``Frame.capture_time`` (EXIF, images).
    creation_time : str or None
        The video container's ``creation_time`` tag (videos).
    presentation_s : float or None
        ``Frame.timestamp_s``: seconds from the start of the video stream.
    fallback_time : float
        ``Arrival.fallback_time`` (seconds since the epoch).
    fallback_source : str
        ``notification`` or ``mtime``.
    now : float
        Seconds since the epoch when the frame is read (bounds plausible capture times).

    Returns
    -------
    (float, str)
        Seconds since the epoch, and one of :data:`PRECEDENCE`.

    Raises
    ------
    ValueError
        If ``fallback_source`` is not ``notification`` or ``mtime``.
    """
    if fallback_source not in (NOTIFICATION, MTIME):
        raise ValueError(f"fallback_source must be {NOTIFICATION!r} or {MTIME!r}, got {fallback_source!r}")
    exif = exif_seconds(capture_time)
    if plausible(exif, now):
        return exif, EXIF
    created = container_seconds(creation_time)
    if plausible(created, now):
        return created + float(presentation_s or 0.0), CONTAINER
    return float(fallback_time), fallback_source
