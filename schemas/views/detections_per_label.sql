-- Detector boxes per label (one row per element of the frames' REPEATED detections): boxes, frames,
-- mean confidence, boxes below 0.5 confidence and the mean box area in pixels.
SELECT
  d.label AS label,
  COUNT(*) AS boxes,
  COUNT(DISTINCT f.frame_id) AS frames,
  AVG(d.score) AS mean_score,
  COUNTIF(d.score < 0.5) AS uncertain_boxes,
  AVG((d.box.x2 - d.box.x1) * (d.box.y2 - d.box.y1)) AS mean_area_px
FROM `{dataset}.frames` AS f, UNNEST(f.detections) AS d
GROUP BY label
ORDER BY boxes DESC, label
