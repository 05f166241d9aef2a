-- Annotations per task and label, and how many distinct frames carry each label.
SELECT
  task,
  label,
  COUNT(*) AS annotations,
  COUNT(DISTINCT frame_id) AS frames
FROM `{dataset}.annotations`
GROUP BY task, label
ORDER BY task, annotations DESC, label
