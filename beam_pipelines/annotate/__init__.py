"""The ``annotate`` job: candidates to Label Studio and labels back (``python -m
beam_pipelines.annotate {export,import,qc,dataset}``; docs/annotation.md).

* :mod:`~beam_pipelines.annotate.options`: its options, checked before anything runs;
* :mod:`~beam_pipelines.annotate.command`: the four commands and :func:`main`.
"""
from beam_pipelines.annotate.command import (BUNDLED_MODEL, COMMANDS, DEAD_LETTER_FILE, MEDIA_FOLDER, QC_REPORT_FILE,
                                             SHARED_OPTIONS, export, import_annotations, main, read_gold, run,
                                             run_qc, write_dataset)

__all__ = ["BUNDLED_MODEL", "COMMANDS", "DEAD_LETTER_FILE", "MEDIA_FOLDER", "QC_REPORT_FILE", "SHARED_OPTIONS",
           "export", "import_annotations", "main", "read_gold", "run", "run_qc", "write_dataset"]
