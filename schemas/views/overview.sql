-- Sources (files), frames and model versions in the frames index.
SELECT
  COUNT(DISTINCT source_uri) AS sources,
  COUNT(DISTINCT frame_id) AS frames,
  COUNT(DISTINCT model_version) AS model_versions
FROM `{dataset}.frames`
