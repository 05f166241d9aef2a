"""Stage Annotate: the labelling loop with Label Studio (export, import, vendor QC, training sets).

Pure: :mod:`~transforms.annotate.label_studio` (configs, tasks, pre-annotations, results),
:mod:`~transforms.annotate.qc` (agreement, box F1, gold accuracy, acceptance),
:mod:`~transforms.annotate.label_issues` (likely label errors, with cleanlab; review queues per issue type),
:mod:`~transforms.annotate.dataset` (splits, COCO, manifests), :mod:`~transforms.annotate.client`
(the REST client). Beam: :mod:`~transforms.annotate.ptransforms`. The job is
``python -m beam_pipelines.annotate`` (docs/annotation.md).
"""
from transforms._exports import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "ptransforms": ("ExportToLabelStudio", "ExportItem", "FindLabelIssues", "NormaliseAnnotations",
                    "WriteTrainingSet"),
    "client": ("LabelStudioClient", "LabelStudioError"),
    "qc": ("qc_report",),
    "label_issues": ("classification_issues", "detection_issues", "ranked_by_type", "review_queue"),
})
