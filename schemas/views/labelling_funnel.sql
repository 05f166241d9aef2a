-- The labelling funnel of each selection sent to annotators: selected -> exported -> labelled -> accepted
-- (gold tasks left out; relabel = sent back by QC).
WITH tasks AS (
  SELECT
    selection_id,
    COUNT(*) AS exported,
    COUNTIF(status IN ('labelled', 'accepted', 'relabel')) AS labelled,
    COUNTIF(status = 'accepted') AS accepted,
    COUNTIF(status = 'relabel') AS relabel
  FROM `{dataset}.label_tasks`
  WHERE NOT gold AND selection_id IS NOT NULL
  GROUP BY selection_id
), selected AS (
  SELECT selection_id, COUNT(DISTINCT frame_id) AS selected
  FROM `{dataset}.candidates`
  GROUP BY selection_id
)
SELECT
  tasks.selection_id,
  COALESCE(selected.selected, 0) AS selected,
  tasks.exported,
  tasks.labelled,
  tasks.accepted,
  tasks.relabel
FROM tasks LEFT JOIN selected ON tasks.selection_id = selected.selection_id
ORDER BY tasks.selection_id
