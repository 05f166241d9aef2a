"""How many threads an inference runtime takes in this process (TFLite interpreters, detectors).
"""
import os

__all__ = ["INFERENCE_THREADS_ENV", "ONE_SDK_PROCESS_EXPERIMENT", "usable_cpus", "worker_pipeline_options",
           "inference_threads"]

#: Environment variable: TFLite interpreter threads per worker process (default: see
#: :func:`inference_threads`). The ``mine`` job sets it to ``CPUs // workers`` for a local
#: multi-process run, so that worker processes do not each start one thread per CPU.
INFERENCE_THREADS_ENV = "ACTIVEBEAM_INFERENCE_THREADS"

#: Dataflow's experiment that runs one SDK process per worker VM instead of one per vCPU.
ONE_SDK_PROCESS_EXPERIMENT = "no_use_multiple_sdk_containers"


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (``taskset``, a container's cpuset),
    which ``os.cpu_count()`` ignores; the CPU count where the platform has no affinity call."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def worker_pipeline_options(environ=None) -> dict:
    """The pipeline options a portable SDK worker was started with (``PIPELINE_OPTIONS`` or
    ``PIPELINE_OPTIONS_FILE``, as Beam's ``sdk_worker_main`` reads them), as a dict; ``{}`` in
    a process that is not such a worker or when they cannot be read."""
    # Beam's own parser of them (private in the pinned Beam; test_handlers covers both forms).
    from apache_beam.runners.worker.sdk_worker_main import _load_pipeline_options
    environ = os.environ if environ is None else environ
    raw = environ.get("PIPELINE_OPTIONS")
    try:
        if "PIPELINE_OPTIONS_FILE" in environ:
            with open(environ["PIPELINE_OPTIONS_FILE"]) as f:
                raw = f.read()
        options = _load_pipeline_options(raw or None)
    except (OSError, ValueError, AttributeError, TypeError):  # unreadable, not JSON, not an object
        return {}
    return options if isinstance(options, dict) else {}


def inference_threads(environ=None) -> int:
    """Threads for a TFLite interpreter in this process.

    ``$ACTIVEBEAM_INFERENCE_THREADS`` if set to a positive integer; else 1 in a Dataflow worker
    that runs one SDK process per vCPU (Dataflow's default for Python: N processes with N
    threads each would put N^2 threads on N cores); else the CPUs the process may use
    (:func:`usable_cpus`; one process per machine: a local run, or Dataflow with
    ``--experiments=no_use_multiple_sdk_containers``).
    """
    environ = os.environ if environ is None else environ
    value = environ.get(INFERENCE_THREADS_ENV, "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    options = worker_pipeline_options(environ)
    experiments = options.get("experiments") or ()
    if "Dataflow" in str(options.get("runner") or "") and ONE_SDK_PROCESS_EXPERIMENT not in experiments:
        return 1
    return usable_cpus()
