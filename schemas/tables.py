"""Every stored table in one registry, and what is derived from it for BigQuery and MongoDB.

Each :class:`TableSpec` names a collection/table, its fields (``Field`` tuples of
:mod:`schemas.frames`, :mod:`schemas.candidates`, :mod:`schemas.annotations`,
:mod:`schemas.runs`), where each field lives in the MongoDB document, its indexes, and the
BigQuery time partitioning and clustering. From a spec come, with no hand-written copy:

* :func:`bigquery_fields`: the schema as the JSON list ``bq mk --schema`` and ``WriteToBigQuery``
  take;
* :func:`mongo_validator`: a MongoDB ``$jsonSchema`` validator (required fields and BSON types,
  nested where the document nests; extra fields allowed, so later stages can add theirs);
* :func:`mongo_index_specs`: the index specifications.

``python -m schemas.generate`` writes them under ``schemas/generated/``; a test fails when those
files drift from this registry. Adding a ``NULLABLE`` field to ``FRAME_FIELDS`` changes every
derived form; rerun the generator to commit them.
"""
import datetime
import math
from typing import Dict, List, NamedTuple, Optional, Tuple

from schemas import annotations, arrivals, candidates, frames, labelling, runs
from schemas.frames import Field, IndexSpec

# BigQuery type -> BSON type(s) of the value the writers store ("number" = int, long, double, decimal).
BSON_TYPES = {
    "STRING": "string",
    "INT64": ["int", "long"],
    "FLOAT64": "number",
    "BOOL": "bool",
    "TIMESTAMP": "date",
    "RECORD": "object",
}
MODES = ("REQUIRED", "NULLABLE", "REPEATED")

# Time the writer stamps on a frame when it first indexes it (MongoDB ``$setOnInsert``, BigQuery
# column): frames have no absolute capture time, so their table is partitioned by ingest time.
INDEXED_AT = Field("indexed_at", "TIMESTAMP", "NULLABLE",
                   "When the frame was first indexed (UTC); the BigQuery partitioning column.")
PROBABILITIES = Field("probabilities", "FLOAT64", "REPEATED", "Class probabilities, summing to 1.")


class TableSpec(NamedTuple):
    """One stored table: a MongoDB collection and a BigQuery table of the same name.

    ``fields``: the BigQuery columns (in order). ``id_field``: the field stored as MongoDB ``_id`` (``None``: the
    document builder sets ``_id``, e.g. ``selection_id:frame_id`` for candidates).
    ``mongo_paths``: dotted MongoDB path of the fields not stored under their own name.
    ``mongo_only``: fields only the MongoDB document holds. ``ingest_time_field``: set once, when
    the writer first inserts the document or row. ``partition_field``: TIMESTAMP column of the
    daily time partitioning. ``clustering``: BigQuery clustering columns (at most 4).
    """
    name: str
    fields: Tuple[Field, ...]
    id_field: Optional[str]
    mongo_indexes: Tuple[IndexSpec, ...] = ()
    mongo_paths: Dict[str, str] = {}
    mongo_only: Tuple[Field, ...] = ()
    ingest_time_field: Optional[str] = None
    partition_field: Optional[str] = None
    clustering: Tuple[str, ...] = ()

    def field_names(self) -> List[str]:
        return [f.name for f in self.fields]


def frames_table() -> TableSpec:
    """The frames index, from the current ``FRAME_FIELDS`` (which other stages extend)."""
    scores = {name: f"scores.{name}" for name in frames.SCORE_NAMES + frames.EXTRA_SCORE_NAMES}
    return TableSpec(
        name=frames.FRAMES_COLLECTION, fields=tuple(frames.FRAME_FIELDS) + (INDEXED_AT,),
        id_field="frame_id", mongo_indexes=tuple(frames.MONGO_INDEXES) + (
            IndexSpec(((INDEXED_AT.name, 1),), INDEXED_AT.name),),
        mongo_paths=dict(scores, model_name="model.name", model_version="model.version",
                         detector_name="model.detector_name", detector_version="model.detector_version"),
        mongo_only=(PROBABILITIES,), ingest_time_field=INDEXED_AT.name,
        partition_field=INDEXED_AT.name, clustering=("source_uri", "model_version"))


