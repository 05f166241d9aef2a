"""Checks made before a job starts: its command line, its paths, its model file, its stores.

A job's bad input should cost one line and no waiting. The checks come in two steps, both before
a model is loaded, a server started or a file written:

1. :func:`parse_command_line` and the path checks that :func:`beam_pipelines.mine.options.check_options`
   calls (:func:`check_input_globs`, :func:`check_output_dir`, :func:`check_model_file`,
   :func:`check_npy_file`, :func:`check_mongo_uri`): local and instant. A bad value is an
   :class:`OptionError` (a ``ValueError``) naming the option, the value and what is allowed.
   This module imports neither TensorFlow nor the job's transforms, so that
   ``python -m beam_pipelines.mine --budget -5`` answers in about a second
   (:func:`exit_if_options_are_bad`).
2. :func:`check_stores`: MongoDB is pinged and each BigQuery dataset looked up, each within
   ``--store_check_timeout_s`` seconds (default :data:`DEFAULT_STORE_CHECK_TIMEOUT_S`), so that
   a dead or misnamed store fails the job at once with a :class:`StoreUnavailable` rather than
   after minutes of retried writes. The job checks them with local runners only: a remote
   runner's workers may reach stores that the driver cannot (a private network).

What the ``mine`` command does with each error (one line ``mine: error: ...`` on stderr, exit
code 2 for options, 3 for stores) is :mod:`beam_pipelines.cli.shutdown`'s part; docs/failures.md
lists every case.
"""
import argparse
import json
import logging
import math
import os
import re
import sys
import zipfile
from typing import Iterable, List, Optional, Sequence

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from transforms.common.files import is_local, is_valid_utf8, open_binary, printable_path
from transforms.common.redact import redact_text, redact_uri

_LOG = logging.getLogger(__name__)

#: How long the store checks wait for an answer, in seconds (``--store_check_timeout_s``).
DEFAULT_STORE_CHECK_TIMEOUT_S = 10.0
MONGO_SCHEMES = ("mongodb://", "mongodb+srv://")
#: Model forms the job runs (see :mod:`transforms.score.handlers`).
MODEL_FORMS = ("a .keras or .h5 Keras file, a .tflite or .onnx file, or a SavedModel directory "
               "(holding saved_model.pb)")
_GLOB_CHARACTERS = re.compile(r"[*?[]")


class OptionError(ValueError):
    """An option value that cannot work: the message names the option, the value and what is
    allowed, on one line."""


class StoreUnavailable(RuntimeError):
    """A store named by an option cannot be used (unreachable, refusing, missing dataset); the
    message names the option and the store (credentials redacted) and says why, on one line."""


def one_line(text: str, limit: int = 2000) -> str:
    """``text`` with its whitespace runs (newlines included) collapsed, cut at ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


# --- the command line -------------------------------------------------------------------------

class _OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are :class:`OptionError` instead of usage and exit."""

    def error(self, message):
        raise OptionError(one_line(redact_text(message)))


def _all_options_parser(options_class) -> argparse.ArgumentParser:
    """A parser of every registered Beam option plus ``options_class``'s (which win a conflict)."""
    parser = _OneLineParser(allow_abbrev=False, add_help=False, conflict_handler="resolve")
    classes = {}
    for cls in PipelineOptions.__subclasses__():
        classes.setdefault(f"{cls.__module__}.{cls.__qualname__}", cls)
    for cls in list(classes.values()) + [options_class]:
        cls._add_argparse_args(parser)  # pylint: disable=protected-access  (Beam's own hook)
    return parser


