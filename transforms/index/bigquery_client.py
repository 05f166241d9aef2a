"""BigQuery tables created from :mod:`schemas.tables`: partitioned and clustered from the start.

A table that ``WriteToBigQuery`` creates on its first load has neither time partitioning nor
clustering, and neither can be added later without rewriting it; queries then scan everything.
:func:`ensure_table` creates it beforehand (``tables.insert``) from the table's spec::

    client = bigquery.Client()
    ensure_table(client, "proj.activebeam.frames", schemas.tables.frames_table())
"""
import logging

from schemas import tables

_LOG = logging.getLogger(__name__)


def table_resource(table_id: str, spec: tables.TableSpec):
    """The ``google.cloud.bigquery.Table`` to create: schema, daily time partitioning, clustering."""
    from google.cloud import bigquery
    schema = [bigquery.SchemaField(f.name, f.bigquery_type, mode=f.mode, description=f.description)
              for f in spec.fields]
    table = bigquery.Table(table_id, schema=schema)
    if spec.partition_field:
        table.time_partitioning = bigquery.TimePartitioning(
            type_=bigquery.TimePartitioningType.DAY, field=spec.partition_field)
    if spec.clustering:
        table.clustering_fields = list(spec.clustering)
    return table


def ensure_table(client, table_id: str, spec: tables.TableSpec, **request) -> bool:
    """Creates ``table_id`` (``project.dataset.table``) unless it exists; returns whether it did.

    ``request``: ``retry``/``timeout`` passed to every client call. An existing table is left as it is (a warning is logged when its partitioning or clustering
    differ from the spec: BigQuery cannot change them in place).

    Raises
    ------
    google.api_core.exceptions.GoogleAPICallError
        When BigQuery is unreachable or refuses (permissions, missing dataset).
    """
    from google.api_core import exceptions
    try:
        existing = client.get_table(table_id, **request)
    except exceptions.NotFound:
        try:
            client.create_table(table_resource(table_id, spec), **request)
            _LOG.info("created BigQuery table %s partitioned by %s, clustered by %s",
                      table_id, spec.partition_field, ",".join(spec.clustering))
            return True
        except exceptions.Conflict:  # created meanwhile by another worker
            return False
    partition = existing.time_partitioning.field if existing.time_partitioning else None
    if partition != spec.partition_field or list(existing.clustering_fields or []) != list(spec.clustering):
        _LOG.warning("BigQuery table %s is partitioned by %s and clustered by %s; activebeam's schema "
                     "wants %s and %s (recreate it to change them)", table_id, partition,
                     existing.clustering_fields, spec.partition_field, list(spec.clustering))
    return False


def sibling_table(table: str, name: str) -> str:
    """``PROJECT:DATASET.OTHER`` -> ``PROJECT.DATASET.name`` (another table of the same dataset)."""
    project, _, rest = table.rpartition(":")
    dataset = rest.split(".", 1)[0] if project else rest.rsplit(".", 1)[0]
    return f"{project}.{dataset}.{name}" if project else f"{dataset}.{name}"


def append_rows(table_id: str, spec: tables.TableSpec, rows, insert_ids, client=None, timeout_s=60.0):
    """Appends a few rows from the driver (e.g. a run record) into a pre-created table.

    Rows are checked against the spec first; ``insert_ids`` are BigQuery's de-duplication keys.
    Returns the problems (empty when every row was accepted); raises on transport errors.
    """
    from google.cloud import bigquery
    problems = [f"{i}: {e}" for i, row in enumerate(rows) for e in tables.bigquery_row_errors(spec, row)]
    if problems:
        return problems
    client = client or bigquery.Client(project=table_id.split(".")[0] if table_id.count(".") == 2 else None)
    request = {"retry": bigquery.DEFAULT_RETRY.with_deadline(timeout_s), "timeout": timeout_s}
    ensure_table(client, table_id, spec, **request)
    errors = client.insert_rows_json(table_id, list(rows), row_ids=list(insert_ids), **request)
    return [str(e) for e in errors]
