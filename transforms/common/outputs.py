"""Result files of a selection run: ``candidates.jsonl``, ``dead_letter.jsonl``, ``summary.json``.

All three are written through Beam's ``FileSystems``, so ``output_dir`` may be local or ``gs://``.
Metric (namespace ``activebeam.outputs``): ``dead_letters_written``.
"""
import json
from typing import Dict, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

CANDIDATES_FILE = "candidates.jsonl"
DEAD_LETTER_FILE = "dead_letter.jsonl"
SUMMARY_FILE = "summary.json"
METRICS_NAMESPACE = "activebeam.outputs"


def _write_text(path: str, text: str) -> str:
    with FileSystems.create(path, mime_type="application/json") as f:
        f.write(text.encode("utf-8"))
    return path


def _json_line(obj) -> str:
    return json.dumps(obj, sort_keys=False, ensure_ascii=False, allow_nan=False)


#: Per-stage counters of written dead letters are named ``DEAD_LETTERS_AT + stage``.
DEAD_LETTERS_AT = "dead_letters_at_"


def _dead_letter_line(dead_letter, counter) -> str:
    counter.inc()
    Metrics.counter(METRICS_NAMESPACE, DEAD_LETTERS_AT + dead_letter.stage).inc()
    return _json_line(dead_letter.to_json_dict())


def _write_candidates(candidates, path):
    ordered = sorted(candidates, key=lambda c: (c.window_start is not None, c.window_start or 0.0, c.rank))
    return _write_text(path, "".join(_json_line(c.to_json_dict()) + "\n" for c in ordered))


class WriteCandidates(beam.PTransform):
    """Writes ``Candidate``\\ s to one JSON-lines file sorted by rank (rank 1 first).

    Windowed candidates (streaming selections) are sorted by window start, then rank. In a
    streaming pipeline each window firing rewrites the file; use the MongoDB or BigQuery
    candidate writers of :mod:`transforms.index.candidates` there.
    """

    def __init__(self, path: str):
        super().__init__()
        self._path = path

    def expand(self, candidates):
        return (candidates
                | "Gather" >> beam.combiners.ToList()
                | "Write" >> beam.Map(_write_candidates, self._path))


class WriteDeadLetters(beam.PTransform):
    """Writes ``DeadLetter``\\ s to one JSON-lines file (``source_uri``, ``stage``, ``error``...).

    Uses Beam's ``WriteToText`` (one shard, exact file name), so the file exists, possibly
    empty, after every run. Counts them in the ``dead_letters_written`` counter, and per stage in
    ``dead_letters_at_<stage>``.
    """

    def __init__(self, path: str):
        super().__init__()
        self._path = path

    def expand(self, dead_letters):
        return (dead_letters
                | "ToJson" >> beam.Map(_dead_letter_line,
                                       Metrics.counter(METRICS_NAMESPACE, "dead_letters_written"))
                | "Write" >> beam.io.WriteToText(self._path, num_shards=1, shard_name_template=""))


def _write_summary(counts: Dict[str, int], path: str, static: dict):
    summary = dict(static)
    summary.update(counts)
    return _write_text(path, json.dumps(summary, indent=2, sort_keys=True) + "\n")


class _SummaryFn(beam.CombineFn):
    """Sums ``(name, number)`` and gathers ``(name, (key, value))`` into one dict, every name
    present (0 or ``{}`` when nothing was seen)."""

    def __init__(self, numbers, mappings):
        self._numbers, self._mappings = tuple(numbers), tuple(mappings)

    def create_accumulator(self):
        return {}

    def add_input(self, accumulator, element):
        name, value = element
        if name in self._mappings:
            key, item = value
            accumulator.setdefault(name, {})[key] = item
        else:
            accumulator[name] = accumulator.get(name, 0) + value
        return accumulator

    def merge_accumulators(self, accumulators):
        merged = {}
        for accumulator in accumulators:
            for name, value in accumulator.items():
                if name in self._mappings:
                    merged.setdefault(name, {}).update(value)
                else:
                    merged[name] = merged.get(name, 0) + value
        return merged

    def extract_output(self, accumulator):
        summary = {name: 0 for name in self._numbers}
        summary.update({name: {} for name in self._mappings})
        summary.update(accumulator)
        return summary