def parse_command_line(argv: Sequence[str], options_class) -> PipelineOptions:
    """``PipelineOptions`` from ``argv``, strictly: an unknown option (a typo that Beam would
    discard with a warning, e.g. ``--budgte``), a missing value, a value of the wrong type or
    not among the choices is an :class:`OptionError`.

    Parameters
    ----------
    argv : sequence of str
        The job's arguments (without the program name).
    options_class : type
        The job's ``PipelineOptions`` subclass (e.g. ``MineOptions``).
    """
    argv = list(argv)
    for arg in argv:
        if not is_valid_utf8(arg):
            raise OptionError(f"argument {printable_path(arg)!r} is not valid UTF-8")
    _, unknown = _all_options_parser(options_class).parse_known_args(argv)
    if unknown:
        raise OptionError(f"unrecognized arguments: {' '.join(redact_text(a) for a in unknown)} "
                          f"(see --help)")
    return PipelineOptions(argv)


def check_job(argv: Sequence[str], options_class, check):
    r"""``(options, check(options))`` for a job's command line: :func:`parse_command_line`, then the
    job's own checks (e.g. :func:`beam_pipelines.mine.options.check_options`), whose ``ValueError``\ s
    become :class:`OptionError`\ s (nothing else runs in them)."""
    options = parse_command_line(argv, options_class)
    try:
        return options, check(options)
    except OptionError:
        raise
    except ValueError as e:
        raise OptionError(one_line(e)) from None


def print_help(prog: str, options_class, file=None, also=(), shared=(), shared_from=None):
    """The job's own options (and those of the classes ``also``) with their help, the options
    ``shared`` (flags such as ``"--mongo_uri"``) that the options class ``shared_from`` defines
    with theirs, and a pointer to Beam's."""
    parser = argparse.ArgumentParser(
        prog=prog, add_help=False, description=(options_class.__doc__ or "").strip(),
        epilog="Plus every standard Apache Beam pipeline option (--runner, --project, "
               "--temp_location, --direct_num_workers...). What each bad input gets: docs/failures.md.")
    options_class._add_argparse_args(parser)  # pylint: disable=protected-access
    for other in also:
        other._add_argparse_args(parser.add_argument_group(other.__name__))  # pylint: disable=protected-access
    if shared:
        source = argparse.ArgumentParser(add_help=False)
        shared_from._add_argparse_args(source)  # pylint: disable=protected-access
        group = parser.add_argument_group("shared with mine")
        for action in source._actions:  # pylint: disable=protected-access
            if set(action.option_strings) & set(shared):
                group._add_action(action)  # pylint: disable=protected-access
    parser.print_help(file)


def exit_if_options_are_bad(prog: str, argv: Sequence[str], options_class, check, also=()):
    """For a job's ``__main__``: ``--help``, or one line ``PROG: error: ...`` and exit code 2 when
    an option is bad (``options_class`` parsed, then ``check``), before anything heavy is
    imported (TensorFlow takes seconds)."""
    argv = list(argv)
    if "-h" in argv or "--help" in argv:
        print_help(f"python -m beam_pipelines.{prog}", options_class, also=also)
        sys.exit(0)
    try:
        check_job(argv, options_class, check)
    except OptionError as e:
        sys.stderr.write(f"{prog}: error: {one_line(e)}\n")
        sys.exit(2)


def given_options(options: PipelineOptions) -> set:
    """Names of the options the command line sets, also those set to their default value
    (``--budget 50``): ``get_all_options(drop_default=True)`` alone misses them, so an option that
    does not apply would be ignored silently when its value happens to be the default. Plus the
    options set otherwise (keyword arguments) to a value other than their default."""
    names = set(options.get_all_options(drop_default=True))
    for token in getattr(options, "_flags", None) or ():
        if isinstance(token, str) and token.startswith("--") and len(token) > 2:
            names.add(token[2:].split("=", 1)[0].replace("-", "_"))
    return names


# --- values and paths (instant, local) ------------------------------------------------------

def check_range(flag: str, value, valid: bool, expected: str):
    """An :class:`OptionError` ``--FLAG must be EXPECTED, got VALUE`` unless ``valid``; NaN and
    infinities are never valid."""
    if isinstance(value, float) and not math.isfinite(value):
        valid = False
    if not valid:
        raise OptionError(f"--{flag} must be {expected}, got {value!r}")


