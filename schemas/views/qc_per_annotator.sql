-- The latest QC run of each annotation project: agreement, gold accuracy and throughput per annotator and batch.
WITH latest AS (
  SELECT project, ARRAY_AGG(qc_id ORDER BY created_at DESC LIMIT 1)[OFFSET(0)] AS qc_id
  FROM `{dataset}.qc_reports`
  GROUP BY project
)
SELECT
  r.project,
  r.scope,
  r.name,
  r.annotations,
  r.class_agreement,
  r.box_f1,
  r.gold_accuracy,
  r.per_hour,
  r.accepted,
  r.relabel
FROM `{dataset}.qc_reports` AS r JOIN latest ON r.qc_id = latest.qc_id
ORDER BY r.project, r.scope, r.name
