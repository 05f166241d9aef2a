"""The streaming `mine` job as a Dataflow job: its job specification, built offline.

As for the batch job (tests/test_dataflow.py), Beam writes the job file and the pipeline proto
before it submits; the submission goes to a stand-in endpoint on 127.0.0.1 that answers 403
(not retried, unlike a closed port, which Beam retries for about 30 s), so nothing leaves the
machine. The staging bucket lives in the Cloud Storage emulator.
"""
import contextlib
import http.server
import json
import re
import threading

import pytest
from apache_beam.portability.api import beam_runner_api_pb2

from beam_pipelines import mine
from tests import harness

#: Steps whose names must not change between versions of the job, so that a running job can be
#: replaced with `--update` (Dataflow maps the old job's state to the new one by step name).
STABLE_STEPS = (
    "Mine/ReadArrivals/ReadFromPubSub", "Mine/IntakeWindows", "Mine/ParseNotifications/Parse",
    "Mine/ClaimArrivals/Claim", "Mine/Decode/DecodeFiles", "Mine/EmbedAndScore/RunInference",
    "Mine/EventTime/ByFile", "Mine/EventTime/EventTimes", "Mine/IndexInMongoDB/Upsert",
    "Mine/Acknowledge/WhenIndexed", "Mine/Acknowledge/Acknowledge", "Mine/ReplayArrivals/ReadDoneArrivals",
    "Mine/SelectPerWindow/DeadLetterTooLate", "Mine/SelectPerWindow/EventTimeWindows",
    "Mine/SelectPerWindow/Select", "Mine/SelectPerWindow/ToPanes", "Mine/WriteWindows/Serialise",
    "Mine/WriteWindows/Write", "Mine/EmbedAndScore/RunInference/BeamML_RunInference")


class _Refuse(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's naming
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": {"code": 403, "message": "offline test", "status": "PERMISSION_DENIED"}}')

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def _refusing_endpoint():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_port}"  # Beam accepts localhost, not an IP
    finally:
        server.shutdown()
        server.server_close()


def _job_spec(bucket, d, name, *extra):
    argv = [
        "--runner=DataflowRunner", "--project=activebeam-test", "--region=europe-west1",
        f"--temp_location=gs://{bucket.name}/temp", f"--staging_location=gs://{bucket.name}/staging-{name}",
        f"--dataflow_job_file={d}/{name}.json",
        "--no_auth", "--sdk_location=container", "--enable_streaming_engine",
        "--input_subscription=projects/cams-prod/subscriptions/uploads",
        # A closed loopback port: the driver's run record gives up on it after 0.3 s.
        "--mongo_uri=mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=300", "--output_dir=gs://cams/activebeam-stream",
        "--model_watch=gs://cams/models/*.keras", *extra]
    with _refusing_endpoint() as endpoint, pytest.raises(Exception, match="403|offline test|PERMISSION"):
        mine.run(argv + [f"--dataflow_endpoint={endpoint}"])
    with open(f"{d}/{name}.json") as f:
        job = json.load(f)
    staged = {b.name.split("/")[-1]: b for b in bucket.list_blobs(prefix=f"staging-{name}/")}
    pipeline = beam_runner_api_pb2.Pipeline.FromString(staged["pipeline.pb"].download_as_bytes())
    return job, pipeline


def _step_names(pipeline):
    return {t.unique_name for t in pipeline.components.transforms.values()}


def test_streaming_job_spec_and_stable_step_names():
    d = harness.tmpdir("dataflow-stream-")
    with harness.gcs_emulator("dataflow-stream") as bucket:
        job, pipeline = _job_spec(bucket, d, "first", "--budget=20", "--window_seconds=60")
        _, again = _job_spec(bucket, d, "second", "--budget=50", "--strategy=coreset", "--window_seconds=300",
                             "--allowed_lateness_seconds=3600")
    assert job["type"] == "JOB_TYPE_STREAMING"
    experiments = job["environment"].get("experiments", [])
    assert "enable_streaming_engine" in experiments, experiments
    names = _step_names(pipeline)
    for step in STABLE_STEPS:
        assert step in names, (step, sorted(names))
    # Reading: Beam's own Pub/Sub source (it acknowledges on checkpoints) and model watcher.
    assert any(re.match(r"Mine/ReadArrivals/WatchModels", n) for n in names)
    # Another budget, strategy and window length: the same steps, so `--update` can replace the job.
    assert _step_names(again) == names


def test_local_runner_names_become_the_bundle_based_runner():
    from apache_beam.options.pipeline_options import PipelineOptions
    from beam_pipelines.mine.stream import check_streaming
    for runner in (None, "DirectRunner", "BundleBasedDirectRunner"):
        argv = ["--watch=/tmp/cams/*.jpg", "--output_dir=" + harness.tmpdir("opts-")]
        job = check_streaming(PipelineOptions(argv + ([f"--runner={runner}"] if runner else [])))
        assert job.runner == "BundleBasedDirectRunner" and job.local


if __name__ == "__main__":
    harness.main(__file__)
