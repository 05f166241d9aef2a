"""The ``runs`` index: the lineage of every job run, one entry per run.

A run entry says what produced the indexed records: the job's options (credentials redacted),
the code version (git commit or package version), the model version, the input globs and the
run's counts (those of its ``summary.json``, read from the pipeline's metrics). Frames and
candidates are keyed by content, so a run entry is how a user finds which code and model wrote
them and when.
"""
import datetime
import hashlib
import json
import os
import subprocess
from typing import Optional

from schemas.frames import Field

RUNS_COLLECTION = "runs"
RUN_STATUSES = ("running", "succeeded", "failed", "cancelled", "drained")

RUN_FIELDS = (
    Field("run_id", "STRING", "REQUIRED", "Id of the run: sha256 of job name, start time and options, first 32 hex digits; MongoDB _id."),
    Field("job", "STRING", "REQUIRED", "Name of the job (e.g. 'mine')."),
    Field("started_at", "TIMESTAMP", "REQUIRED", "When the run started (UTC); the BigQuery partitioning column."),
    Field("finished_at", "TIMESTAMP", "NULLABLE", "When the run finished (UTC); null while it runs."),
    Field("status", "STRING", "REQUIRED", "'running', 'succeeded', 'failed', 'cancelled' (interrupted) or 'drained' (a streaming run stopped cleanly: reading stopped, open windows written)."),
    Field("code_version", "STRING", "REQUIRED", "git commit of the checkout (suffixed '-dirty' if modified) or the installed package version."),
    Field("model_name", "STRING", "NULLABLE", "Name of the model the run used."),
    Field("model_version", "STRING", "NULLABLE", "Model version, 16 hex digits: the conversion recipe's for the default pretrained "
          "models (the same on every machine), else the first 16 of the sha256 of the model file."),
    Field("inputs", "STRING", "REPEATED", "Input globs."),
    Field("output_dir", "STRING", "NULLABLE", "Where the run's result files went."),
    Field("options", "STRING", "REQUIRED", "The run's options as a JSON object, with credentials redacted."),
    Field("counts", "STRING", "NULLABLE", "The run's counts (files, frames, dead letters, candidates) as a JSON object."),
)


def make_run_id(job: str, started_at: datetime.datetime, options: dict) -> str:
    """Run id: the first 32 hex digits of sha256(job NUL ISO start time NUL options JSON)."""
    text = f"{job}\0{started_at.isoformat()}\0{json.dumps(options, sort_keys=True, default=str)}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def code_version(checkout: Optional[str] = None) -> str:
    """The git commit of ``checkout`` (default: this package's), ``-dirty`` if modified, or the
    installed ``activebeam`` package version, or ``'unknown'``.

    Read-only: git runs with ``--no-optional-locks``, so it neither takes the checkout's
    ``.git/index.lock`` nor rewrites its index (a plain ``git status`` refreshes the index, which
    fails or disturbs a concurrent ``git commit`` in the same checkout).
    """
    checkout = checkout or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    git = ["git", "--no-optional-locks", "-C", checkout]
    try:
        sha = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from importlib import metadata
        return "activebeam-" + metadata.version("activebeam")
    except Exception:  # noqa: BLE001 - any packaging failure means the version is unknown
        return "unknown"


def run_document(run_id: str, job: str, started_at: datetime.datetime, status: str, code: str,
                 options_json: str, inputs, output_dir: Optional[str] = None,
                 model: Optional[dict] = None, finished_at: Optional[datetime.datetime] = None,
                 counts: Optional[dict] = None) -> dict:
    """The MongoDB document of a run (fields of :data:`RUN_FIELDS`, ``_id`` = ``run_id``).

    ``options_json`` must already have its credentials redacted; ``model`` is a
    ``ModelVersion._asdict()``; ``counts`` the run's integer counts (named as in its summary).
    """
    if status not in RUN_STATUSES:
        raise ValueError(f"status must be one of {RUN_STATUSES}, got {status!r}")
    return {
        "_id": run_id, "job": job, "started_at": started_at, "finished_at": finished_at,
        "status": status, "code_version": code,
        "model_name": (model or {}).get("name"), "model_version": (model or {}).get("version"),
        "inputs": list(inputs), "output_dir": output_dir, "options": options_json,
        "counts": None if counts is None else json.dumps(counts, sort_keys=True),
    }
