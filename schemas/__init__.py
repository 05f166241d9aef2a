"""activebeam's record types and storage schemas: the single source of truth for every record.

* :mod:`schemas.records`: typed records that flow between pipeline stages (``Frame``,
  ``FrameRecord``, ``Candidate``, ``DeadLetter``, ``FileOutcome``).
* :mod:`schemas.frames`: the ``frames`` index: MongoDB document layout and indexes, BigQuery
  table schema, and the functions that turn a :class:`~schemas.records.FrameRecord` into each.
* :mod:`schemas.candidates`, :mod:`schemas.annotations`, :mod:`schemas.runs`, :mod:`schemas.arrivals`,
  :mod:`schemas.labelling` (``label_tasks``, ``qc_reports``, ``retrain_triggers``, ``label_issues``): the other
  tables, all registered in :mod:`schemas.tables`.
* :mod:`schemas.scores`: the one registry of per-frame score names, meaning and orientation.
"""