def check_input_globs(values: Optional[List[str]], globs: Sequence[str]):
    """``--input`` given but empty (``--input "$UNSET"``), or naming a plain path (no glob
    characters) that does not exist, is an error; no input at all means the sample media."""
    if values is not None and not globs:
        raise OptionError(f"--input must name at least one file, directory or glob, got "
                          f"{', '.join(repr(v) for v in values)} (an unset shell variable?); "
                          f"leave --input out to mine the bundled sample media")
    for pattern in globs:
        if not is_valid_utf8(pattern):
            raise OptionError(f"--input must be valid UTF-8, got {printable_path(pattern)!r}")
        if (FileSystems.get_scheme(pattern) is None and not _GLOB_CHARACTERS.search(pattern)
                and not os.path.lexists(pattern)):
            raise OptionError(f"--input {pattern!r}: no such file or directory")


def check_output_dir(output_dir: str):
    """A local ``--output_dir`` must be a directory this process can write (created if missing:
    then its nearest existing ancestor must be a writable directory)."""
    if not is_local(output_dir) or FileSystems.get_scheme(output_dir):
        return
    if not is_valid_utf8(output_dir):
        raise OptionError(f"--output_dir must be valid UTF-8, got {printable_path(output_dir)!r}")
    path = os.path.abspath(output_dir)
    existing = path
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        what = "is" if existing == path else f"is inside {existing!r}, which is"
        raise OptionError(f"--output_dir {output_dir!r} {what} not a directory: it must be a "
                          f"directory (created if missing)")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == path else f" (it would be created in {existing!r})"
        raise OptionError(f"--output_dir {output_dir!r} is not writable{where}: it must be a "
                          f"directory this user can write")


def _head(uri: str, n: int = 64) -> bytes:
    with open_binary(uri) as f:
        return f.read(n)


def check_model_file(flag: str, uri: str):
    """The model at ``uri`` exists and is of a form the job runs, judged by its name and first
    bytes (nothing is loaded): a ``.keras`` file is a zip archive holding ``config.json``, an
    ``.h5`` file HDF5, a ``.tflite`` file a FlatBuffer with the ``TFL3`` identifier, an ``.onnx``
    file not empty, a SavedModel directory holds ``saved_model.pb``. A ``<model>.json``
    preprocessing sidecar, if present, must be a JSON object. A remote model (``gs://``) is
    judged by its name only: reading it needs credentials and the network, and happens when the
    model loads (whose errors also name ``--model``)."""
    if not is_valid_utf8(uri):
        raise OptionError(f"--{flag} must be valid UTF-8, got {printable_path(uri)!r}")
    path = uri.rstrip("/")
    if FileSystems.get_scheme(path) is not None:
        extension = os.path.splitext(path)[1].lower()
        if extension and extension not in (".keras", ".h5", ".hdf5", ".tflite", ".onnx"):
            raise OptionError(f"--{flag} must be {MODEL_FORMS}, got {uri!r}")
        return
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise OptionError(f"--{flag} {uri!r} is a directory without saved_model.pb: it must be "
                              f"{MODEL_FORMS}")
        _check_sidecar(flag, path)
        return
    if not os.path.exists(path):
        if os.path.islink(path):
            raise OptionError(f"--{flag} {uri!r} is a dangling symbolic link (to {os.readlink(path)!r})")
        raise OptionError(f"--{flag} {uri!r}: no such file or directory")
    extension = os.path.splitext(path)[1].lower()
    try:
        head = _head(path)
    except OSError as e:
        raise OptionError(f"--{flag} {uri!r} cannot be read: {one_line(e)}") from None
    problem = None
    if extension == ".keras":
        if not head.startswith(b"PK\x03\x04"):
            problem = f"a .keras file is a zip archive, this one starts with {head[:8]!r}"
        elif "config.json" not in _zip_names(path):
            problem = "a .keras archive holds config.json, this one does not"
    elif extension in (".h5", ".hdf5"):
        if not head.startswith(b"\x89HDF\r\n\x1a\n"):
            problem = f"an .h5 file is HDF5, this one starts with {head[:8]!r}"
    elif extension == ".tflite":
        if head[4:8] != b"TFL3":
            problem = f"a .tflite file is a TFLite FlatBuffer (identifier TFL3), this one starts with {head[:8]!r}"
    elif extension == ".onnx":
        if not head:
            problem = "the file is empty"
    else:
        raise OptionError(f"--{flag} must be {MODEL_FORMS}, got {uri!r}")
    if problem:
        raise OptionError(f"--{flag} {uri!r} is not a model the job can load: {problem}")
    _check_sidecar(flag, path)


