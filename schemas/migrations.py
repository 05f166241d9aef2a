"""What turns a table or collection made by an earlier version into the current schema.

Pure: statements and update documents only; ``python -m beam_pipelines.tools.migrate`` runs them
(BigQuery through the official client, MongoDB through pymongo). Three changes are migrated:

* ``frames.detections`` was a ``STRING`` of JSON text (``[{label, class_id, score, box: [x1, y1,
  x2, y2]}]``) and is now ``REPEATED RECORD`` (``box`` a ``RECORD`` of ``x1, y1, x2, y2``).
  BigQuery cannot change a column's type in place, so the old column is renamed
  ``detections_json`` (kept, still readable), a new ``detections`` column is added and filled from
  the JSON text. MongoDB held the list itself; each ``box`` list becomes ``{x1, y1, x2, y2}``.
* ``predicted_label`` (frames and candidates) is added and, for the models whose class names are
  known, filled from ``predicted_class``.
* Any other ``NULLABLE`` or ``REPEATED`` column of :mod:`schemas.tables` that the table lacks is
  added (``ALTER TABLE ... ADD COLUMN IF NOT EXISTS``).

Every step is idempotent: a migrated table gives an empty plan, and the fills only touch rows
that still need them.
"""
import json
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from schemas.frames import Field
from schemas.records import BOX_CORNERS
from schemas.tables import TableSpec, bigquery_field

#: Columns that earlier versions stored as JSON text and that are now ``RECORD``: table -> names.
LEGACY_JSON_COLUMNS = {"frames": ("detections",)}
#: Suffix of the renamed JSON column (``detections`` -> ``detections_json``).
LEGACY_SUFFIX = "_json"
PREDICTED_LABEL = "predicted_label"


class MigrationError(ValueError):
    """A table cannot be migrated: a REQUIRED column is missing, or a column's type changed in a
    way no step handles."""


def sql_type(field: Field, nested: bool = False) -> str:
    """The standard SQL type of a column for ``ALTER TABLE ... ADD COLUMN`` (``ARRAY<STRUCT<...>>``
    for a ``REPEATED RECORD``). Sub-fields are left nullable: a new column cannot be REQUIRED."""
    if field.bigquery_type == "RECORD":
        base = "STRUCT<" + ", ".join(f"{f.name} {sql_type(f, True)}" for f in field.fields) + ">"
    else:
        base = field.bigquery_type
    return f"ARRAY<{base}>" if field.mode == "REPEATED" else base


def _relaxed(column: dict) -> dict:
    """A column added by ``ADD COLUMN`` as BigQuery then describes it: REQUIRED sub-fields NULLABLE."""
    out = dict(column)
    if "fields" in out:
        out["fields"] = [dict(_relaxed(f), mode="NULLABLE" if f.get("mode") == "REQUIRED" else f.get("mode"))
                         for f in out["fields"]]
    return out


def _detections_fill(table: str, column: str) -> str:
    """``UPDATE`` filling ``column`` from its JSON text ``column_json`` (earlier versions' form)."""
    corners = ", ".join(f'CAST(JSON_VALUE(d, "$.box[{i}]") AS FLOAT64) AS {name}' for i, name in enumerate(BOX_CORNERS))
    return (f"UPDATE `{table}` SET {column} = ARRAY("
            f'SELECT AS STRUCT JSON_VALUE(d, "$.label") AS label, '
            f'CAST(JSON_VALUE(d, "$.class_id") AS INT64) AS class_id, '
            f'CAST(JSON_VALUE(d, "$.score") AS FLOAT64) AS score, STRUCT({corners}) AS box '
            f"FROM UNNEST(JSON_QUERY_ARRAY({column}{LEGACY_SUFFIX})) AS d WITH OFFSET AS i ORDER BY i) "
            f"WHERE {column}{LEGACY_SUFFIX} IS NOT NULL AND COALESCE(ARRAY_LENGTH({column}), 0) = 0")


class Statement(NamedTuple):
    """One BigQuery statement; ``parameters``: ``(name, type, value)`` query parameters
    (type ``STRING`` or ``ARRAY<STRING>``)."""
    sql: str
    parameters: Tuple[Tuple[str, str, object], ...] = ()


class BigQueryPlan(NamedTuple):
    """What :func:`bigquery_plan` found to do: DDL first, then fills, then ``schema``, the
    table's columns after the DDL (for a ``tables.patch`` that sets the new columns'
    descriptions). Empty ``ddl`` and ``fills``: the table is current."""
    ddl: List[Statement]
    fills: List[Statement]
    schema: List[dict]


