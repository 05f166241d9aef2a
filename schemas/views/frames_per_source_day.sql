-- Frames per source file and day of indexing (the frames table's partitioning column).
SELECT
  source_uri,
  CAST(DATE(indexed_at) AS STRING) AS day,
  COUNT(DISTINCT frame_id) AS frames
FROM `{dataset}.frames`
GROUP BY source_uri, day
ORDER BY source_uri, day
