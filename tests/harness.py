"""Test harness: real servers on 127.0.0.1, real sample data, and a pytest entry point for Bazel.

* :func:`mongod` starts a real MongoDB 6.0 server (:class:`beam_pipelines.local.mongod.LocalMongoD`).
* :func:`bigquery_emulator` starts ``bqemulator`` (installed by ``scripts/setup.sh`` in its own
  virtualenv) and points the Google clients at it with anonymous credentials.
* :func:`run_collect` runs a Beam pipeline on the in-process ``FnApiRunner`` (never Prism) and
  returns the elements of the PCollections it is asked for.
"""
import atexit
import contextlib
import glob
import os
import pickle
import shutil
import sys
import tempfile

os.environ.setdefault("NO_GCE_CHECK", "true")
# The one pin of the small model: every `mine` job a test starts (in-process or as a child
# process) defaults to the bundled Fashion-MNIST CNN without a detector, so tests of stores,
# hardening, streaming... stay fast; tests of the pretrained models use `pretrained_defaults()`.
os.environ.setdefault("ACTIVEBEAM_DEFAULT_MODEL", "fashion_mnist")

import apache_beam as beam  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

from beam_pipelines.local import emulators  # noqa: E402
from beam_pipelines.local.home import activebeam_home, media_dir  # noqa: E402
from beam_pipelines.local.mongod import LocalMongoD  # noqa: E402
from beam_pipelines.local.processes import free_port  # noqa: E402

OPENCV_DATA = "/usr/share/doc/opencv-doc/examples/data"
BIGQUERY_PROJECT = "activebeam-test"


_CREATED_DIRS = []


@contextlib.contextmanager
def pretrained_defaults():
    """Within the block, ``mine`` jobs default to the converted EfficientNet-Lite0 and NanoDet-g
    (:func:`transforms.score.pretrained.default_models`) instead of the pinned small model."""
    saved = os.environ.pop("ACTIVEBEAM_DEFAULT_MODEL", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["ACTIVEBEAM_DEFAULT_MODEL"] = saved


def tmpdir(prefix="activebeam-test-") -> str:
    """A fresh temporary directory under Bazel's ``TEST_TMPDIR`` (or the system's), removed when
    the test process exits (mongod data directories alone preallocate 300 MB each)."""
    path = tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("TEST_TMPDIR"))
    _CREATED_DIRS.append(path)
    return path


@atexit.register
def _remove_created_dirs():
    for path in _CREATED_DIRS:
        shutil.rmtree(path, ignore_errors=True)


CHECKOUT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
PROJECT_FILES = ("setup.py", "MANIFEST.in", "README.md", "requirements.txt", "requirements-dev.txt")
PROJECT_DIRS = ("beam_pipelines", "transforms", "schemas", "models", "benchmarks")


def project_copy(d: str) -> str:
    """A writable copy of the project under ``d``; returns its ``setup.py`` (building a wheel or an
    sdist writes next to setup.py; Bazel's sandbox keeps the checkout read-only)."""
    root = os.path.join(d, "project")
    os.makedirs(root)
    for name in PROJECT_FILES:
        shutil.copy(os.path.join(CHECKOUT, name), root)
    for package in PROJECT_DIRS:
        shutil.copytree(os.path.join(CHECKOUT, package), os.path.join(root, package),
                        ignore=shutil.ignore_patterns("__pycache__", "BUILD"))
    return os.path.join(root, "setup.py")


def media(*parts) -> str:
    """Path (or glob) of bundled sample media (prepared by scripts/setup.sh)."""
    path = os.path.join(media_dir(), *parts)
    if not glob.glob(path):
        raise FileNotFoundError(f"{path} is missing: run scripts/setup.sh")
    return path


@contextlib.contextmanager
def mongod():
    """A real mongod on a free 127.0.0.1 port, with its data in a temporary directory."""
    with LocalMongoD(os.path.join(tmpdir("mongod-"), "db")) as server:
        yield server


def kill_mongod(server: LocalMongoD) -> None:
    """Crashes a running :func:`mongod` (SIGKILL, no clean shutdown); ``server.start()`` restarts it
    on the same port and data directory."""
    process = server._process
    process.kill()
    process.wait()
    server._process = None


environment = emulators.environment  # sets variables for a block, then restores them


@contextlib.contextmanager
def _emulator(name, argv, health_url, env_vars, extra_env=None, timeout_s=60):
    """:func:`beam_pipelines.local.emulators.run_emulator` with its log in a test folder."""
    with emulators.run_emulator(name, argv, health_url, env_vars, extra_env, timeout_s,
                                log_dir=tmpdir(f"{name}-")):
        yield


