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
                     "transforms/decode/ptransforms.py", "beam_pipelines/mine/batch.py", "schemas/records.py",
                     "schemas/generated/bigquery/frames.json", "schemas/views/overview.sql"):
        assert required in names, required


def _dofn_payloads(pipeline_pb: bytes):
    """The pickled bytes of every ParDo's DoFn in a pipeline proto (Beam stores them as base64 of
    the compressed pickle: bz2, or zlib in older versions)."""
    import base64
    import bz2
    import zlib
    from apache_beam.portability import common_urns
    from apache_beam.portability.api import beam_runner_api_pb2
    pipeline = beam_runner_api_pb2.Pipeline.FromString(pipeline_pb)
    for transform in pipeline.components.transforms.values():
        if transform.spec.urn == common_urns.primitives.PAR_DO.urn:
            payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
            try:
                compressed = base64.b64decode(payload.do_fn.payload, validate=True)
            except ValueError:  # not a pickled DoFn (a runner's own payload)
                continue
            for decompress in (bz2.decompress, zlib.decompress):
                try:
                    yield decompress(compressed)
                    break
                except (OSError, ValueError, zlib.error):
                    continue


def test_dataflow_job_runs_the_default_models_staged_for_its_workers():
    """Without --model, a Dataflow job's workers get the converted EfficientNet-Lite0 and NanoDet-g,
    copied (with sidecar, class names and manifest) to the staging location, never the
    Fashion-MNIST CNN; the staged copy is reused."""
    from transforms.score import pretrained
    from transforms.score.model_staging import STAGED_FILES, STAGING_FOLDER, stage_default_models
    d = harness.tmpdir("dataflow-models-")
    with harness.pretrained_defaults(), harness.gcs_emulator("dataflow-models") as bucket:
        argv = [
            "--runner=DataflowRunner", "--project=activebeam-test", "--region=europe-west1",
            f"--temp_location=gs://{bucket.name}/temp", f"--staging_location=gs://{bucket.name}/staging",
            f"--dataflow_job_file={d}/job.json", f"--dataflow_endpoint=http://localhost:{harness.free_port()}",
            "--no_auth", "--sdk_location=container", "--input=gs://cameras/site-1/*.mp4",
            "--mongo_uri=mongodb://127.0.0.1:9", "--output_dir=gs://cameras/activebeam-out"]
        with pytest.raises(requests.exceptions.ConnectionError, match="localhost"):
            mine.run(argv)
        staged = {b.name: b for b in bucket.list_blobs(prefix=f"staging/{STAGING_FOLDER}/")}
        folders = {name.split("/")[2] for name in staged}
        assert len(folders) == 1 and {n.rsplit("/", 1)[1] for n in staged} == set(STAGED_FILES)
        folder = f"gs://{bucket.name}/staging/{STAGING_FOLDER}/{folders.pop()}"
        updated = {n: b.updated for n, b in staged.items()}
        (pipeline,) = [b.download_as_bytes() for b in bucket.list_blobs(prefix="staging/")
                       if b.name.endswith("/pipeline.pb")]
        # The next launch from this machine finds the folder complete and copies nothing.
        assert stage_default_models(f"gs://{bucket.name}/staging") == {
            os.path.join(pretrained.models_dir(), name): f"{folder}/{name}"
            for name in (pretrained.BACKBONE_FILE, pretrained.DETECTOR_FILE, pretrained.DETECTOR_INT8_FILE)}
        assert {b.name: b.updated for b in bucket.list_blobs(prefix=f"staging/{STAGING_FOLDER}/")} == updated
    payloads = b"".join(_dofn_payloads(pipeline))
    assert f"{folder}/{pretrained.BACKBONE_FILE}".encode() in payloads
    assert f"{folder}/{pretrained.DETECTOR_FILE}".encode() in payloads
    assert b"fashion_mnist" not in payloads and pretrained.models_dir().encode() not in payloads


def test_a_job_without_the_default_models_stops_with_one_line_that_says_how_to_get_them():
    import subprocess
    import sys
    env = dict(os.environ, ACTIVEBEAM_MODELS=harness.tmpdir("no-models-"))
    env.pop("ACTIVEBEAM_DEFAULT_MODEL", None)
    result = subprocess.run([sys.executable, "-m", "beam_pipelines.mine", f"--input={harness.media('china.jpg')}",
                             f"--output_dir={harness.tmpdir('no-models-out-')}"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"mine: error: the default models (EfficientNet-Lite0, NanoDet-g) are not in {env['ACTIVEBEAM_MODELS']}: "
        "get them with `python -m transforms.score.pretrained.convert` (bash scripts/setup.sh does it), "
        "or pass --model"]


def test_remote_runner_needs_explicit_input():
    with pytest.raises(ValueError, match="--input is required"):
        mine.run(["--runner=DataflowRunner", "--output_dir=gs://b/out", "--mongo_uri=mongodb://127.0.0.1:9"])


if __name__ == "__main__":
    harness.main(__file__)
