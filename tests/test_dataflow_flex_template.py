"""The Flex Template entry point (dataflow/main.py, FLEX_TEMPLATE_PYTHON_PY_FILE of the image), run
as the template launcher runs it: with ``--template_location`` the job's graph is written there,
nothing is submitted, and the program exits 0 (anything else fails the launch).

Staging and output are in the Cloud Storage emulator, the run record in a real mongod, the
Dataflow endpoint a closed port on 127.0.0.1: nothing leaves the machine.
"""
import json
import os
import subprocess
import sys

from apache_beam.transforms.environments import DockerEnvironment

from tests import harness

# The checkout, or Bazel's runfiles tree (tests/BUILD gives this test dataflow/ as data).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_flex_template_entry_point_writes_the_job_as_the_launcher_runs_it():
    """The launcher runs FLEX_TEMPLATE_PYTHON_PY_FILE with --template_location: the job's graph is
    written there, nothing is submitted, and the program must exit 0 (else the launch fails)."""
    image = "europe-west1-docker.pkg.dev/activebeam-test/images/activebeam:test"
    with harness.mongod() as mongo, harness.gcs_emulator("flex-launch") as bucket:
        job_object = "staging/template_launches/launch-1/job_object"
        argv = [sys.executable, os.path.join(ROOT, "dataflow", "main.py"),
                "--runner=DataflowRunner", "--project=activebeam-test", "--region=europe-west1",
                f"--staging_location=gs://{bucket.name}/staging", f"--temp_location=gs://{bucket.name}/temp",
                f"--template_location=gs://{bucket.name}/{job_object}", f"--sdk_container_image={image}",
                f"--dataflow_endpoint=http://localhost:{harness.free_port()}", "--no_auth",
                "--experiments=no_use_multiple_sdk_containers", "--number_of_worker_harness_threads=4",
                "--input=gs://cameras/site-1/*.mp4", f"--mongo_uri={mongo.uri}",
                f"--output_dir=gs://{bucket.name}/out"]
        # The checkout's packages, not another installed copy of the project.
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]), TF_CPP_MIN_LOG_LEVEL="3")
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-4000:]
        job = json.loads(bucket.blob(job_object).download_as_bytes())
    environment = job["environment"]
    # Beam adds use_multiple_sdk_containers (one SDK process per vCPU) unless told not to.
    assert "no_use_multiple_sdk_containers" in environment["experiments"]
    assert "use_multiple_sdk_containers" not in environment["experiments"]
    [pool] = environment["workerPools"]
    assert pool["numThreadsPerWorker"] == 4
    [sdk] = pool["sdkHarnessContainerImages"]
    assert sdk["containerImage"] == image
    assert f"beam:version:sdk_base:{DockerEnvironment.default_docker_image()}" in sdk["capabilities"]


if __name__ == "__main__":
    harness.main(__file__)
