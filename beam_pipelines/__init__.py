"""Runnable activebeam pipelines: ``python -m beam_pipelines.mine`` is the main job."""
