"""The job against what users get wrong on day one (issue 16; docs/failures.md is the table).

Bad options: one line ``mine: error: ...``, exit code 2, before a model loads or a server starts
(and, from the command line, before TensorFlow is imported). Stores: checked before the pipeline
starts, within ``--store_check_timeout_s``, exit code 3, no name resolution for what is not a
URI. Files: no single file stops or hangs the run, each is accounted for. Signals: a clean stop,
the run recorded as cancelled. A crashed earlier run's mongod lock or orphan: recovered with a
message. Secrets in query strings redacted; the code version read without writing to the checkout.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile

import apache_beam as beam
import pymongo
import pytest

from beam_pipelines import mine
from beam_pipelines.cli import preflight, shutdown
from beam_pipelines.local import mongod as local_mongo
from beam_pipelines.local import processes
from beam_pipelines.mine import batch as mine_batch, command as mine_command, job as mine_job, options
from beam_pipelines.local.mongod import LocalMongoD
from beam_pipelines.cli.run_record import describe_run
from schemas import runs
from tests import harness
from tests.records_factory import frame_record
from transforms.common import files
from transforms.common.redact import redact_text, redact_uri
from transforms.decode import ptransforms as decode_ptransforms
from transforms.decode.ptransforms import DecodeMedia
from transforms.select.ptransforms import SelectCandidates

CHECKOUT = harness.CHECKOUT
DATABASE = "hardening_test"


@pytest.fixture(scope="module")
def mongo():
    """One real mongod for the tests of this file."""
    with harness.mongod() as server:
        yield server


@pytest.fixture
def nothing_starts(monkeypatch):
    """Records every model load, mongod start and sample-media preparation of ``mine``."""
    started = []
    monkeypatch.setattr(mine_job, "load_model_spec", lambda *args: started.append("model"))
    monkeypatch.setattr(mine_job, "LocalMongoD", lambda *args: started.append("mongod"))
    monkeypatch.setattr(mine_batch.sample_media, "prepare", lambda: started.append("sample media"))
    return started


def _main(argv, capsys):
    """``mine.main(argv)`` in-process: (exit code, stderr lines, seconds)."""
    started = time.monotonic()
    with pytest.raises(SystemExit) as exited:
        mine.main(argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return exited.value.code, lines, time.monotonic() - started


def _closed_port() -> int:
    return harness.free_port()  # nothing listens there once the probe socket is closed


# --- options: one line, exit 2, before anything starts -----------------------------------------

def _file(path, content=b""):
    with open(path, "wb") as f:
        f.write(content)
    return path


@pytest.fixture(scope="module")
def odd_paths():
    d = harness.tmpdir("odd-paths-")
    keras_dir = os.path.join(d, "models")
    os.makedirs(keras_dir)
    return {
        "dir": d,
        "file": _file(os.path.join(d, "a-file"), b"x\n"),
        "text_keras": _file(os.path.join(d, "notes.keras"), b"not a model, just text\n"),
        "pt": _file(os.path.join(d, "model.pt"), b"\x80\x02}q\x00."),
        "empty_dir": keras_dir,
        "not_npy": _file(os.path.join(d, "background.npy"), b"P6\n1 1\n255\n\x00\x00\x00"),
    }


def _fill(text, paths):
    for key, path in paths.items():
        text = text.replace("{" + key + "}", path)
    return text


BAD_OPTIONS = [
    # (argv, what the one line must say)
    (["--budget=-5"], "--budget must be >= 0, got -5"),
    (["--budget=abc"], "argument --budget: invalid int value: 'abc'"),
    (["--budgte=500"], "unrecognized arguments: --budgte=500"),
    (["--input="], "--input must name at least one file, directory or glob, got ''"),
    (["--input= , "], "--input must name at least one file"),
    (["--input={dir}/no-such-camera.mp4"], "no-such-camera.mp4': no such file or directory"),
    (["--input"], "argument --input: expected one argument"),
    (["--strategy_params=not json"], "--strategy_params must be a JSON object, got 'not json'"),
    (["--strategy=entropy", '--strategy_params={"n_clusters": 20}'],
     "--strategy_params: bad parameters for strategy 'entropy': got an unexpected keyword argument "
     "'n_clusters'; it takes no parameters"),
    (["--strategy=cluster_margin", '--strategy_params={"n_clusters": -3}'], "n_clusters must be >= 1, got -3"),
    (["--strategy=coreset", '--strategy_params={"balance_key": "site"}'],
     "balance_key must be one of source, camera, predicted_class, detected_class, got 'site'"),
    (["--strategy=combined", '--strategy_params={"strengths": {"beauty": 1}}'],
     "--strategy_params strengths names an unknown score 'beauty'"),
    (["--strategy=combined", '--strategy_params={"strengths": {"bald": 1}}'], "needs MC-dropout samples"),
    (["--strategy=combined", '--strategy_params={"strengths": 5}'], "strengths and thresholds must map"),
    (["--strategy=most_beautiful"], "argument --strategy: invalid choice: 'most_beautiful'"),
    (["--model={dir}/missing.keras"], "--model '{dir}/missing.keras': no such file or directory"),
    (["--model={text_keras}"], "is not a model the job can load: a .keras file is a zip archive, "
                               "this one starts with b'not a mo'"),
    (["--model={pt}"], "--model must be a .keras or .h5 Keras file, a .tflite or .onnx file, or a "
                       "SavedModel directory"),
    (["--model={empty_dir}"], "is a directory without saved_model.pb"),
    (["--bigquery_table=bad name"], "--bigquery_table must be PROJECT:DATASET.TABLE"),
    (["--bigquery_table=p:d.t", "--bigquery_write_method=FILE_LOADS"],
     "--bigquery_write_method=FILE_LOADS needs --temp_location on gs://"),
    (["--output_dir={file}"], "--output_dir '{file}' is not a directory"),
    (["--output_dir={file}/out"], "is inside '{file}', which is not a directory"),
    (["--video_fps=-1"], "--video_fps must be a number >= 0 (0: every frame), got -1.0"),
    (["--video_fps=inf"], "--video_fps must be a number >= 0"),
    (["--video_every_n=-2"], "--video_every_n must be >= 1, got -2"),
    (["--mc_passes=1"], "--mc_passes must be 0 (off) or >= 2"),
    (["--uniqueness_k=-1"], "--uniqueness_k must be >= 0"),
    (["--max_image_pixels=-1"], "--max_image_pixels must be >= 0"),
    (["--resize_longest_side=-640"], "--resize_longest_side must be >= 0"),
    (["--video_split_seconds=-60"], "--video_split_seconds must be >= 0"),
    (["--store_check_timeout_s=-1"], "--store_check_timeout_s must be >= 0"),
    (["--direct_num_workers=-1"], "--direct_num_workers must be >= 0"),
    (["--runner=FastRunner"], "--runner must be one of DataflowRunner"),
    (["--mongo_uri=garbage"], "--mongo_uri must be a MongoDB connection string"),
    (["--mongo_uri=mongodb://db.example:99999"], "Port must be an integer between 0 and 65535"),
    (["--mongo_uri=mongodb+srv://cluster.example:27017/"], "must not include a port number"),
    (["--mongo_database=my.db"], "--mongo_database must be 1 to 63 characters"),
    (["--detector_background={not_npy}"], "must be a NumPy .npy file"),
]


@pytest.mark.parametrize("argv, message", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_bad_option_is_one_line_and_exit_2_before_anything_starts(argv, message, odd_paths, nothing_starts,
                                                                  capsys):
    argv = [_fill(a, odd_paths) for a in argv]
    if not any(a.startswith("--output_dir") for a in argv):
        argv.append(f"--output_dir={odd_paths['dir']}/out")
    code, lines, seconds = _main(argv, capsys)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("mine: error: "), lines
    assert _fill(message, odd_paths) in lines[0]
    assert nothing_starts == [] and seconds < 2.0
    assert not os.path.exists(f"{odd_paths['dir']}/out")  # nothing written either


def test_mongo_uri_that_is_not_a_uri_is_never_resolved(monkeypatch, nothing_starts, capsys):
    looked_up = []

    def no_dns(host, *args, **kwargs):
        looked_up.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "name resolution is not allowed in this test")
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    code, lines, _ = _main(["--mongo_uri=garbage", f"--output_dir={harness.tmpdir()}"], capsys)
    assert code == 2 and "--mongo_uri must be a MongoDB connection string" in lines[-1]
    assert looked_up == [] and nothing_starts == []


def test_secrets_in_a_bad_uri_are_redacted_in_the_error(nothing_starts, capsys):
    uri = "mongodb://reader:s3cret@db.example:99999/?tls=true&tlsCertificateKeyFilePassword=k3y"
    code, lines, _ = _main([f"--mongo_uri={uri}", f"--output_dir={harness.tmpdir()}"], capsys)
    assert code == 2 and "reader:***@db.example" in lines[-1]
    assert "s3cret" not in lines[-1] and "k3y" not in lines[-1]


def test_command_line_errors_come_before_tensorflow_is_imported(odd_paths):
    """``python -m beam_pipelines.mine`` with a bad option, where importing TensorFlow fails."""
    fake = os.path.join(harness.tmpdir("no-tensorflow-"), "tensorflow")
    os.makedirs(fake)
    marker = os.path.join(os.path.dirname(fake), "tensorflow-was-imported")
    _file(os.path.join(fake, "__init__.py"), b"import os\nopen(os.environ['TF_MARKER'], 'w').close()\n"
                                             b"raise ImportError('TensorFlow imported before the options were checked')\n")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(fake), NO_GCE_CHECK="true", TF_MARKER=marker)
    for argv, code, expected in (
            (["--budget", "-5"], 2, "mine: error: --budget must be >= 0, got -5"),
            (["--input", ""], 2, "mine: error: --input must name at least one file"),
            (["--help"], 0, "--store_check_timeout_s")):
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "beam_pipelines.mine"] + argv, cwd=CHECKOUT,
                                env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == code, result.stderr[-2000:]
        if code:
            assert result.stderr.strip().splitlines()[-1].startswith(expected)
            assert "Traceback" not in result.stderr
        else:
            assert expected in result.stdout and "docs/failures.md" in result.stdout
        assert time.monotonic() - started < 30 and not os.path.exists(marker)


def test_read_only_output_dir_is_refused(odd_paths):
    read_only = os.path.join(harness.tmpdir("read-only-"), "ro")
    os.makedirs(read_only)
    argv = [sys.executable, "-m", "beam_pipelines.mine", f"--output_dir={read_only}/out"]
    if os.geteuid() != 0:
        os.chmod(read_only, 0o555)
        command = argv
    else:  # root writes through permissions: a read-only mount in a private mount namespace
        if not shutil.which("unshare") or subprocess.run(
                ["unshare", "-m", "true"], capture_output=True).returncode != 0:
            pytest.skip("running as root without mount namespaces: no read-only directory to test")
        command = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs -o ro,size=1m tmpfs "$0" && exec "$@"',
                   read_only] + argv
    result = subprocess.run(command, cwd=CHECKOUT, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, NO_GCE_CHECK="true"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"mine: error: --output_dir '{read_only}/out' is not writable (it would be created in "
        f"'{read_only}'): it must be a directory this user can write")


def test_model_that_passes_the_checks_but_does_not_load_is_one_line(mongo, capsys):
    bad = os.path.join(harness.tmpdir("bad-model-"), "broken.keras")
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("config.json", "{}")
        archive.writestr("metadata.json", "{}")
    code, lines, _ = _main([f"--model={bad}", f"--input={harness.media('china.jpg')}",
                            f"--mongo_uri={mongo.uri}", f"--output_dir={harness.tmpdir()}"], capsys)
    assert code == 2 and [line for line in lines if line.startswith("mine:")] == lines[-1:]
    assert lines[-1].startswith(f"mine: error: --model {bad} cannot be used: ")


def test_large_budgets_work():
    """``--budget`` of 50,000 or more used to fail on the internal shard size of 50,000."""
    stage = SelectCandidates(120_000, "entropy")
    assert stage._shard_size == 240_000  # adapts: 2 * budget
    with pytest.raises(ValueError, match="shard_size must be > budget"):
        SelectCandidates(120_000, "entropy", shard_size=1000)  # an explicit one is still checked
    records = [frame_record(f"file:///cam/{i}.png", probabilities=(0.5 + i / 100, 0.5 - i / 100))
               for i in range(5)]
    out = harness.run_collect(lambda p: {"c": p | beam.Create(records) | SelectCandidates(60_000)})
    assert sorted(c.rank for c in out["c"]) == [1, 2, 3, 4, 5]
    options_, job = preflight.check_job(["--budget=100000", f"--output_dir={harness.tmpdir()}"],
                                        options.MineOptions, options.check_options)
    assert options_.view_as(options.MineOptions).budget == 100_000


# --- stores: checked before the pipeline starts, bounded, exit 3 ---------------------------------

@pytest.fixture
def model_not_loaded(monkeypatch):
    loaded = []
    monkeypatch.setattr(mine_job, "load_model_spec", lambda *args: loaded.append("model"))
    return loaded


def test_unreachable_mongodb_fails_within_the_timeout(model_not_loaded, capsys):
    port = _closed_port()
    code, lines, seconds = _main([f"--mongo_uri=mongodb://user:pw@127.0.0.1:{port}/",
                                  "--store_check_timeout_s=2", f"--input={harness.media('china.jpg')}",
                                  f"--output_dir={harness.tmpdir()}"], capsys)
    assert code == 3 and len(lines) == 1, lines
    assert lines[0].startswith(f"mine: error: --mongo_uri mongodb://user:***@127.0.0.1:{port}/: "
                               f"no MongoDB server answered within 2 s (")
    assert "Connection refused" in lines[0] and ":pw@" not in lines[0]
    assert seconds < 8 and model_not_loaded == []


def test_mongodb_refusing_the_credentials_fails_at_once(mongo, model_not_loaded, capsys):
    uri = f"mongodb://intruder:wrong@127.0.0.1:{mongo.port}/?retryWrites=false"
    code, lines, seconds = _main([f"--mongo_uri={uri}", f"--input={harness.media('china.jpg')}",
                                  f"--output_dir={harness.tmpdir()}"], capsys)
    assert code == 3 and len(lines) == 1
    assert "MongoDB refused the connection: Authentication failed" in lines[0]
    assert "wrong" not in lines[0] and seconds < 8 and model_not_loaded == []


def test_unreachable_bigquery_fails_within_the_timeout(mongo, model_not_loaded, capsys):
    with harness.environment(BIGQUERY_EMULATOR_HOST=f"http://127.0.0.1:{_closed_port()}",
                             GOOGLE_CLOUD_PROJECT=harness.BIGQUERY_PROJECT):
        code, lines, seconds = _main([f"--mongo_uri={mongo.uri}", "--store_check_timeout_s=3",
                                      f"--bigquery_table={harness.BIGQUERY_PROJECT}:cams.frames",
                                      f"--input={harness.media('china.jpg')}",
                                      f"--output_dir={harness.tmpdir()}"], capsys)
    assert code == 3 and len(lines) == 1, lines
    assert lines[0].startswith(f"mine: error: BigQuery table {harness.BIGQUERY_PROJECT}:cams.frames: "
                               f"BigQuery did not answer within 3 s")
    assert seconds < 12 and model_not_loaded == []


def test_missing_bigquery_dataset_is_named(mongo, model_not_loaded, capsys):
    with harness.bigquery_emulator():
        code, lines, _ = _main([f"--mongo_uri={mongo.uri}", f"--bigquery_table={harness.BIGQUERY_PROJECT}:nowhere.frames",
                                f"--input={harness.media('china.jpg')}", f"--output_dir={harness.tmpdir()}"],
                               capsys)
    assert code == 3 and lines == [
        f"mine: error: BigQuery table {harness.BIGQUERY_PROJECT}:nowhere.frames: dataset "
        f"{harness.BIGQUERY_PROJECT}:nowhere does not exist (the job creates tables, not datasets: "
        f"bq mk --dataset {harness.BIGQUERY_PROJECT}:nowhere)"]
    assert model_not_loaded == []


# --- files: none can stop or hang the run ---------------------------------------------------------

@pytest.fixture(scope="module")
def odd_files():
    """One good photo and PNG among everything a glob can match that is not a readable file."""
    d = harness.tmpdir("odd-files-")
    shutil.copy(harness.media("china.jpg"), os.path.join(d, "good.jpg"))
    shutil.copy(harness.media("fashion-mnist", "t10k-00001.png"), os.path.join(d, "good2.jpg"))
    shutil.copy(harness.media("china.jpg"), os.fsdecode(os.path.join(os.fsencode(d), b"caf\xe9-latin1.jpg")))
    os.mkfifo(os.path.join(d, "fifo.jpg"))
    server = socket.socket(socket.AF_UNIX)
    here = os.getcwd()
    os.chdir(d)  # a relative address: Bazel's temporary paths are longer than AF_UNIX allows
    try:
        server.bind("socket.jpg")
    finally:
        os.chdir(here)
    os.symlink("/dev/zero", os.path.join(d, "device.jpg"))
    os.symlink(os.path.join(d, "deleted-long-ago.jpg"), os.path.join(d, "dangling.jpg"))
    os.makedirs(os.path.join(d, "folder.jpg"))
    os.symlink(harness.OPENCV_DATA, os.path.join(d, "linked-folder.jpg"))
    shutil.copy(harness.media("china.jpg"), os.path.join(d, "deleted-after-match.jpg"))
    yield d
    server.close()


#: What each odd file gets: (stage, words of the error); the files that are failed files also get
#: a failed FileOutcome (the others are not files: directories).
EXPECTED_DEAD_LETTERS = {
    "caf\\xe9-latin1.jpg": ("match", "the file name is not valid UTF-8"),
    "fifo.jpg": ("read", "not a regular file but a FIFO (named pipe)"),
    "socket.jpg": ("read", "not a regular file but a socket"),
    "device.jpg": ("read", "not a regular file but a character device"),
    "dangling.jpg": ("read", "a dangling symbolic link: its target"),
    "deleted-after-match.jpg": ("read", "the file disappeared after it was matched"),
    "folder.jpg": ("match", "a directory matched by the glob"),
    "linked-folder.jpg": ("match", "a symbolic link to a directory: never followed"),
}
FAILED_FILES = {"caf\\xe9-latin1.jpg", "fifo.jpg", "socket.jpg", "device.jpg", "dangling.jpg",
                "deleted-after-match.jpg"}


@pytest.fixture
def deleted_after_match(monkeypatch, odd_files):
    """The pipeline's matching works, then ``deleted-after-match.jpg`` goes before anything reads
    it (a count of the files before the run, for the progress lines, still sees it)."""
    real = decode_ptransforms.MatchFn.process
    victim = os.path.join(odd_files, "deleted-after-match.jpg")

    def match_then_delete(self, pattern):
        outputs = list(real(self, pattern))
        if os.path.exists(victim):
            os.remove(victim)
        yield from outputs
    monkeypatch.setattr(decode_ptransforms.MatchFn, "process", match_then_delete)
    yield
    shutil.copy(harness.media("china.jpg"), victim)


def test_no_file_stops_or_hangs_decoding_and_each_is_accounted(odd_files, deleted_after_match):
    result = {}

    def decode():
        def build(p):
            decoded = p | beam.Create([os.path.join(odd_files, "*.jpg")]) | DecodeMedia()
            return {"frames": decoded.frames | beam.Map(lambda f: os.path.basename(f.source_uri)),
                    "outcomes": decoded.outcomes, "dead": decoded.dead_letters}
        result.update(harness.run_collect(build))
    worker = threading.Thread(target=decode, daemon=True)
    worker.start()
    worker.join(timeout=180)
    assert not worker.is_alive(), "decoding hung (a FIFO or a device read forever?)"
    assert sorted(result["frames"]) == ["good.jpg", "good2.jpg"]  # the rest of the run unaffected
    dead = {os.path.basename(d.source_uri): d for d in result["dead"]}
    assert set(dead) == set(EXPECTED_DEAD_LETTERS)
    for name, (stage, words) in EXPECTED_DEAD_LETTERS.items():
        assert dead[name].stage == stage and words in dead[name].error, (name, dead[name])
    outcomes = {os.path.basename(o.source_uri): o for o in result["outcomes"]}
    assert set(outcomes) == FAILED_FILES | {"good.jpg", "good2.jpg"}  # one per matched file
    assert {name for name, o in outcomes.items() if o.failed} == FAILED_FILES


def test_match_local_reports_what_beam_drops(odd_files, monkeypatch):
    entries = {os.path.basename(e.path): e.kind for e in files.match_local(os.path.join(odd_files, "*.jpg"))}
    assert entries["folder.jpg"] == files.DIRECTORY and entries["linked-folder.jpg"] == files.DIRECTORY_LINK
    assert entries["dangling.jpg"] == entries["fifo.jpg"] == entries["good.jpg"] == files.FILE
    below = {e.kind for e in files.match_local(os.path.join(odd_files, "**"))}
    assert files.DIRECTORY not in below  # with ** directories are walked, not reported
    monkeypatch.chdir(odd_files)  # relative globs match relative paths, as Beam's do
    assert sorted(e.path for e in files.match_local("good*.jpg")) == ["good.jpg", "good2.jpg"]


def test_odd_files_in_a_whole_run(odd_files, mongo, deleted_after_match):
    """The job on the same folder: the two good images indexed and selectable, every odd entry
    in dead_letter.jsonl with its reason, the counts reconciled."""
    out_dir = harness.tmpdir("odd-run-")
    summary = mine.run(["--max_dead_letter_fraction=1", f"--input={odd_files}/*.jpg", f"--output_dir={out_dir}",
                        f"--mongo_uri={mongo.uri}", f"--mongo_database={DATABASE}", "--budget=5"])
    assert summary["files_matched"] == len(FAILED_FILES) + 2
    assert (summary["files_failed"], summary["files_decoded"]) == (len(FAILED_FILES), 2)
    assert summary["frames_written"] == 2 and summary["candidates"] == 2
    assert summary["dead_letters"] == len(EXPECTED_DEAD_LETTERS)
    with open(os.path.join(out_dir, "dead_letter.jsonl"), encoding="utf-8") as f:
        dead = {os.path.basename(d["source_uri"]): d for d in map(json.loads, f)}
    assert {name: d["stage"] for name, d in dead.items()} == {n: s for n, (s, _) in EXPECTED_DEAD_LETTERS.items()}
    assert not [n for n in os.listdir(out_dir) if n.startswith("beam-temp-")]


# --- signals and crashed runs ------------------------------------------------------------------

def _alive(pid: int) -> bool:
    return processes.process_start(pid) is not None


def _wait_for(predicate, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


class _RecordWorker(beam.DoFn):
    """Writes ``<dir>/<element>`` = the pid and command line of the process that processed it, and
    ``<dir>/teardown-<pid>`` when the DoFn is torn down."""

    def __init__(self, directory, fail_on=None):
        self._dir, self._fail_on = directory, fail_on

    def process(self, element):
        if element == self._fail_on:
            raise ValueError(f"bad element {element}")
        with open("/proc/self/cmdline", "rb") as f:
            command = f.read().replace(b"\0", b" ").decode()
        with open(os.path.join(self._dir, str(element)), "w") as f:
            json.dump({"pid": os.getpid(), "command": command}, f)
        yield element

    def teardown(self):
        open(os.path.join(self._dir, f"teardown-{os.getpid()}"), "w").close()


def _local_processes_pipeline(directory, fail_on=None):
    from apache_beam.options.pipeline_options import PipelineOptions
    from beam_pipelines.local.worker import LocalProcessesRunner
    options = PipelineOptions(["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    pipeline = beam.Pipeline(runner=LocalProcessesRunner(), options=options)
    _ = pipeline | beam.Create(range(40)) | beam.Reshuffle() | beam.ParDo(_RecordWorker(directory, fail_on))
    return pipeline


def test_local_worker_processes_run_beams_harness_and_exit_after_teardown():
    """A multi-process run on LocalProcessesRunner: every element processed in a
    beam_pipelines.local.worker process, every worker's DoFns torn down before it exits, no worker
    left; a DoFn's error still fails the run with its message."""
    from beam_pipelines.local import worker as local_worker
    assert (local_worker.worker_command("/usr/bin/python3 -m apache_beam.runners.worker.sdk_worker_main")
            == "/usr/bin/python3 -m beam_pipelines.local.worker")
    assert local_worker.worker_command("/opt/boot --flag") == "/opt/boot --flag"
    directory = harness.tmpdir("local-workers-")
    _local_processes_pipeline(directory).run().wait_until_finish()
    records = {name: json.load(open(os.path.join(directory, name)))
               for name in os.listdir(directory) if not name.startswith("teardown-")}
    assert sorted(records, key=int) == [str(i) for i in range(40)]
    assert all("-m beam_pipelines.local.worker" in r["command"] for r in records.values())
    pids = {r["pid"] for r in records.values()}
    assert os.getpid() not in pids
    assert {f"teardown-{pid}" for pid in pids} <= set(os.listdir(directory))
    assert not shutdown.beam_worker_pids()

    failing = harness.tmpdir("local-workers-failing-")
    with pytest.raises(Exception, match="bad element 7"):
        _local_processes_pipeline(failing, fail_on=7).run().wait_until_finish()
    assert not shutdown.beam_worker_pids()


