"""Cloud Storage Pub/Sub notifications and watched files as :class:`~schemas.records.Arrival`\\ s.

Pure (no Beam): what a streaming job reads before decoding. A notification in the real format
(`Cloud Storage Pub/Sub notifications <https://cloud.google.com/storage/docs/pubsub-notifications>`_)
has the attributes ``notificationConfig``, ``eventType``, ``payloadFormat``, ``bucketId``,
``objectId``, ``objectGeneration`` and ``eventTime``, and with ``payloadFormat=JSON_API_V1`` the
object's resource (JSON API ``storage#object``: ``name``, ``bucket``, ``generation``, ``size``,
``timeCreated``...) as its data::

    parsed = parse_notification(message.attributes, message.data)
    if isinstance(parsed, Arrival):        # OBJECT_FINALIZE: a new object or a new generation
        ...                                # parsed.uri == "gs://bucket/object", parsed.key has the generation
    else:                                  # Skipped: another event type, counted and acknowledged
        ...
    # NotificationError (its .reason a short code): a malformed message, a dead letter

A file version is identified by its :func:`arrival key <gcs_key>`: the object and its generation
(a re-sent or duplicated notification has the same key; a replaced object has a new one), or
for a watched file its path, modification time and size (:func:`file_key`).
"""
import datetime
import json
import re
from typing import Mapping, NamedTuple, Optional, Union

from schemas.records import Arrival

#: The event that starts work: a new object, or a new generation of an existing one.
OBJECT_FINALIZE = "OBJECT_FINALIZE"
#: The other event types Cloud Storage publishes (counted and skipped).
OTHER_EVENT_TYPES = ("OBJECT_METADATA_UPDATE", "OBJECT_DELETE", "OBJECT_ARCHIVE")
JSON_API_V1 = "JSON_API_V1"
NONE_PAYLOAD = "NONE"
#: ``Arrival.fallback_source`` of a notified object (its ``timeCreated``) and of a watched file.
FROM_NOTIFICATION = "notification"
FROM_MTIME = "mtime"
_FRACTION = re.compile(r"\.(\d+)")
#: Longest data a malformed notification's dead letter quotes.
_QUOTE_CHARS = 120


class NotificationError(ValueError):
    """A message that is not a usable Cloud Storage notification; ``reason`` is a short code
    (``no_event_type``, ``missing_attribute``, ``bad_payload_format``, ``bad_json``,
    ``inconsistent``, ``bad_generation``, ``bad_time``)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class PubsubNotice(NamedTuple):
    """A Pub/Sub message as the streaming job reads it: ``ack_id`` is set when the job itself
    acknowledges it (the local runners' reader), None when Beam's ``ReadFromPubSub`` does."""
    message_id: str
    data: bytes
    attributes: Mapping[str, str]
    publish_time: Optional[float]  # seconds since the epoch
    ack_id: Optional[str] = None


class Skipped(NamedTuple):
    """A well-formed notification of an event that starts no work (e.g. ``OBJECT_DELETE``)."""
    event_type: str
    uri: Optional[str]


def gcs_key(uri: str, generation: str) -> str:
    """Arrival key of an object generation: ``gs://bucket/object#generation``."""
    return f"{uri}#{generation}"


def file_key(uri: str, mtime_s: float, size: int) -> str:
    """Arrival key of a watched file version: ``path#<mtime in microseconds>:<size>``: a file
    rewritten in place gets a new key (its modification time or size changed)."""
    return f"{uri}#{int(round(mtime_s * 1e6))}:{int(size)}"


def parse_rfc3339(text: str) -> float:
    """Seconds since the epoch of an RFC 3339 time (``2024-05-01T12:00:00.123Z``, any offset).

    Raises
    ------
    ValueError
        If ``text`` is not such a time or has no time zone.
    """
    if not isinstance(text, str) or not text:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    fraction = _FRACTION.search(value)
    if fraction:  # at most 6 fractional digits for datetime (RFC 3339 allows any number)
        value = value[:fraction.start()] + "." + fraction.group(1)[:6] + value[fraction.end():]
    parsed = datetime.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"RFC 3339 time without a time zone: {text!r}")
    return parsed.timestamp()


def _attribute(attributes: Mapping[str, str], name: str) -> str:
    value = attributes.get(name)
    if not value:
        raise NotificationError(f"the notification has no {name!r} attribute "
                                f"(attributes: {sorted(attributes)})", "missing_attribute")
    return value


