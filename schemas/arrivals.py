"""The ``arrivals`` index: one entry per file version a streaming ``mine`` job took in.

A streaming job learns of files from Cloud Storage notifications or by watching a glob; each
file version (an object generation, or a file's modification time and size) is an *arrival*,
identified by its key (:mod:`transforms.intake.notifications`). Its entry is the job's ledger:

* ``claimed`` by a run when the job starts on it: a duplicated or re-sent notification of the
  same version, or the same file seen again by the watcher, finds the entry and changes nothing;
* ``done`` once its frames are indexed (its notification is then acknowledged), with the event
  time range of its frames and its dead letters: a restarted job rebuilds the windows that can
  still change from the ``done`` entries and the ``frames`` index, and takes over the versions a
  crashed run left ``claimed``.
"""
import datetime
import json
from typing import Optional, Sequence

from schemas.frames import Field
from schemas.records import Arrival, DeadLetter

ARRIVALS_COLLECTION = "arrivals"
CLAIMED = "claimed"
DONE = "done"
#: Dead letters kept per arrival (a video with thousands of undecodable frames keeps the first).
MAX_DEAD_LETTERS = 100

ARRIVAL_FIELDS = (
    Field("arrival_key", "STRING", "REQUIRED", "The file version: gs://bucket/object#generation or path#mtime_us:size; MongoDB _id."),
    Field("source_uri", "STRING", "REQUIRED", "URI of the file."),
    Field("input", "STRING", "REQUIRED", "The job's source: its Pub/Sub subscription or watched glob."),
    Field("status", "STRING", "REQUIRED", "'claimed' (a run is working on it) or 'done' (frames indexed, dead letters recorded)."),
    Field("run_id", "STRING", "REQUIRED", "The run that claimed it, then finished it."),
    Field("claimed_at", "TIMESTAMP", "REQUIRED", "When a run claimed it (UTC)."),
    Field("done_at", "TIMESTAMP", "NULLABLE", "When its frames were indexed (UTC)."),
    Field("generation", "STRING", "NULLABLE", "Cloud Storage object generation (notifications)."),
    Field("size", "INT64", "NULLABLE", "Size in bytes, as notified or listed."),
    Field("fallback_time", "FLOAT64", "REQUIRED", "The object's timeCreated or the file's modification time, seconds since the epoch: the event time of frames without a capture time."),
    Field("fallback_source", "STRING", "REQUIRED", "'notification' or 'mtime'."),
    Field("frames", "INT64", "NULLABLE", "Frames of this version indexed (done)."),
    Field("event_time_min", "FLOAT64", "NULLABLE", "Earliest event time of its frames and dead letters, seconds since the epoch (done)."),
    Field("event_time_max", "FLOAT64", "NULLABLE", "Latest event time of its frames and dead letters (done)."),
    Field("dead_letters", "STRING", "NULLABLE", "JSON list of its dead letters with their event times (done; at most 100)."),
)


def claim_document(arrival: Arrival, input_name: str, run_id: str,
                   now: Optional[datetime.datetime] = None) -> dict:
    """The fields a run sets when it claims ``arrival`` (``_id`` is its key)."""
    return {
        "_id": arrival.key, "source_uri": arrival.uri, "input": input_name, "status": CLAIMED,
        "run_id": run_id, "claimed_at": now or datetime.datetime.now(datetime.timezone.utc),
        "done_at": None, "generation": arrival.generation, "size": arrival.size,
        "fallback_time": float(arrival.fallback_time), "fallback_source": arrival.fallback_source,
    }


def done_fields(frames: int, event_times: Sequence[float], dead_letters: Sequence[tuple],
                now: Optional[datetime.datetime] = None) -> dict:
    """The fields set when an arrival is done: ``dead_letters`` as ``(DeadLetter, event_time)``."""
    kept = [dict(d.to_json_dict(), event_time=t) for d, t in list(dead_letters)[:MAX_DEAD_LETTERS]]
    times = list(event_times) + [t for _, t in dead_letters]
    return {
        "status": DONE, "done_at": now or datetime.datetime.now(datetime.timezone.utc),
        "frames": int(frames), "event_time_min": min(times) if times else None,
        "event_time_max": max(times) if times else None,
        "dead_letters": json.dumps(kept, sort_keys=True) if kept else None,
    }


def dead_letters_of(document: dict):
    """``[(DeadLetter, event_time)]`` recorded in a done arrival's entry."""
    out = []
    for item in json.loads(document.get("dead_letters") or "[]"):
        event_time = item.pop("event_time")
        out.append((DeadLetter(**item), event_time))
    return out