class _PartialSummaryFn(beam.DoFn):
    """One counted PCollection's part of the summary, added up per bundle and window: a
    :class:`_SummaryFn` accumulator per window, emitted when the bundle finishes.

    This is combiner lifting done before the ``Flatten`` of the parts: a runner that runs a
    multi-input ``Flatten`` itself (Beam's FnApiRunner does) would otherwise move every counted
    element, several per frame, through its data plane.
    """

    def __init__(self, summary_fn: "_SummaryFn", name: str, value_fn=None, mapping: bool = False):
        self._fn, self._name = summary_fn, name
        self._value_fn = value_fn  # None: count the elements
        self._mapping = mapping  # value_fn gives a (key, value) pair or None
        self._partial = {}

    def start_bundle(self):
        self._partial = {}

    def _item(self, element):
        if self._value_fn is None:
            return self._name, 1
        value = self._value_fn(element)
        if self._mapping and not value:
            return None
        return self._name, value

    def process(self, element, window=beam.DoFn.WindowParam):
        item = self._item(element)
        if item is not None:
            accumulator = self._partial.get(window)
            if accumulator is None:
                accumulator = self._partial[window] = self._fn.create_accumulator()
            self._fn.add_input(accumulator, item)

    def finish_bundle(self):
        for window, accumulator in self._partial.items():
            yield WindowedValue(accumulator, window.max_timestamp(), [window])
        self._partial = {}


class _MergeSummariesFn(beam.CombineFn):
    """Merges :class:`_PartialSummaryFn`'s accumulators into the summary."""

    def __init__(self, summary_fn: "_SummaryFn"):
        self._fn = summary_fn

    def create_accumulator(self):
        return self._fn.create_accumulator()

    def add_input(self, accumulator, partial):
        return self._fn.merge_accumulators([accumulator, partial])

    def merge_accumulators(self, accumulators):
        return self._fn.merge_accumulators(accumulators)

    def extract_output(self, accumulator):
        return self._fn.extract_output(accumulator)


class WriteSummary(beam.PTransform):
    """Counts named PCollections exactly and writes them, with static facts, to a JSON file.

    Input: a dict ``{name: PCollection}`` whose elements are counted. ``sums`` maps names to
    ``(PCollection, fn)`` whose ``fn(element)`` values are summed. ``mappings`` maps names to
    ``(PCollection, fn)`` whose ``fn(element)`` returns a ``(key, value)`` pair or None; the pairs
    become a JSON object. Each counted PCollection is added up per bundle where it is made
    (:class:`_PartialSummaryFn`), and one ``CombineGlobally`` merges the partial sums into the
    whole summary (one shuffle of partial sums, not one per count or per element).
    """

    def __init__(self, path: str, static: Optional[dict] = None, sums: Optional[dict] = None,
                 mappings: Optional[dict] = None):
        super().__init__()
        self._path = path
        self._static = static or {}
        self._sums = sums or {}
        self._mappings = mappings or {}

    def expand(self, named_pcolls):
        summary_fn = _SummaryFn(sorted(named_pcolls) + sorted(self._sums), sorted(self._mappings))
        pipeline = None
        parts = []
        for name, pcoll in sorted(named_pcolls.items()):
            pipeline = pcoll.pipeline
            parts.append(pcoll | f"Count_{name}" >> beam.ParDo(_PartialSummaryFn(summary_fn, name)))
        for name, (pcoll, fn) in sorted(self._sums.items()):
            pipeline = pcoll.pipeline
            parts.append(pcoll | f"Sum_{name}" >> beam.ParDo(_PartialSummaryFn(summary_fn, name, fn)))
        for name, (pcoll, fn) in sorted(self._mappings.items()):
            pipeline = pcoll.pipeline
            parts.append(pcoll | f"Map_{name}" >> beam.ParDo(
                _PartialSummaryFn(summary_fn, name, fn, mapping=True)))
        return (parts | "FlattenCounts" >> beam.Flatten(pipeline=pipeline)
                | "Summarise" >> beam.CombineGlobally(_MergeSummariesFn(summary_fn))
                | "Write" >> beam.Map(_write_summary, self._path, self._static))
