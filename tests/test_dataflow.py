"""The `mine` job as a Dataflow job: the job specification and staged package, built offline.

Beam writes the job file, the pipeline proto and the staged artifacts before it submits; the
submission then goes to a closed port on 127.0.0.1 and fails, so nothing leaves the machine.
"""
import json
import os
import tarfile

import pytest
import requests

from beam_pipelines import mine
from tests import harness



def test_dataflow_job_spec_and_setup_file_package():
    d = harness.tmpdir("dataflow-")
    # Dataflow needs gs:// temp and staging locations (else Beam looks up a default bucket on
    # storage.googleapis.com): they live in the Cloud Storage emulator.
    with harness.gcs_emulator("dataflow-staging") as bucket:
        argv = [
            "--runner=DataflowRunner", "--project=activebeam-test", "--region=europe-west1",
            f"--temp_location=gs://{bucket.name}/temp", f"--staging_location=gs://{bucket.name}/staging",
            f"--dataflow_job_file={d}/job.json",
            f"--dataflow_endpoint=http://localhost:{harness.free_port()}",
            "--no_auth", "--sdk_location=container", f"--setup_file={harness.project_copy(d)}",
            "--input=gs://cameras/site-1/*.mp4", "--mongo_uri=mongodb://127.0.0.1:9",
            "--output_dir=gs://cameras/activebeam-out", "--budget=500"]
        with pytest.raises(requests.exceptions.ConnectionError, match="localhost"):
            mine.run(argv)
        staged = {b.name.split("/")[-1]: b for b in bucket.list_blobs(prefix="staging/")}
        pipeline = staged["pipeline.pb"].download_as_bytes()
        staged["workflow.tar.gz"].download_to_filename(os.path.join(d, "workflow.tar.gz"))

    with open(os.path.join(d, "job.json")) as f:
        job = json.load(f)
    assert job["type"] == "JOB_TYPE_BATCH"
    for stage in (b"Mine/Decode/DecodeFiles", b"Mine/EmbedAndScore/RunInference",
                  b"Mine/IndexInMongoDB/Upsert", b"Mine/SelectCandidates/Select",
                  b"Mine/CandidatesToMongoDB", b"Mine/WriteSummary"):
        assert stage in pipeline, stage

    # --setup_file stages an sdist that carries the code and the default model.
    with tarfile.open(os.path.join(d, "workflow.tar.gz")) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for required in ("setup.py", "requirements.txt", "transforms/score/models/fashion_mnist_cnn.keras",
                     "transforms/decode/ptransforms.py", "beam_pipelines/mine.py", "schemas/records.py",
                     "schemas/generated/bigquery/frames.json", "schemas/views/overview.sql"):
        assert required in names, required


def test_remote_runner_needs_explicit_input():
    with pytest.raises(ValueError, match="--input is required"):
        mine.run(["--runner=DataflowRunner", "--output_dir=gs://b/out", "--mongo_uri=mongodb://127.0.0.1:9"])


if __name__ == "__main__":
    harness.main(__file__)