def candidates_table() -> TableSpec:
    return TableSpec(
        name=candidates.CANDIDATES_COLLECTION,
        fields=tuple(candidates.CANDIDATE_FIELDS) + (INDEXED_AT._replace(
            description="When the candidate was first indexed (UTC); the BigQuery partitioning column."),),
        id_field=None, mongo_indexes=(
            IndexSpec((("selection_id", 1), ("frame_id", 1)), "selection_id_frame_id", unique=True),
            IndexSpec((("selection_id", 1), ("rank", 1)), "selection_id_rank")),
        ingest_time_field=INDEXED_AT.name, partition_field=INDEXED_AT.name,
        clustering=("selection_id", "source_uri", "model_version"))


def annotations_table() -> TableSpec:
    return TableSpec(
        name=annotations.ANNOTATIONS_COLLECTION, fields=annotations.ANNOTATION_FIELDS,
        id_field="annotation_id", mongo_indexes=(
            IndexSpec((("frame_id", 1), ("task", 1), ("annotator", 1)), "frame_id_task_annotator", unique=True),
            IndexSpec((("label", 1),), "label"),
            IndexSpec((("selection_id", 1),), "selection_id")),
        ingest_time_field="imported_at", partition_field="annotated_at", clustering=("task", "label", "source_uri"))


def runs_table() -> TableSpec:
    return TableSpec(
        name=runs.RUNS_COLLECTION, fields=runs.RUN_FIELDS, id_field="run_id",
        mongo_indexes=(IndexSpec((("started_at", -1),), "started_at"),
                       IndexSpec((("model_version", 1),), "model_version")),
        partition_field="started_at", clustering=("job", "model_version"))


def arrivals_table() -> TableSpec:
    """The streaming job's ledger of file versions (:mod:`schemas.arrivals`)."""
    return TableSpec(
        name=arrivals.ARRIVALS_COLLECTION, fields=arrivals.ARRIVAL_FIELDS, id_field="arrival_key",
        mongo_indexes=(IndexSpec((("input", 1), ("status", 1), ("event_time_max", 1)), "input_status_event_time"),
                       IndexSpec((("source_uri", 1),), "source_uri")),
        partition_field="claimed_at", clustering=("input", "status"))


def label_tasks_table() -> TableSpec:
    """Tasks sent to annotators and their QC status (:mod:`schemas.labelling`)."""
    return TableSpec(
        name=labelling.LABEL_TASKS_COLLECTION, fields=labelling.LABEL_TASK_FIELDS, id_field="label_task_key",
        mongo_indexes=(IndexSpec((("project", 1), ("frame_id", 1)), "project_frame_id", unique=True),
                       IndexSpec((("frame_id", 1),), "frame_id"),
                       IndexSpec((("selection_id", 1), ("status", 1)), "selection_id_status")),
        ingest_time_field="exported_at", partition_field="exported_at", clustering=("project", "status"))


def qc_reports_table() -> TableSpec:
    """Per-annotator and per-batch QC figures (:mod:`schemas.labelling`)."""
    return TableSpec(
        name=labelling.QC_REPORTS_COLLECTION, fields=labelling.QC_REPORT_FIELDS, id_field="qc_row_id",
        mongo_indexes=(IndexSpec((("project", 1), ("created_at", -1)), "project_created_at"),),
        partition_field="created_at", clustering=("project", "scope"))


def retrain_triggers_table() -> TableSpec:
    """Retraining triggers (:mod:`schemas.labelling`)."""
    return TableSpec(
        name=labelling.RETRAIN_TRIGGERS_COLLECTION, fields=labelling.RETRAIN_TRIGGER_FIELDS, id_field="trigger_id",
        mongo_indexes=(IndexSpec((("project", 1), ("created_at", -1)), "project_created_at"),),
        partition_field="created_at", clustering=("project",))


