-- Frames per model version and predicted class, with the class's name (predicted_label).
SELECT
  model_version,
  predicted_class,
  predicted_label,
  COUNT(DISTINCT frame_id) AS frames
FROM `{dataset}.frames`
GROUP BY model_version, predicted_class, predicted_label
ORDER BY model_version, frames DESC, predicted_class