def test_beam_start_up_noise_is_dropped_also_when_relayed_by_worker_processes():
    import logging
    quiet = mine.QuietBeamNoise()

    def shown(message, name="root"):
        return quiet.filter(logging.LogRecord(name, logging.WARNING, __file__, 1, message, None, None))
    relay = "apache_beam.runners.portability.local_job_service"
    assert not shown("Resource module is not available for current platform, memory usage cannot be fetched.")
    assert not shown('Worker: severity: WARN timestamp {   seconds: 1796034140   nanos: 993186473 } '
                     'message: "No semi_persistent_directory found: Unable to save pipeline options"', relay)
    assert not shown('Worker: severity: WARN timestamp { seconds: 1 } message: "Resource module is not available"', relay)
    assert shown('Worker: severity: ERROR timestamp { seconds: 1 } message: "Error processing instruction 7"', relay)
    assert shown("mongod exited with code 100")


@pytest.mark.parametrize("signum, extra", [
    (signal.SIGTERM, []), (signal.SIGINT, []),
    (signal.SIGTERM, ["--direct_running_mode=multi_processing", "--direct_num_workers=2"])],
    ids=["SIGTERM", "SIGINT", "SIGTERM-2-worker-processes"])
def test_signal_stops_the_job_cleanly(signum, extra):
    out_dir = harness.tmpdir("signalled-")
    log = open(os.path.join(harness.tmpdir("signalled-log-"), "stderr"), "w+")  # not a pipe: never full
    job = subprocess.Popen(
        [sys.executable, "-m", "beam_pipelines.mine", f"--input={harness.media('vtest.avi')}",
         "--video_fps=0", f"--output_dir={out_dir}", "--budget=5"] + extra,
        cwd=CHECKOUT, stdout=subprocess.DEVNULL, stderr=log, env=dict(os.environ, NO_GCE_CHECK="true"))
    try:
        owner_file = os.path.join(out_dir, "mongo-data", local_mongo.OWNER_FILE)
        _wait_for(lambda: os.path.exists(owner_file) and os.path.getsize(owner_file), 120, "the embedded mongod")
        with open(owner_file) as f:
            owner = json.load(f)
        runs_collection = pymongo.MongoClient(f"mongodb://127.0.0.1:{owner['port']}/?retryWrites=false",
                                              serverSelectionTimeoutMS=30000)["activebeam"]["runs"]
        _wait_for(lambda: runs_collection.count_documents({"status": "running"}), 120, "the run to start")
        _wait_for(lambda: [n for n in os.listdir(out_dir) if n.startswith("beam-temp-")], 60,
                  "the pipeline to write")
        job.send_signal(signum)
        job.wait(timeout=90)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
        log.seek(0)
        stderr = log.read()
        log.close()
    assert job.returncode == 128 + signum, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == (
        f"mine: cancelled by {signal.Signals(signum).name}: the run is recorded as cancelled; "
        f"its outputs are incomplete")
    if not extra:  # (worker processes print their own lost connections)
        assert "Traceback" not in stderr
    # Beam's start-up warnings, also those that worker processes relay, are not shown.
    assert "No semi_persistent_directory" not in stderr and "Resource module is not available" not in stderr
    assert not _alive(owner["mongod_pid"]), "the embedded mongod outlived the job"
    assert not [n for n in os.listdir(out_dir) if n.startswith("beam-temp-")]
    with LocalMongoD(os.path.join(out_dir, "mongo-data")) as server:  # restarts: nothing stale
        [run] = pymongo.MongoClient(server.uri)["activebeam"]["runs"].find()
    assert run["status"] == "cancelled" and run["finished_at"] is not None


