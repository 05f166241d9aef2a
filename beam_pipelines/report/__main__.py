"""``python -m beam_pipelines.report``: :func:`beam_pipelines.report.html.main`."""
import sys

from beam_pipelines.report.html import main

if __name__ == "__main__":
    sys.exit(main())
