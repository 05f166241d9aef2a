"""Statistics of what the stores hold: sources, frames per source and day, candidates per
selection, annotations, the labelling funnel, QC and near-duplicate groups, from MongoDB or
from BigQuery's views (``python -m beam_pipelines.stats``).

* :mod:`~beam_pipelines.stats.queries`: the reports and the command.
"""
from beam_pipelines.stats.queries import (QC_COLUMNS, REPORTS, VIEWS_DIR, bigquery_stats, format_text, main,
                                          mongo_stats, view_sql)

__all__ = ["QC_COLUMNS", "REPORTS", "VIEWS_DIR", "bigquery_stats", "format_text", "main", "mongo_stats", "view_sql"]