def label_issues_table() -> TableSpec:
    """Likely label errors found by ``annotate qc --label_issues`` (:mod:`schemas.labelling`)."""
    return TableSpec(
        name=labelling.LABEL_ISSUES_COLLECTION, fields=labelling.LABEL_ISSUE_FIELDS, id_field="label_issue_id",
        mongo_indexes=(IndexSpec((("project", 1), ("rank", 1)), "project_rank"),
                       IndexSpec((("frame_id", 1),), "frame_id"),
                       IndexSpec((("annotation_id", 1),), "annotation_id")),
        partition_field="created_at", clustering=("project", "issue_type", "is_issue"))


def all_tables() -> Dict[str, TableSpec]:
    """Every table activebeam writes, by name (built on call, so extended field lists are seen)."""
    specs = (frames_table(), candidates_table(), annotations_table(), runs_table(), arrivals_table(),
             label_tasks_table(), qc_reports_table(), retrain_triggers_table(), label_issues_table())
    return {spec.name: spec for spec in specs}


def bigquery_field(field: Field) -> dict:
    """One column as ``{name, type, mode, description}``, with ``fields`` for a ``RECORD``."""
    column = {"name": field.name, "type": field.bigquery_type, "mode": field.mode, "description": field.description}
    if field.fields:
        column["fields"] = [bigquery_field(f) for f in field.fields]
    return column


def bigquery_fields(spec: TableSpec) -> List[dict]:
    """The BigQuery schema: a JSON list of ``{name, type, mode, description}`` (``bq mk --schema``;
    ``RECORD`` columns nest their ``fields``)."""
    return [bigquery_field(f) for f in spec.fields]


def bigquery_table_options(spec: TableSpec) -> dict:
    """Time partitioning (daily, on ``partition_field``) and clustering, in the REST API's form."""
    options = {}
    if spec.partition_field:
        options["timePartitioning"] = {"type": "DAY", "field": spec.partition_field}
    if spec.clustering:
        options["clustering"] = {"fields": list(spec.clustering)}
    return options


def mongo_path(spec: TableSpec, field_name: str) -> str:
    """Where a field lives in the MongoDB document (``_id`` for the id field)."""
    if field_name == spec.id_field:
        return "_id"
    return spec.mongo_paths.get(field_name, field_name)


def _bson_schema(field: Field) -> dict:
    if field.bigquery_type not in BSON_TYPES:
        raise ValueError(f"field {field.name!r}: BigQuery type {field.bigquery_type!r} has no BSON "
                         f"mapping; known types: {sorted(BSON_TYPES)}")
    if field.mode not in MODES:
        raise ValueError(f"field {field.name!r}: mode must be one of {MODES}, got {field.mode!r}")
    bson = BSON_TYPES[field.bigquery_type]
    if field.mode == "REPEATED":
        # No per-item type check: on 128-d embeddings it costs ~15% of write throughput
        # (benchmarks/store.py); the writers build these lists from typed arrays.
        return {"bsonType": "array", "description": field.description}
    if field.mode == "NULLABLE":
        bson = (bson if isinstance(bson, list) else [bson]) + ["null"]
    return {"bsonType": bson, "description": field.description}


def mongo_validator(spec: TableSpec) -> dict:
    """A ``{"$jsonSchema": ...}`` validator for the collection's documents.

    REQUIRED fields must be present with their type; NULLABLE and REPEATED fields, when present,
    must have theirs; fields under a dotted path are checked inside their sub-document; other
    fields are allowed (``additionalProperties`` is left open).
    """
    root = {"bsonType": "object", "required": [], "properties": {}}
    for field in spec.fields + spec.mongo_only:
        *parents, leaf = mongo_path(spec, field.name).split(".")
        node = root
        for parent in parents:
            child = node["properties"].setdefault(
                parent, {"bsonType": "object", "required": [], "properties": {}})
            if parent not in node["required"] and field.mode == "REQUIRED":
                node["required"].append(parent)
            node = child
        node["properties"][leaf] = _bson_schema(field)
        if field.mode == "REQUIRED":
            node["required"].append(leaf)
    return {"$jsonSchema": _drop_empty_required(root)}


