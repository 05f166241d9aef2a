"""The ``mine`` job: from raw images and videos to ranked annotation candidates, in batch or
streaming (``python -m beam_pipelines.mine``).

* :mod:`~beam_pipelines.mine.options`: its options, checked before anything runs;
* :mod:`~beam_pipelines.mine.job`: what a run is made of (model, detector, stores, lineage),
  shared by both modes;
* :mod:`~beam_pipelines.mine.batch`: :class:`MineFrames`, the batch job;
* :mod:`~beam_pipelines.mine.stream`: :class:`MineStream`, the streaming job;
* :mod:`~beam_pipelines.mine.command`: :func:`run` (either mode, from the options) and
  :func:`main` (the command).

The names below are loaded on first use, so ``python -m beam_pipelines.mine --budget -5`` answers
before the pipeline modules load.
"""
import importlib

__all__ = ["run", "main", "MineOptions", "StreamingOptions", "MineFrames", "MineStream", "SUMMARY_COUNTERS",
           "summary_counts", "model_loads", "QuietBeamNoise", "COMMAND_ENVIRONMENT"]

_WHERE = {"run": "command", "main": "command", "QuietBeamNoise": "command", "COMMAND_ENVIRONMENT": "command",
          "MineOptions": "options", "StreamingOptions": "options", "MineFrames": "batch",
          "SUMMARY_COUNTERS": "batch", "summary_counts": "batch", "model_loads": "batch",
          "MineStream": "stream"}


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
