"""The worker processes of a local multi-process run (``--direct_running_mode=multi_processing``).

Beam's ``FnApiRunner`` starts one ``python -m apache_beam.runners.worker.sdk_worker_main`` per
worker. :class:`LocalProcessesRunner` is that runner, whose workers run this module instead:
Beam's own worker ``main``, unchanged, followed by an immediate exit once it has returned.

Why: at the end of a run the runner closes its workers one after the other, and waits for each
process to exit. A worker that has imported TensorFlow then spends seconds in the interpreter's
final garbage collection and module teardown (``gc_collect_main``, seen with ``py-spy dump``),
doing nothing useful (figures in docs/timings.md).

When Beam's ``main`` returns, the harness has answered every bundle, torn down every ``DoFn``
(``teardown``: clients closed, writes flushed) and closed its log channel, so nothing is left
to run: the process flushes its standard streams and leaves with ``os._exit(0)``. A ``main`` that
raises still exits through Python's normal path, with its traceback and a non-zero status.

The runner is the stock ``FnApiRunner`` in every other respect: the pipeline's subprocess
environment is rewritten from Beam's worker module to this one, nothing else.
"""
import os
import sys

from apache_beam.portability import python_urns
from apache_beam.runners.portability.fn_api_runner import fn_runner

#: Beam's worker module, as the stock runner writes it into the subprocess environment.
BEAM_WORKER_MODULE = "apache_beam.runners.worker.sdk_worker_main"
#: This module, run in its place.
WORKER_MODULE = "beam_pipelines.local.worker"


def worker_command(command: str) -> str:
    """``command`` (a subprocess environment's command line) with Beam's worker module replaced by
    :data:`WORKER_MODULE`; any other command unchanged."""
    return command.replace(f"-m {BEAM_WORKER_MODULE}", f"-m {WORKER_MODULE}")


class LocalProcessesRunner(fn_runner.FnApiRunner):
    """``FnApiRunner`` whose subprocess workers run :mod:`beam_pipelines.local.worker`, which exit
    without Python's slow teardown once Beam's harness has finished (see the module)."""

    def run_via_runner_api(self, pipeline_proto, options):
        for environment in pipeline_proto.components.environments.values():
            if environment.urn == python_urns.SUBPROCESS_SDK:
                environment.payload = worker_command(environment.payload.decode("utf-8")).encode("utf-8")
        return super().run_via_runner_api(pipeline_proto, options)


def main(argv=None):
    from apache_beam.runners.worker import sdk_worker_main
    sdk_worker_main.main(sys.argv if argv is None else argv)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)  # pylint: disable=protected-access


if __name__ == "__main__":
    main()
