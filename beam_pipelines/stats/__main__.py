"""``python -m beam_pipelines.stats``: :func:`beam_pipelines.stats.queries.main`."""
import sys

from beam_pipelines.stats.queries import main

if __name__ == "__main__":
    sys.exit(main())