def _resource(data: bytes) -> dict:
    try:
        resource = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        quoted = data[:_QUOTE_CHARS].decode("utf-8", "replace")
        raise NotificationError(f"payloadFormat JSON_API_V1 but the data is not JSON ({e}): "
                                f"{quoted!r}", "bad_json") from None
    if not isinstance(resource, dict):
        raise NotificationError(f"the data is JSON but not an object resource: {type(resource).__name__}",
                                "bad_json")
    return resource


def parse_notification(attributes: Optional[Mapping[str, str]], data: Optional[bytes]) -> Union[Arrival, Skipped]:
    """Reads one Cloud Storage notification.

    Parameters
    ----------
    attributes : mapping of str to str
        The Pub/Sub message's attributes.
    data : bytes
        The message's data: the object resource JSON (``payloadFormat=JSON_API_V1``) or empty
        (``NONE``).

    Returns
    -------
    Arrival
        For ``OBJECT_FINALIZE``: ``uri`` ``gs://bucketId/objectId``, ``key`` from
        :func:`gcs_key`, ``fallback_time`` the resource's ``timeCreated`` (the attribute
        ``eventTime`` without a payload), ``size`` when the resource has one.
    Skipped
        For the other event types.

    Raises
    ------
    NotificationError
        For a message without an event type, without the attributes of its event, with a
        payload that is not a JSON object, whose resource names another object or generation
        than its attributes, or whose times do not parse.
    """
    attributes = dict(attributes or {})
    data = data or b""
    event_type = attributes.get("eventType")
    if not event_type:
        raise NotificationError("not a Cloud Storage notification: no 'eventType' attribute "
                                f"(attributes: {sorted(attributes)}; data {data[:_QUOTE_CHARS]!r})",
                                "no_event_type")
    bucket, name = attributes.get("bucketId"), attributes.get("objectId")
    uri = f"gs://{bucket}/{name}" if bucket and name else None
    if event_type != OBJECT_FINALIZE:
        return Skipped(event_type, uri)
    bucket, name = _attribute(attributes, "bucketId"), _attribute(attributes, "objectId")
    generation = _attribute(attributes, "objectGeneration")
    if not generation.isdigit():
        raise NotificationError(f"objectGeneration must be a decimal number, got {generation!r}",
                                "bad_generation")
    payload_format = attributes.get("payloadFormat", JSON_API_V1)
    if payload_format == JSON_API_V1:
        resource = _resource(data)
        for field, expected in (("bucket", bucket), ("name", name), ("generation", generation)):
            found = resource.get(field)
            if found is not None and str(found) != expected:
                raise NotificationError(f"the resource's {field} is {found!r} but the attributes "
                                        f"say {expected!r}", "inconsistent")
        created, created_field = resource.get("timeCreated"), "timeCreated"
        size = resource.get("size")
    elif payload_format == NONE_PAYLOAD:
        created, created_field, size = attributes.get("eventTime"), "eventTime", None
    else:
        raise NotificationError(f"payloadFormat must be {JSON_API_V1} or {NONE_PAYLOAD}, got "
                                f"{payload_format!r}", "bad_payload_format")
    if not created:
        raise NotificationError(f"the notification has no {created_field}", "bad_time")
    try:
        created_s = parse_rfc3339(created)
    except ValueError as e:
        raise NotificationError(f"{created_field} is not an RFC 3339 time: {e}", "bad_time") from None
    try:
        size = None if size is None else int(size)
    except (TypeError, ValueError):
        raise NotificationError(f"the resource's size is not an integer: {size!r}", "inconsistent") from None
    uri = f"gs://{bucket}/{name}"
    return Arrival(key=gcs_key(uri, generation), uri=uri, fallback_time=created_s,
                   fallback_source=FROM_NOTIFICATION, generation=generation, size=size)


def watched_arrival(uri: str, mtime_s: float, size: int) -> Arrival:
    """The :class:`Arrival` of a watched file version (its modification time is the fallback
    event time)."""
    return Arrival(key=file_key(uri, mtime_s, size), uri=uri, fallback_time=float(mtime_s),
                   fallback_source=FROM_MTIME, size=int(size))


def notification_attributes(resource: Mapping, event_type: str = OBJECT_FINALIZE,
                            config: str = "1") -> dict:
    """The attributes Cloud Storage gives the notification of an object resource (the JSON API's
    ``storage#object``; its JSON is the message's data with ``payloadFormat=JSON_API_V1``): how
    demos and tests publish notifications exactly as a bucket would."""
    return {
        "notificationConfig": f"projects/_/buckets/{resource['bucket']}/notificationConfigs/{config}",
        "eventType": event_type, "payloadFormat": JSON_API_V1, "bucketId": resource["bucket"],
        "objectId": resource["name"], "objectGeneration": str(resource["generation"]),
        "eventTime": resource.get("updated") or resource["timeCreated"],
    }
