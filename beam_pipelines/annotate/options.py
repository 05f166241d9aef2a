"""Options of the ``annotate`` job (``export``, ``import``, ``qc``, ``dataset``) and their checks.

:class:`AnnotateOptions` is the job's ``PipelineOptions`` subclass; :func:`check_options`
validates them before any server is reached (a ``ValueError`` naming the option otherwise).
"""
import os
from typing import List, NamedTuple, Optional, Tuple

from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipelines.mine.options import MineOptions
from beam_pipelines.cli.preflight import check_mongo_uri, check_range
from schemas.labelling import LABEL_ISSUE_TYPES
from transforms.annotate import qc

SUBCOMMANDS = ("export", "import", "qc", "dataset")
TASK_KINDS = ("auto", "classification", "detection")
#: How Label Studio gets the pictures of ``export`` (``--label_studio_media``).
LOCAL_FILES, UPLOAD = "local_files", "upload"
MEDIA_MODES = ("auto", LOCAL_FILES, UPLOAD)
PROG = "python -m beam_pipelines.annotate"
DEFAULT_REVIEW_BUDGET = 20


class AnnotateOptions(PipelineOptions):
    """Options of the ``annotate`` job, plus ``--output_dir``, ``--mongo_uri``, ``--mongo_database`` and
    ``--store_check_timeout_s`` shared with ``mine`` (:class:`beam_pipelines.mine.options.MineOptions`: Beam
    registers every options class of the process, so one flag has one definition), and every standard
    Beam option."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--selection_id", default=None, help="export: the selection whose candidates are sent.")
        parser.add_argument("--label_studio_url", default=None,
                            help="Label Studio's URL. Default: an embedded Label Studio on 127.0.0.1 with "
                                 "its data in <output_dir>/label-studio (installed by scripts/setup.sh).")
        parser.add_argument("--label_studio_api_key", default=None,
                            help="An access token of Label Studio (required with --label_studio_url).")
        parser.add_argument("--label_studio_project", default=None,
                            help="Project title. Default: activebeam-<task kind>.")
        parser.add_argument("--label_studio_document_root", default=None,
                            help="Label Studio's LOCAL_FILES_DOCUMENT_ROOT, when this job can write there "
                                 "(pictures are written under it). Default: the embedded server's, --output_dir; "
                                 "with --label_studio_url, none: pictures are uploaded.")
        parser.add_argument("--label_studio_media", default="auto", choices=MEDIA_MODES,
                            help="export: how Label Studio gets the pictures. local_files: written under "
                                 "--label_studio_document_root, served by its local-files storage; upload: "
                                 "through its import API into its own storage (a server on another machine). "
                                 "auto: local_files when a document root is known, else upload.")
        parser.add_argument("--task", default="auto", choices=TASK_KINDS,
                            help="auto: detection when the frames carry detections, else classification.")
        parser.add_argument("--classes", default=None,
                            help="Class names, comma-separated or @FILE (one per line). Default: the bundled "
                                 "model's Fashion-MNIST names, the detections' labels, or the project's config.")
        parser.add_argument("--overlap", type=float, default=0.0,
                            help="export: share of tasks (0..1) sent to two annotators, for agreement.")
        parser.add_argument("--gold", default=None,
                            help="export: CSV or JSONL of gold tasks (frame_id or source_uri [+ frame_index], "
                                 "label [, boxes as JSON]); sent as tasks, answers kept in activebeam only.")
        parser.add_argument("--export_file", default=None,
                            help="import: a Label Studio JSON export to read instead of the API.")
        parser.add_argument("--bigquery_annotations_table", default=None,
                            help="import: also append annotations to this PROJECT:DATASET.TABLE.")
        parser.add_argument("--min_agreement", type=float, default=qc.DEFAULT_MIN_AGREEMENT,
                            help="qc: mean pairwise agreement below which a task goes back for relabelling.")
        parser.add_argument("--min_gold_accuracy", type=float, default=qc.DEFAULT_MIN_GOLD_ACCURACY,
                            help="qc: annotators below this gold accuracy are not trusted.")
        parser.add_argument("--iou_threshold", type=float, default=qc.DEFAULT_IOU_THRESHOLD,
                            help="qc: IoU for two boxes to match.")
        parser.add_argument("--no_relabel", action="store_true",
                            help="qc: do not send failing tasks back in Label Studio (report only).")
        parser.add_argument("--label_issues", action="store_true",
                            help="qc: also score every annotation against the model's predictions with cleanlab "
                                 "(likely label errors: label_issues table, report, review tasks).")
        parser.add_argument("--review_budget", type=int, default=DEFAULT_REVIEW_BUDGET,
                            help="qc --label_issues: the worst flagged issues sent to Label Studio as review "
                                 "tasks (project <project>-review); 0 = none.")
        parser.add_argument("--review_issue_types", default=None,
                            help="qc --label_issues: review by issue type, one queue per listed type "
                                 f"(comma-separated among {', '.join(LABEL_ISSUE_TYPES)}), each the "
                                 "--review_budget first flagged issues of that type by their type's own score "
                                 "(type_rank). Default: one queue, the flagged issues of every type by overall "
                                 "quality (rank).")
        parser.add_argument("--bigquery_label_issues_table", default=None,
                            help="qc --label_issues: also append the label_issues rows to this PROJECT:DATASET.TABLE.")
        parser.add_argument("--dataset_dir", default=None, help="dataset: where to write (default <output_dir>/dataset).")
        parser.add_argument("--val_fraction", type=float, default=0.2, help="dataset: share of frames in val.")
        parser.add_argument("--retrain_after", type=int, default=0,
                            help="dataset: write a retraining trigger when this many accepted labels are new "
                                 "since the last trigger; 0 = never.")
        parser.add_argument("--retrain_topic", default=None,
                            help="dataset: projects/P/topics/T to publish the trigger to.")
        parser.add_argument("--serve", action="store_true",
                            help="export: keep the embedded Label Studio running for annotators until Ctrl-C.")


class AnnotateJob(NamedTuple):
    """Checked options of one ``annotate`` command (with those shared with ``mine``)."""
    command: str
    output_dir: str
    mongo_uri: Optional[str]
    mongo_database: str
    store_check_timeout_s: float
    classes: Optional[Tuple[str, ...]]
    dataset_dir: str
    review_issue_types: Tuple[str, ...] = ()


def split_command(argv: List[str]) -> Tuple[str, List[str]]:
    """``(subcommand, rest)``; ``ValueError`` when the first argument is not a subcommand."""
    if not argv or argv[0] not in SUBCOMMANDS:
        raise ValueError(f"the first argument must be one of {', '.join(SUBCOMMANDS)} "
                         f"(got {argv[0] if argv else 'nothing'!r}); see --help")
    return argv[0], list(argv[1:])


def _classes(value: Optional[str]) -> Optional[Tuple[str, ...]]:
    if not value:
        return None
    if value.startswith("@"):
        path = value[1:]
        if not os.path.isfile(path):
            raise ValueError(f"--classes {value}: no such file")
        with open(path, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
    else:
        names = [n.strip() for n in value.split(",") if n.strip()]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"--classes must name distinct classes, got {names}")
    return tuple(names)


def review_issue_types(value: Optional[str]) -> Tuple[str, ...]:
    """``--review_issue_types`` as a tuple of distinct types in the order given (``()``: none);
    ``ValueError`` naming the option on a type outside :data:`schemas.labelling.LABEL_ISSUE_TYPES`."""
    names = tuple(dict.fromkeys(n.strip() for n in (value or "").split(",") if n.strip()))
    unknown = [n for n in names if n not in LABEL_ISSUE_TYPES]
    if unknown or (value is not None and not names):
        raise ValueError(f"--review_issue_types must list issue types among {', '.join(LABEL_ISSUE_TYPES)}, "
                         f"got {value!r}")
    return names


def check_options(command: str, options: PipelineOptions) -> AnnotateJob:
    """Every check that needs no server; ``ValueError`` naming the option."""
    o, shared = options.view_as(AnnotateOptions), options.view_as(MineOptions)
    if command == "export" and not o.selection_id:
        raise ValueError("export needs --selection_id (the selection_id of candidates.jsonl)")
    if shared.mongo_uri:
        check_mongo_uri(shared.mongo_uri)
    if o.label_studio_url:
        if not o.label_studio_url.startswith(("http://", "https://")):
            raise ValueError(f"--label_studio_url must be an http(s) URL, got {o.label_studio_url!r}")
        if not o.label_studio_api_key:
            raise ValueError("--label_studio_url needs --label_studio_api_key")
    if o.label_studio_media == LOCAL_FILES and o.label_studio_url and not o.label_studio_document_root:
        raise ValueError("--label_studio_media=local_files needs --label_studio_document_root (the server's "
                         "LOCAL_FILES_DOCUMENT_ROOT, where pictures are written); or let them be uploaded "
                         "(--label_studio_media=upload)")
    for flag, value in (("overlap", o.overlap), ("min_agreement", o.min_agreement),
                        ("min_gold_accuracy", o.min_gold_accuracy), ("iou_threshold", o.iou_threshold)):
        check_range(flag, value, 0.0 <= value <= 1.0, "in [0, 1]")
    check_range("val_fraction", o.val_fraction, 0.0 <= o.val_fraction < 1.0, "in [0, 1)")
    check_range("retrain_after", o.retrain_after, o.retrain_after >= 0, ">= 0")
    check_range("review_budget", o.review_budget, o.review_budget >= 0, ">= 0")
    for flag in ("bigquery_label_issues_table", "review_issue_types"):
        if getattr(o, flag) and not o.label_issues:
            raise ValueError(f"--{flag} needs --label_issues")
    issue_types = review_issue_types(o.review_issue_types)
    if o.gold and not os.path.isfile(o.gold):
        raise ValueError(f"--gold {o.gold}: no such file")
    if o.export_file and not os.path.isfile(o.export_file):
        raise ValueError(f"--export_file {o.export_file}: no such file")
    if o.retrain_topic and not o.retrain_topic.startswith("projects/"):
        raise ValueError(f"--retrain_topic must be projects/P/topics/T, got {o.retrain_topic!r}")
    output_dir = os.path.abspath(shared.output_dir)
    return AnnotateJob(command, output_dir, shared.mongo_uri, shared.mongo_database, shared.store_check_timeout_s,
                       _classes(o.classes),
                       os.path.abspath(o.dataset_dir or os.path.join(output_dir, "dataset")), issue_types)