_CHILD = """
import os, sys
sys.path.insert(0, {checkout!r})
from beam_pipelines.local import mongod as local_mongo
if sys.argv[2] == "old":  # a mongod that survives its owner, as before parent-death signals
    local_mongo.parent_death_signal = lambda: None
server = local_mongo.LocalMongoD(sys.argv[1]).start()
print(server.pid, flush=True)
os.kill(os.getpid(), 9)  # the job crashes
"""


def _crashed_owner(dbpath: str, kind: str) -> int:
    """Runs a process that starts a mongod on ``dbpath`` and dies by SIGKILL; the mongod's PID."""
    child = subprocess.run([sys.executable, "-c", _CHILD.format(checkout=CHECKOUT), dbpath, kind],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == -9, child.stderr
    return int(child.stdout.split()[0])


def test_killed_job_takes_its_mongod_along():
    dbpath = os.path.join(harness.tmpdir("killed-job-"), "db")
    mongod_pid = _crashed_owner(dbpath, "new")
    _wait_for(lambda: not _alive(mongod_pid), 30, "the mongod of a SIGKILLed job to stop")


def test_orphaned_mongod_of_a_crashed_run_is_stopped_with_a_message(caplog):
    dbpath = os.path.join(harness.tmpdir("orphan-"), "db")
    orphan = _crashed_owner(dbpath, "old")
    assert _alive(orphan)
    with LocalMongoD(dbpath) as server:
        pymongo.MongoClient(server.uri).admin.command("ping")
    assert not _alive(orphan)
    assert f"stopping the mongod (PID {orphan}) left running by an earlier run" in caplog.text


def test_stale_lock_of_a_crashed_mongod_is_recovered_with_a_message(caplog):
    dbpath = os.path.join(harness.tmpdir("stale-lock-"), "db")
    with LocalMongoD(dbpath) as server:
        pymongo.MongoClient(server.uri, journal=True)["db"]["c"].insert_one({"_id": 1})  # on disk
        crashed = server.pid
        harness.kill_mongod(server)  # SIGKILL: mongod.lock keeps its PID
        with open(os.path.join(dbpath, "mongod.lock")) as f:
            assert f.read().strip() == str(crashed)
        server.start()
        assert pymongo.MongoClient(server.uri)["db"]["c"].count_documents({}) == 1
        assert not os.path.exists(f"/tmp/mongodb-{server.port}.sock")  # TCP only: no socket to go stale
    assert f"the mongod (PID {crashed}) of an earlier run did not shut down cleanly" in caplog.text


def test_a_mongod_killed_during_start_up_is_started_once_more(monkeypatch, caplog):
    # The first start aborts (SIGABRT, its reason on stderr); the second runs the real server.
    folder = harness.tmpdir("abort-once-")
    wrapper = os.path.join(folder, "mongod")
    with open(wrapper, "w") as f:
        f.write(f"""#!/bin/sh
if [ ! -e {folder}/aborted ]; then touch {folder}/aborted; echo "cannot create thread" >&2; kill -ABRT $$; fi
exec {local_mongo.find_mongod()} "$@"
""")
    os.chmod(wrapper, 0o755)
    monkeypatch.setenv("ACTIVEBEAM_MONGOD", wrapper)
    with LocalMongoD(os.path.join(folder, "db")) as server:
        assert pymongo.MongoClient(server.uri).admin.command("ping")["ok"] == 1
    assert "mongod exited with code -6 (cannot create thread)" in caplog.text
    assert "starting it once more" in caplog.text


def test_a_mongod_that_keeps_dying_at_start_up_is_a_clear_error(monkeypatch):
    wrapper = os.path.join(harness.tmpdir("abort-always-"), "mongod")
    with open(wrapper, "w") as f:
        f.write("#!/bin/sh\necho 'cannot create thread' >&2\nkill -ABRT $$\n")
    os.chmod(wrapper, 0o755)
    monkeypatch.setenv("ACTIVEBEAM_MONGOD", wrapper)
    with pytest.raises(local_mongo.MongoDStartError, match=r"code -6 \(cannot create thread\)"):
        LocalMongoD(os.path.join(os.path.dirname(wrapper), "db")).start()


def test_data_directory_in_use_by_a_live_run_is_one_line(nothing_starts, monkeypatch, capsys):
    out_dir = harness.tmpdir("in-use-")
    monkeypatch.setattr(mine_job, "LocalMongoD", LocalMongoD)  # the real one, this time
    with LocalMongoD(os.path.join(out_dir, "mongo-data")) as busy:
        code, lines, _ = _main([f"--input={harness.media('china.jpg')}", f"--output_dir={out_dir}"], capsys)
        assert busy._process.poll() is None  # untouched
        busy_pid = busy.pid
    assert code == 3 and len(lines) == 1
    assert lines[0] == (f"mine: error: {out_dir}/mongo-data is in use by the mongod (PID {busy_pid}, "
                        f"port {busy.port}) of another running job (PID {os.getpid()}): wait for it "
                        f"to end, or use another --output_dir")


@pytest.mark.parametrize("written, candidates_written, message", [
    (3, 2, "2 of 5 scored frames"),
    (5, 0, "2 of 2 candidates"),  # MongoDB died after the frames were indexed
    (4, 1, "1 of 5 scored frames and 1 of 2 candidates"),
])
def test_frames_or_candidates_left_unindexed_make_exit_code_1(monkeypatch, capsys, written, candidates_written,
                                                               message):
    out_dir = harness.tmpdir()
    summary = {"output_dir": out_dir, "files_matched": 2, "files_decoded": 2, "files_failed": 0,
               "frames_decoded": 5, "frames_scored": 5, "frames_written": written, "dead_letters": 2,
               "candidates": 2, "candidates_written": candidates_written, "wall_seconds": 1.0,
               "mongo_embedded": False}
    monkeypatch.setattr(mine_command, "run", lambda argv: summary)
    code, lines, _ = _main([], capsys)
    assert code == 1 and lines == [f"mine: error: {message} were not indexed in MongoDB (dead letters at stage "
                                   f"'mongodb' in {out_dir}/dead_letter.jsonl; a rerun writes them)"]


def test_a_run_that_indexed_everything_exits_0(monkeypatch, capsys):
    summary = {"output_dir": harness.tmpdir(), "files_matched": 1, "files_decoded": 1, "files_failed": 0,
               "frames_decoded": 5, "frames_scored": 5, "frames_written": 5, "dead_letters": 0,
               "candidates": 2, "candidates_written": 2, "wall_seconds": 1.0, "mongo_embedded": False}
    monkeypatch.setattr(mine_command, "run", lambda argv: summary)
    mine.main([])  # no SystemExit: exit code 0
    assert [line for line in capsys.readouterr().err.splitlines() if line.strip()] == []


# --- secrets and the checkout ----------------------------------------------------------------

@pytest.mark.parametrize("uri, shown", [
    ("mongodb://reader:s3cret@db:27017/?tls=true&tlsCertificateKeyFilePassword=k3y",
     "mongodb://reader:***@db:27017/?tls=true&tlsCertificateKeyFilePassword=***"),
    ("mongodb://db/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:t0ken",
     "mongodb://db/?authMechanism=MONGODB-AWS&authMechanismProperties=***"),
    ("mongodb://u:p@ss@db/", "mongodb://u:***@db/"),  # an unescaped @ in the password
    ("https://storage.googleapis.com/b/o?X-Goog-Credential=sa%40p&X-Goog-Signature=abc123&alt=media",
     "https://storage.googleapis.com/b/o?X-Goog-Credential=***&X-Goog-Signature=***&alt=media"),
    ("http://h/p?access_token=ya29.x&apiKey=AIza", "http://h/p?access_token=***&apiKey=***"),
    ("mongodb://db/?replicaSet=rs0&authSource=admin", "mongodb://db/?replicaSet=rs0&authSource=admin"),
])
def test_query_string_secrets_are_redacted(uri, shown):
    assert redact_uri(uri) == shown
    assert redact_text(f"error talking to {uri}: refused") == f"error talking to {shown}: refused"


def test_run_lineage_redacts_query_string_secrets():
    uri = "mongodb://db/?tlsCertificateKeyFilePassword=k3y&authMechanismProperties=AWS_SESSION_TOKEN:t0ken"
    lineage = describe_run("mine", {"mongo_uri": uri}, {"mongo_uri": redact_uri(uri)}, inputs=[])
    assert "k3y" not in lineage.options_json and "t0ken" not in lineage.options_json
    assert "tlsCertificateKeyFilePassword=***" in json.loads(lineage.options_json)["mongo_uri"]


def test_code_version_does_not_write_to_the_checkout():
    repo = harness.tmpdir("checkout-")
    git = ["git", "-C", repo, "-c", "user.email=t@example.com", "-c", "user.name=t"]
    _file(os.path.join(repo, "f.py"), b"x = 1\n")
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "f.py"], check=True)
    subprocess.run(git + ["commit", "-qm", "one"], check=True)
    head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    time.sleep(1.1)
    os.utime(os.path.join(repo, "f.py"))  # same content, new mtime: `git status` would refresh the index
    index = os.path.join(repo, ".git", "index")
    before = os.stat(index)
    assert runs.code_version(repo) == head  # not -dirty: the content did not change
    after = os.stat(index)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert not os.path.exists(index + ".lock")


