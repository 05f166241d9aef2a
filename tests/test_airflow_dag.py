"""The nightly DAG (dataflow/airflow/activebeam_nightly.py) as Airflow users test DAGs: loaded with
``DagBag(dag_folder=...)`` with the examples off in Airflow's own virtualenv (made by
scripts/setup.sh, pins in dataflow/airflow/requirements.txt), no import errors, and the tasks,
dependencies, retries and parameters that the docs describe. The flags the DAG passes are flags of
the project's commands (the annotate parser, the Flex Template's parameters)."""
import argparse
import json
import os
import re
import subprocess

import pytest

from beam_pipelines.annotate.options import AnnotateOptions
from beam_pipelines.local.home import activebeam_home
from beam_pipelines.mine.options import MineOptions
from tests import harness

DAG_FOLDER = os.path.join(harness.CHECKOUT, "dataflow", "airflow")
VENV = os.environ.get("ACTIVEBEAM_AIRFLOW_VENV") or os.path.join(activebeam_home(), "venvs", "airflow")
PYTHON = os.path.join(VENV, "bin", "python")
pytestmark = pytest.mark.skipif(not os.path.exists(PYTHON), reason=f"no Airflow virtualenv at {VENV}: run scripts/setup.sh")

# Runs in Airflow's virtualenv: what the DagBag holds, as JSON.
LOAD = r"""
import json, sys
try:
    from airflow.dag_processing.dagbag import DagBag
except ImportError:
    from airflow.models.dagbag import DagBag
import inspect
# Airflow 2 takes include_examples; Airflow 3.3 has no such argument (AIRFLOW__CORE__LOAD_EXAMPLES=False).
examples = {"include_examples": False} if "include_examples" in inspect.signature(DagBag).parameters else {}
bag = DagBag(dag_folder=sys.argv[1], **examples)
dag = bag.dags.get("activebeam_nightly")
out = {"import_errors": {path: str(error)[-3000:] for path, error in bag.import_errors.items()},
       "dag_ids": sorted(bag.dag_ids)}
if dag is not None:
    out.update(
        schedule=str(getattr(dag, "schedule", None) or dag.timetable.summary), catchup=dag.catchup,
        max_active_runs=dag.max_active_runs, params=sorted(dag.params.keys()),
        tasks={t.task_id: {"operator": type(t).__name__, "upstream": sorted(t.upstream_task_ids),
                           "retries": t.retries, "trigger_rule": str(getattr(t.trigger_rule, "value", t.trigger_rule)),
                           "bash_command": getattr(t, "bash_command", None),
                           "body": getattr(t, "body", None)} for t in dag.tasks})
print(json.dumps(out, default=str))
"""


@pytest.fixture(scope="module")
def loaded():
    home = harness.tmpdir("airflow-home-")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTHONPATH"))}
    env.update(AIRFLOW_HOME=home, AIRFLOW__CORE__LOAD_EXAMPLES="False", AIRFLOW__CORE__DAGS_FOLDER=DAG_FOLDER,
               NO_GCE_CHECK="true", HOME=home)
    done = subprocess.run([PYTHON, "-c", LOAD, DAG_FOLDER], capture_output=True, text=True, env=env,
                          timeout=300, cwd=home)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_dagbag_loads_the_dag_without_import_errors(loaded):
    assert loaded["import_errors"] == {}
    assert loaded["dag_ids"] == ["activebeam_nightly"]
    assert loaded["catchup"] is False and loaded["max_active_runs"] == 1
    assert "0 2 * * *" in loaded["schedule"]


def test_tasks_and_dependencies_are_the_documented_chain(loaded):
    tasks = loaded["tasks"]
    assert {name: task["upstream"] for name, task in tasks.items()} == {
        "mine": [], "selection_id": ["mine"], "annotate_export": ["selection_id"],
        "annotate_import": ["annotate_export"], "annotate_qc": ["annotate_import"],
        "annotate_dataset": ["annotate_qc"]}
    assert tasks["mine"]["operator"] == "DataflowStartFlexTemplateOperator"
    assert all(tasks[n]["operator"] == "BashOperator" for n in tasks if n.startswith("annotate_"))
    assert all(task["retries"] == 2 for task in tasks.values())
    assert tasks["annotate_import"]["trigger_rule"] == "none_failed"  # runs on a night without candidates
    with open(os.path.join(harness.CHECKOUT, "docs", "scheduling.md")) as f:
        docs = f.read()
    assert all(f"`{name}`" in docs for name in tasks)


def _flags(options_class):
    parser = argparse.ArgumentParser(add_help=False)
    options_class._add_argparse_args(parser)
    return {a.option_strings[0] for a in parser._actions if a.option_strings}


def test_the_dag_passes_only_flags_the_commands_know(loaded):
    known = _flags(AnnotateOptions) | _flags(MineOptions)
    for name, task in loaded["tasks"].items():
        if not name.startswith("annotate_"):
            continue
        command = task["bash_command"]
        assert f"beam_pipelines.annotate {name[len('annotate_'):]} " in command
        assert set(re.findall(r"(--[a-z_]+)", command)) <= known, name
    with open(os.path.join(harness.CHECKOUT, "dataflow", "mine_template_metadata.json")) as f:
        parameters = {p["name"] for p in json.load(f)["parameters"]}
    launched = loaded["tasks"]["mine"]["body"]["launchParameter"]["parameters"]
    assert set(launched) <= parameters
