-- Candidates proposed by each selection.
SELECT
  selection_id,
  strategy,
  model_version,
  COUNT(*) AS candidates,
  MAX(score) AS best_score
FROM `{dataset}.candidates`
GROUP BY selection_id, strategy, model_version
ORDER BY selection_id