def _drop_empty_required(node: dict) -> dict:
    if not node.get("required"):
        node.pop("required", None)
    for child in node.get("properties", {}).values():
        if child.get("bsonType") == "object":
            _drop_empty_required(child)
    return node


def mongo_index_specs(spec: TableSpec) -> List[dict]:
    """The collection's indexes as ``{"key": {field: direction}, "name", "unique"}`` objects."""
    return [{"key": dict(index.keys), "name": index.name, "unique": index.unique}
            for index in spec.mongo_indexes]


def _value_error(field: Field, value) -> Optional[str]:
    kind = field.bigquery_type
    if kind == "STRING":
        ok = isinstance(value, str)
    elif kind == "INT64":
        ok = isinstance(value, int) and not isinstance(value, bool) and -2**63 <= value < 2**63
    elif kind == "FLOAT64":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif kind == "BOOL":
        ok = isinstance(value, bool)
    elif kind == "TIMESTAMP":
        ok = isinstance(value, (str, datetime.datetime))
    elif kind == "RECORD":
        if not isinstance(value, dict):
            return f"{field.name}: expected a RECORD (dict), got {type(value).__name__}"
        errors = _record_errors(field.fields, value)
        return f"{field.name}.{'; '.join(errors)}" if errors else None
    else:
        return f"{field.name}: unsupported type {kind}"
    return None if ok else f"{field.name}: expected {kind}, got {type(value).__name__} {value!r:.40}"


def bigquery_row_errors(spec: TableSpec, row: dict) -> List[str]:
    """Why ``row`` does not fit the table (empty if it does): unknown columns, missing REQUIRED
    values, wrong types, non-finite floats, REPEATED values that are not lists.

    BigQuery itself rejects such rows (the emulator accepts some, and answers others with HTTP 500
    that clients retry for minutes); checking first turns them into dead letters at once.
    """
    return _record_errors(spec.fields, row)


def _record_errors(fields: Tuple[Field, ...], row: dict) -> List[str]:
    """:func:`bigquery_row_errors` for the columns ``fields`` (a table's, or a RECORD's)."""
    known = {f.name: f for f in fields}
    errors = [f"{name}: no such column" for name in row if name not in known]
    for field in fields:
        value = row.get(field.name)
        if field.mode == "REPEATED":
            if value is None:
                continue
            if not isinstance(value, (list, tuple)):
                errors.append(f"{field.name}: expected a list, got {type(value).__name__}")
            else:
                errors.extend(filter(None, (_value_error(field, v) for v in value)))
        elif value is None:
            if field.mode == "REQUIRED":
                errors.append(f"{field.name}: REQUIRED value missing")
        else:
            error = _value_error(field, value)
            if error:
                errors.append(error)
    return errors


def to_mongo_document(spec: TableSpec, row: dict) -> dict:
    """A flat row (BigQuery columns) as the table's MongoDB document: the id field becomes
    ``_id`` (candidates: :func:`schemas.candidates.candidate_document_id`), dotted ``mongo_paths`` become
    sub-documents, and the ingest-time field is left to the writer.

    Raises
    ------
    KeyError
        If the row lacks its id field (or ``selection_id``/``frame_id`` for candidates).
    """
    doc = {}
    for name, value in row.items():
        if name == spec.ingest_time_field:
            continue
        *parents, leaf = mongo_path(spec, name).split(".")
        node = doc
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    if spec.id_field is None:
        doc["_id"] = candidates.candidate_document_id(row["selection_id"], row["frame_id"])
    elif "_id" not in doc:
        raise KeyError(f"{spec.name} row lacks its id field {spec.id_field!r}")
    return doc