def bigquery_plan(table: str, spec: TableSpec, columns: Sequence[dict],
                  class_names: Optional[Dict[str, Sequence[str]]] = None) -> BigQueryPlan:
    """The statements that bring table ``table`` (``PROJECT.DATASET.TABLE``) with ``columns``
    (its schema as the REST API gives it: ``[{name, type, mode, fields?}]``) to ``spec``.

    ``class_names``: model name -> class names, to fill ``predicted_label`` of the rows of those
    models (``model_name`` column) where it is null.

    Raises
    ------
    MigrationError
        If a REQUIRED column of ``spec`` is missing, or a column has another type that no step
        migrates.
    """
    existing = {c["name"]: c for c in columns}
    schema = [dict(c) for c in columns]
    ddl, fills = [], []
    legacy = LEGACY_JSON_COLUMNS.get(spec.name, ())
    for field in spec.fields:
        column = existing.get(field.name)
        wanted_type = "RECORD" if field.bigquery_type == "RECORD" else field.bigquery_type
        if column is not None and _same_type(column.get("type"), wanted_type):
            continue
        if column is not None:
            if field.name not in legacy or column.get("type") != "STRING":
                raise MigrationError(f"{table}.{field.name} is {column.get('type')}, the schema wants "
                                     f"{field.bigquery_type}: no migration step for this change")
            renamed = field.name + LEGACY_SUFFIX
            ddl.append(Statement(f"ALTER TABLE `{table}` RENAME COLUMN {field.name} TO {renamed}"))
            for c in schema:
                if c["name"] == field.name:
                    c.update(name=renamed, description=f"Earlier versions' JSON text of {field.name} (kept by the "
                                                       f"migration; {field.name} holds the same as {field.bigquery_type}).")
        elif field.mode == "REQUIRED":
            raise MigrationError(f"{table} lacks the REQUIRED column {field.name}: recreate the table")
        ddl.append(Statement(f"ALTER TABLE `{table}` ADD COLUMN IF NOT EXISTS {field.name} {sql_type(field)}"))
        schema.append(_relaxed(bigquery_field(field)))
        if column is not None:
            fills.append(Statement(_detections_fill(table, field.name)))
    if PREDICTED_LABEL in spec.field_names() and "model_name" in spec.field_names():
        for model, names in sorted((class_names or {}).items()):
            fills.append(Statement(
                f"UPDATE `{table}` SET {PREDICTED_LABEL} = (SELECT name FROM UNNEST(@names) AS name "
                f"WITH OFFSET AS i WHERE i = predicted_class) WHERE model_name = @model AND {PREDICTED_LABEL} IS NULL",
                (("names", "ARRAY<STRING>", list(names)), ("model", "STRING", model))))
    return BigQueryPlan(ddl, fills, schema)


def _same_type(have: Optional[str], want: str) -> bool:
    """BigQuery reports legacy names (INTEGER, FLOAT, BOOLEAN, STRUCT): the same types."""
    aliases = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL", "STRUCT": "RECORD"}
    return aliases.get(have, have) == aliases.get(want, want)


# --- MongoDB ---------------------------------------------------------------------------------

#: ``update_many`` filter of frame documents whose detections still hold ``box`` lists.
MONGO_LEGACY_BOXES = {"detections": {"$elemMatch": {"box": {"$type": "array"}}}}


def mongo_boxes_update() -> list:
    """An aggregation-pipeline update turning every ``detections[].box`` list ``[x1, y1, x2,
    y2]`` into ``{x1, y1, x2, y2}`` (boxes already in that form are kept)."""
    as_record = {name: {"$arrayElemAt": ["$$d.box", i]} for i, name in enumerate(BOX_CORNERS)}
    return [{"$set": {"detections": {"$map": {"input": "$detections", "as": "d", "in": {
        "$cond": [{"$isArray": "$$d.box"}, {"$mergeObjects": ["$$d", {"box": as_record}]}, "$$d"]}}}}}]


def mongo_label_updates(class_names: Dict[str, Sequence[str]]) -> List[Tuple[dict, list]]:
    """``(filter, pipeline update)`` pairs setting ``predicted_label`` from ``predicted_class`` on
    the documents of each model (``model.name``, or ``model_name`` in flat rows) that lack it."""
    updates = []
    for model, names in sorted(class_names.items()):
        query = {"$or": [{"model.name": model}, {"model_name": model}],
                 PREDICTED_LABEL: {"$exists": False}, "predicted_class": {"$type": ["int", "long"]}}
        label = {"$arrayElemAt": [{"$literal": list(names)}, "$predicted_class"]}
        updates.append((query, [{"$set": {PREDICTED_LABEL: label}}]))
    return updates


def describe(plan: BigQueryPlan) -> str:
    """The plan as SQL text (parameters shown as JSON comments), for ``--dry_run``."""
    lines = []
    for statement in plan.ddl + plan.fills:
        params = {name: value for name, _, value in statement.parameters}
        lines.append(statement.sql + ";" + (f"  -- {json.dumps(params)[:200]}" if params else ""))
    return "\n".join(lines)