def _zip_names(path: str) -> List[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def _check_sidecar(flag: str, model_path: str):
    sidecar = model_path + ".json"
    if not FileSystems.exists(sidecar):
        return
    try:
        declared = json.loads(_head(sidecar, 1 << 20).decode("utf-8"))
    except (ValueError, OSError) as e:
        raise OptionError(f"--{flag}: the preprocessing sidecar {sidecar!r} is not valid JSON: "
                          f"{one_line(e)}") from None
    if not isinstance(declared, dict):
        raise OptionError(f"--{flag}: the preprocessing sidecar {sidecar!r} must hold a JSON object")


def check_npy_file(flag: str, uri: str):
    """``uri`` is an existing NumPy ``.npy`` file (by its magic bytes); remote files are read
    when the job starts."""
    if FileSystems.get_scheme(uri) is not None:
        return
    if not FileSystems.exists(uri):
        raise OptionError(f"--{flag} {uri!r}: no such file")
    try:
        head = _head(uri, 8)
    except OSError as e:
        raise OptionError(f"--{flag} {uri!r} cannot be read: {one_line(e)}") from None
    if not head.startswith(b"\x93NUMPY"):
        raise OptionError(f"--{flag} {uri!r} must be a NumPy .npy file, it starts with {head[:8]!r}")


def check_mongo_uri(uri: str):
    """``uri`` is a MongoDB connection string, checked without any name resolution: the scheme,
    then pymongo's parser (hosts, ports, options and their values). A ``mongodb+srv://`` URI's
    DNS records are looked up by :func:`check_stores`, not here."""
    shown = redact_uri(uri)
    if not uri.startswith(MONGO_SCHEMES):
        raise OptionError(f"--mongo_uri must be a MongoDB connection string, "
                          f"mongodb://HOST[:PORT][,HOST...][/DATABASE][?OPTIONS] or "
                          f"mongodb+srv://HOST[/DATABASE][?OPTIONS], got {shown!r}")
    from pymongo import errors, uri_parser
    try:
        if uri.startswith("mongodb://"):
            uri_parser.parse_uri(uri)
        else:  # the public parser would resolve the SRV record: validate the text only
            from pymongo.uri_parser_shared import _validate_uri  # pylint: disable=import-outside-toplevel
            _validate_uri(uri)
    except ImportError:
        pass
    except (errors.PyMongoError, ValueError, TypeError) as e:
        raise OptionError(f"--mongo_uri {shown!r} is not a valid MongoDB connection string: "
                          f"{one_line(redact_text(str(e)))}") from None


_BAD_DATABASE_CHARACTERS = set('/\\. "$\0')


def check_mongo_database(name: str):
    """A MongoDB database name: 1 to 63 characters, none of ``/\\. "$`` or NUL."""
    if not name or len(name.encode("utf-8", "replace")) > 63 or set(name) & _BAD_DATABASE_CHARACTERS:
        raise OptionError(f"--mongo_database must be 1 to 63 characters without / \\ . space \" $, "
                          f"got {name!r}")


def check_runner(runner: str):
    """A runner Beam knows by name, or a ``module.Class`` path."""
    if "." in runner:
        return
    known = {name.lower() for name in StandardOptions.KNOWN_RUNNER_NAMES}
    if runner.lower() not in known and runner.lower() + "runner" not in known:
        raise OptionError(f"--runner must be one of {', '.join(StandardOptions.KNOWN_RUNNER_NAMES)} "
                          f"or a module.Class path, got {runner!r}")


# --- stores (network, bounded) ----------------------------------------------------------------

def check_stores(mongo_uri: Optional[str], bigquery_tables: Iterable[str] = (),
                 project: Optional[str] = None, timeout_s: float = DEFAULT_STORE_CHECK_TIMEOUT_S):
    """Pings MongoDB and looks up the dataset of each BigQuery table, each within ``timeout_s``.

    Parameters
    ----------
    mongo_uri : str or None
        None: the embedded server (started later, nothing to check).
    bigquery_tables : iterable of str
        Table ids (their datasets must exist: the job creates tables, not datasets).
    project : str, optional
        The job's ``--project``, for table ids without one.
    timeout_s : float
        Seconds each store has to answer; 0 skips the checks.

    Raises
    ------
    StoreUnavailable
        For the first store that cannot be used.
    """
    if not timeout_s:
        return
    checks = [lambda: _check_mongo(mongo_uri, timeout_s)] if mongo_uri else []
    datasets = {}
    for table in bigquery_tables:
        from transforms.index.bigquery_client import parse_table_id
        ref = parse_table_id(table, project)
        datasets.setdefault((ref.project, ref.dataset), table)
    checks += [lambda key=key, table=table: _check_bigquery_dataset(table, *key, timeout_s)
               for key, table in datasets.items()]
    for check in checks:
        check()


def _check_mongo(uri: str, timeout_s: float):
    import pymongo
    from pymongo import errors
    timeout_ms = max(1, int(timeout_s * 1000))
    shown = redact_uri(uri)
    try:
        with pymongo.MongoClient(uri, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms,
                                 socketTimeoutMS=timeout_ms, appname="activebeam-preflight") as client:
            client.admin.command("ping")
    except errors.ServerSelectionTimeoutError as e:
        detail = str(e).split(", Timeout:")[0]
        detail = re.sub(r" \(configured timeouts:[^)]*\)", "", detail)
        raise StoreUnavailable(f"--mongo_uri {shown}: no MongoDB server answered within "
                               f"{timeout_s:g} s ({one_line(redact_text(detail), 300)})") from None
    except errors.OperationFailure as e:
        raise StoreUnavailable(f"--mongo_uri {shown}: MongoDB refused the connection: "
                               f"{one_line(redact_text(str(e.details.get('errmsg', e) if e.details else e)), 300)}") from None
    except (errors.PyMongoError, OSError, ValueError) as e:
        raise StoreUnavailable(f"--mongo_uri {shown}: cannot use this MongoDB: "
                               f"{one_line(redact_text(str(e)), 300)}") from None


def _check_bigquery_dataset(table: str, project: Optional[str], dataset: str, timeout_s: float):
    from google.api_core import exceptions
    from transforms.index.bigquery_client import make_client, request_options
    name = f"{project}:{dataset}" if project else dataset
    try:
        client = make_client(project)
        client.get_dataset(f"{project}.{dataset}" if project else dataset, **request_options(timeout_s))
    except exceptions.NotFound:
        raise StoreUnavailable(f"BigQuery table {table}: dataset {name} does not exist (the job "
                               f"creates tables, not datasets: bq mk --dataset {name})") from None
    except exceptions.Forbidden as e:
        raise StoreUnavailable(f"BigQuery table {table}: access to dataset {name} denied: "
                               f"{one_line(e.message, 300)}") from None
    except exceptions.RetryError as e:
        cause = e.cause if e.cause is not None else e
        raise StoreUnavailable(f"BigQuery table {table}: BigQuery did not answer within {timeout_s:g} s "
                               f"({one_line(redact_text(str(cause)), 300)})") from None
    except Exception as e:  # noqa: BLE001 - credentials, transport, emulator: all mean "cannot use"
        raise StoreUnavailable(f"BigQuery table {table}: cannot reach dataset {name}: "
                               f"{type(e).__name__}: {one_line(redact_text(str(e)), 300)}") from None
