"""``python -m beam_pipelines.mine``: a bad option fails at once (one line, exit code 2), before
the job's heavier modules load; then :func:`beam_pipelines.mine.command.main`."""
import sys

from beam_pipelines.cli import preflight
from beam_pipelines.mine.options import MineOptions, StreamingOptions, check_options

if __name__ == "__main__":
    preflight.exit_if_options_are_bad("mine", sys.argv[1:], MineOptions, check_options, also=(StreamingOptions,))
    from beam_pipelines.mine.command import main
    main()
