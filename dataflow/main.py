"""Entry point of the ``mine`` Flex Template, run by the template launcher on its VM.

The image (dataflow/Dockerfile) sets ``FLEX_TEMPLATE_PYTHON_PY_FILE`` to this file; at launch the
launcher runs ``python main.py --runner=DataflowRunner --template_location=... --<parameter>=<value>
...``. The job builds its graph, Beam writes it to ``--template_location`` and the launcher submits
it. The project is installed in the image (``pip install --no-deps .``): this file only runs it,
exactly as ``python -m beam_pipelines.mine`` would.
"""
import runpy

if __name__ == "__main__":
    runpy.run_module("beam_pipelines.mine", run_name="__main__", alter_sys=True)
