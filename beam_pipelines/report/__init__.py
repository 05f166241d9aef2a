"""The HTML report of a selection: candidates as thumbnails with their boxes, the pool against
the selection, score histograms, the embedding map, near-duplicate groups and dead letters
(``python -m beam_pipelines.report``; every batch run writes ``<output_dir>/report/``).

* :mod:`~beam_pipelines.report.html`: the page and its data;
* :mod:`~beam_pipelines.report.frames`: the candidates' frames decoded again and drawn;
* ``assets/``: the page's HTML, CSS and JavaScript.
"""
from beam_pipelines.report.html import (ASSETS_DIR, PAGE_SIZE, REPORT_DIR, find_run, histogram_svg, main,
                                        near_duplicate_groups, pca_2d, pool_frames, report_for_run,
                                        report_for_selection, write_report, write_run_report_safely)

__all__ = ["ASSETS_DIR", "PAGE_SIZE", "REPORT_DIR", "find_run", "histogram_svg", "main", "near_duplicate_groups",
           "pca_2d", "pool_frames", "report_for_run", "report_for_selection", "write_report",
           "write_run_report_safely"]
