"""Export of frames to a real Label Studio: ``ExportToLabelStudio`` against a hand-written loop.

    python -m benchmarks.annotate [--frames 300] [--repeats 2]

Starts the embedded Label Studio (``scripts/setup.sh`` installs it) on a fresh data directory,
then exports ``--frames`` real Fashion-MNIST PNGs (frame documents with a predicted class and
probabilities) into a new project per round:

* **project**: :class:`transforms.annotate.ExportToLabelStudio` on the in-process FnApiRunner
  (pictures decoded again and written as PNGs, tasks imported 100 per request with pre-annotations);
* **baseline**: what a short script does: copy each picture under the document root and import its
  task (with the same pre-annotation) in one request per task.

Both sides end with the same tasks in Label Studio (checked). Last stdout line:
``{"frames", "project_tasks_per_s", "baseline_tasks_per_s", "ratio", "startup_s"}``
(``ratio`` = project / baseline, medians of ``--repeats`` interleaved rounds).
"""
import argparse
import glob
import os
import shutil
import statistics
import tempfile
import time
import urllib.parse

import apache_beam as beam

from benchmarks.common import interleaved_rates, print_result
from beam_pipelines.local.home import media_dir
from beam_pipelines.local.label_studio import LocalLabelStudio
from beam_pipelines.local.sample_media import CLASS_NAMES
from transforms.annotate import label_studio as ls
from transforms.annotate.client import LabelStudioClient
from transforms.annotate.ptransforms import ExportItem, ExportToLabelStudio


def _frames(n):
    paths = sorted(glob.glob(os.path.join(media_dir(), "fashion-mnist", "*.png")))[:n]
    return [{"_id": f"bench{i:06d}", "source_uri": p, "frame_index": 0, "timestamp_s": None, "width": 28,
             "height": 28, "predicted_class": i % 10, "probabilities": [0.1] * 10,
             "model": {"name": "fashion_mnist_cnn", "version": "bench"}} for i, p in enumerate(paths)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    frames = _frames(args.frames)
    root = tempfile.mkdtemp(prefix="bench-annotate-")
    config = ls.label_config("classification", CLASS_NAMES)
    try:
        started = time.perf_counter()
        with LocalLabelStudio(os.path.join(root, "ls-data"), document_root=root) as server:
            startup_s = time.perf_counter() - started
            client = LabelStudioClient(server.url, server.api_key)
            rounds = {"project": 0, "baseline": 0}

            def new_project(side):
                rounds[side] += 1
                title = f"{side}-{rounds[side]}"
                media = os.path.join(root, "media", title)
                os.makedirs(media)
                project = client.ensure_project(title, config)
                client.ensure_local_storage(project["id"], media)
                return project, title, media

            def project_side():
                project, title, media = new_project("project")
                export = ExportToLabelStudio(server.url, server.api_key, project["id"], title, "classification",
                                             CLASS_NAMES, media_dir=media, document_root=root)
                with beam.Pipeline(runner="FnApiRunner") as p:
                    _ = p | beam.Create([ExportItem(f, "bench") for f in frames]) | export
                assert sum(1 for _ in client.tasks(project["id"])) == len(frames)
                return len(frames)

            def baseline_side():
                project, _, media = new_project("baseline")
                for f in frames:
                    target = os.path.join(media, f"{f['_id']}.png")
                    shutil.copyfile(f["source_uri"], target)
                    url = "/data/local-files/?d=" + urllib.parse.quote(os.path.relpath(target, root))
                    task = ls.make_task(f, url, "classification", CLASS_NAMES, selection_id="bench")
                    client.import_tasks(project["id"], [task])
                assert sum(1 for _ in client.tasks(project["id"])) == len(frames)
                return len(frames)

            rates = interleaved_rates({"project": project_side, "baseline": baseline_side}, args.repeats)
        project_rate, baseline_rate = statistics.median(rates["project"]), statistics.median(rates["baseline"])
        print_result({"frames": len(frames), "project_tasks_per_s": round(project_rate, 1),
                      "baseline_tasks_per_s": round(baseline_rate, 1),
                      "ratio": round(project_rate / baseline_rate, 2), "startup_s": round(startup_s, 1)})
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
