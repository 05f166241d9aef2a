-- Near-duplicate groups: frames and sources per group (duplicate_group = the representative's frame_id).
SELECT
  duplicate_group,
  COUNT(DISTINCT frame_id) AS frames,
  COUNT(DISTINCT source_uri) AS sources
FROM `{dataset}.frames`
WHERE duplicate_group IS NOT NULL
GROUP BY duplicate_group
ORDER BY duplicate_group