if __name__ == "__main__":
    harness.main(__file__)


def test_wait_for_http_reports_a_dead_server_a_silent_one_and_a_ready_one(tmp_path):
    """The start-up wait every server we launch shares (mongod's emulators, Label Studio)."""
    log_path = str(tmp_path / "server.log")

    def start(code):
        with open(log_path, "wb") as log:
            return subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT)

    port = processes.free_port()
    url = f"http://127.0.0.1:{port}/"
    dead = start("import sys; print('port already taken', flush=True); sys.exit(3)")
    with pytest.raises(RuntimeError, match=r"dead exited with code 3; see .*it ends: port already taken"):
        processes.wait_for_http(dead, url, 30, "dead", log_path)
    serving = start(f"import http.server as h; h.ThreadingHTTPServer(('127.0.0.1', {port}), "
                    f"h.SimpleHTTPRequestHandler).serve_forever()")
    try:
        processes.wait_for_http(serving, url, 30, "server", log_path)  # answers: returns
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="never-ready not ready after 1s"):
            processes.wait_for_http(serving, url, 1, "never-ready", log_path,
                                      ready=lambda body: b"UP" in body, timeout_error=TimeoutError)
        assert time.monotonic() - started < 10
        assert serving.poll() is not None  # a server that never became ready is stopped
    finally:
        processes.stop_process(serving)
