"""The ``mine`` command: one job, batch or streaming, chosen from its options.

    python -m beam_pipelines.mine [options]      # --help lists them

:func:`run` checks the command line and runs :func:`beam_pipelines.mine.batch.run` (``--input``,
or the bundled sample media) or :func:`beam_pipelines.mine.stream.run` (``--input_subscription``
or ``--watch``); :func:`main` is the command around it: logging, exit codes, what it prints.
"""
import json
import logging
import os
import sys
from typing import List, Optional

from apache_beam.io.filesystems import FileSystems

from beam_pipelines.cli import preflight, shutdown
from beam_pipelines.mine import batch, stream
from beam_pipelines.mine.options import MineOptions, help_text, streaming_requested
from transforms.common import gcp_emulators
from transforms.common.outputs import CANDIDATES_FILE, DEAD_LETTER_FILE, SUMMARY_FILE


def run(argv: Optional[List[str]] = None) -> dict:
    """Runs the ``mine`` job: the streaming job when the options ask for it
    (:func:`~beam_pipelines.mine.options.streaming_requested`: ``--input_subscription``, ``--watch``
    or ``--streaming``), else the batch job; returns its summary (see each job's ``run``).

    Raises
    ------
    beam_pipelines.cli.preflight.OptionError
        (A ``ValueError``.) For option values that cannot work, naming the option, before the
        model is loaded or a server started.
    beam_pipelines.cli.preflight.StoreUnavailable
        With a local runner, for a store that does not answer.
    """
    gcp_emulators.use_emulators_if_configured()
    argv = sys.argv[1:] if argv is None else argv
    if streaming_requested(preflight.parse_command_line(argv, MineOptions)):
        return stream.run(argv)
    return batch.run(argv)


class QuietBeamNoise(logging.Filter):
    """Drops Beam's repeated, harmless start-up warnings: "Resource module is not available" (in
    this process), and the same plus "No semi_persistent_directory found" that each worker
    process of a local multi-process run relays through ``local_job_service`` as
    ``Worker: severity: WARN ... message: "..."``."""

    NOISE = ("Resource module is not available", "No semi_persistent_directory found")

    def filter(self, record):
        message = record.getMessage()
        if message.startswith(self.NOISE):
            return False
        relayed = message.partition('message: "')[2]
        return not (message.startswith("Worker: ") and relayed.startswith(self.NOISE))


#: Environment of the command (each unless already set), inherited by local worker processes.
#: ``TF_CPP_MIN_LOG_LEVEL=3`` drops TensorFlow's C++ CPU-feature notice and the "failed call to
#: cuInit" error it prints on every machine without a GPU; the two lines TensorFlow prints before
#: its logging starts (oneDNN, CUDA drivers) stay (tensorflow/tensorflow#100442). Set
#: ``TF_CPP_MIN_LOG_LEVEL=0`` to see everything.
COMMAND_ENVIRONMENT = {"NO_GCE_CHECK": "true",  # never probe the cloud metadata server
                       "TF_CPP_MIN_LOG_LEVEL": "3"}


def main(argv=None):
    """The command: :func:`run`, with one line ``mine: error: ...`` and an exit code for bad options
    (2), unusable stores (3), a cancelling signal (128 + its number) or frames or candidates left unindexed (1)
    (see :mod:`beam_pipelines.cli.shutdown`)."""
    args = list(argv if argv is not None else sys.argv[1:])
    if "-h" in args or "--help" in args or "--help_beam" in args:
        print(help_text(beam="--help_beam" in args))
        return
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing
    # WriteToText warns "Deleting 1 existing files in target path matching: " when a rerun
    # rewrites dead_letter.jsonl: the job replaces its own output files by design.
    logging.getLogger("apache_beam.io.filebasedsink").setLevel(logging.ERROR)
    logging.getLogger().addFilter(QuietBeamNoise())
    logging.getLogger("apache_beam.runners.portability.local_job_service").addFilter(QuietBeamNoise())
    for name, value in COMMAND_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    with shutdown.exit_codes("mine", hard_exit_on_cancel=argv is None), shutdown.cancel_on_signals():
        summary = run(args)
    if summary.get("streaming"):
        stream.print_summary(summary)
    elif summary:
        out = summary["output_dir"]
        shown = ("files_matched", "files_decoded", "files_failed", "frames_decoded", "frames_written",
                 *(("frames_rescored", "frames_not_rescored") if summary.get("two_stage") else ()),
                 "dead_letters", "candidates", "wall_seconds")
        print(json.dumps({k: summary[k] for k in shown}, indent=2))
        print(f"candidates:   {FileSystems.join(out, CANDIDATES_FILE)}")
        print(f"dead letters: {FileSystems.join(out, DEAD_LETTER_FILE)}")
        print(f"summary:      {FileSystems.join(out, SUMMARY_FILE)}")
        print(f"report:       {FileSystems.join(out, 'report', 'index.html')}")
        if summary.get("mongo_embedded"):
            print(f"MongoDB data: {os.path.join(out, 'mongo-data')} (database "
                  f"{summary['mongo_database']!r}, collection 'frames'; start mongod with --dbpath there)")
        unindexed = [f"{summary.get(total, 0) - summary.get(written, 0)} of {summary.get(total, 0)} {what}"
                     for total, written, what in (("frames_scored", "frames_written", "scored frames"),
                                                  ("candidates", "candidates_written", "candidates"))
                     if summary.get(total, 0) > summary.get(written, 0)]
        if unindexed:
            sys.stderr.write(f"mine: error: {' and '.join(unindexed)} were not indexed in MongoDB (dead "
                             f"letters at stage 'mongodb' in {FileSystems.join(out, DEAD_LETTER_FILE)}; "
                             f"a rerun writes them)\n")
            sys.exit(shutdown.EXIT_FAILED)
