"""``python -m beam_pipelines.annotate``: :func:`beam_pipelines.annotate.command.main`."""
from beam_pipelines.annotate.command import main

if __name__ == "__main__":
    main()