def _emulator_binary(venv, name):
    binary = os.path.join(activebeam_home(), "venvs", venv, "bin", name)
    if not os.path.exists(binary):
        raise FileNotFoundError(f"{binary} is missing: run scripts/setup.sh")
    return binary


@contextlib.contextmanager
def bigquery_emulator(project: str = BIGQUERY_PROJECT, gcs_data_dir: str = None):
    """A real ``bqemulator`` (DuckDB-backed BigQuery REST API) on a free 127.0.0.1 port.

    Sets ``BIGQUERY_EMULATOR_HOST`` and ``GOOGLE_CLOUD_PROJECT`` while it runs; yields the REST
    endpoint ``http://127.0.0.1:PORT``. With ``gcs_data_dir`` (a :func:`gcs_emulator`'s
    ``bucket.data_dir``), load jobs read ``gs://`` files from that GCS emulator (FILE_LOADS).
    """
    rest_port, grpc_port = free_port(), free_port()
    endpoint = f"http://127.0.0.1:{rest_port}"
    argv = [_emulator_binary("bqemulator", "bqemulator"), "start", "--rest-host", "127.0.0.1",
            "--rest-port", str(rest_port), "--grpc-host", "127.0.0.1", "--grpc-port", str(grpc_port),
            "--project", project, "--log-level", "warning"]
    # DuckDB finds its extensions under $HOME (scripts/setup.sh installed them there).
    home = {"HOME": os.path.join(activebeam_home(), "duckdb-home")}
    if gcs_data_dir:
        home["BQEMU_GCS_LOCAL_ROOT"] = os.path.join(gcs_data_dir, ".cloudstorage")
    with _emulator("bqemulator", argv, endpoint + "/healthz",
                   {"BIGQUERY_EMULATOR_HOST": endpoint, "GOOGLE_CLOUD_PROJECT": project}, home):
        yield endpoint


@contextlib.contextmanager
def gcs_emulator(bucket: str = "activebeam-test"):
    """A real ``gcp-storage-emulator`` on a free 127.0.0.1 port, with ``bucket`` created
    (:func:`beam_pipelines.local.emulators.gcs_emulator`).

    Sets ``STORAGE_EMULATOR_HOST`` while it runs; yields a ``google.cloud.storage.Bucket`` whose
    ``data_dir`` attribute is the emulator's data directory.
    """
    data_dir = tmpdir("gcs-data-")
    with emulators.gcs_emulator(bucket, data_dir, project="activebeam-test",
                                log_dir=tmpdir("gcs-emulator-")) as handle:
        handle.data_dir = data_dir
        yield handle


def bigquery_client(endpoint: str, project: str = BIGQUERY_PROJECT):
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery
    return bigquery.Client(project=project, credentials=AnonymousCredentials(),
                           client_options=ClientOptions(api_endpoint=endpoint))


def scrape_metrics(port: int) -> dict:
    """``{(sample name, sorted label pairs): value}`` of ``http://127.0.0.1:PORT/metrics``, read with
    the Prometheus client library's own parser of its text format (``{}`` while nothing answers)."""
    import urllib.request
    from prometheus_client.parser import text_string_to_metric_families
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode("utf-8")
    except OSError:
        return {}
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header declaring ``width`` x ``height`` RGB pixels followed by 64 bytes of
    pixel data: a decompression-bomb look-alike for decoding tests."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def local_options(**extra) -> PipelineOptions:
    """Pipeline options for the in-process FnApiRunner (no Prism download)."""
    return PipelineOptions(runner="FnApiRunner", **extra)


def _dump(elements, path):
    with open(path, "wb") as f:
        pickle.dump(list(elements), f)


def run_collect(build, options: PipelineOptions = None) -> dict:
    """Builds a pipeline with ``build(pipeline) -> {name: PCollection}``, runs it, returns elements.

    Returns ``{name: [elements]}`` (order is not meaningful).
    """
    out_dir = tmpdir("collect-")
    with beam.Pipeline(options=options or local_options()) as pipeline:
        outputs = build(pipeline)
        for name, pcoll in outputs.items():
            _ = (pcoll | f"Gather_{name}" >> beam.combiners.ToList()
                 | f"Dump_{name}" >> beam.Map(_dump, os.path.join(out_dir, name)))
    result = {}
    for name in outputs:
        with open(os.path.join(out_dir, name), "rb") as f:
            result[name] = pickle.load(f)
    shutil.rmtree(out_dir, ignore_errors=True)
    return result


def main(test_file: str):
    """Entry point of every test file, so that ``bazel test`` runs it with pytest."""
    import pytest
    args = [test_file, "-q", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning"]
    xml = os.environ.get("XML_OUTPUT_FILE")
    if xml:
        args.append(f"--junitxml={xml}")
    sys.exit(pytest.main(args + sys.argv[1:]))
