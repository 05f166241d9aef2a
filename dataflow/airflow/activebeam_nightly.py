"""The nightly activebeam chain as an Airflow DAG (Airflow 3, Cloud Composer 3):

    mine (Dataflow Flex Template) -> selection_id -> annotate_export -> annotate_import
        -> annotate_qc -> annotate_dataset (training set and retraining trigger)

* ``mine``: the Google provider's ``DataflowStartFlexTemplateOperator`` launches the Flex Template
  of docs/dataflow.md (``params.template``) on the night's input, output under
  ``params.output_root/<ds>``, and waits for the job to finish.
* ``selection_id``: reads the night's ``candidates.jsonl`` (Cloud Storage) and hands its
  ``selection_id`` to the export through XCom; a night without candidates skips the export.
* ``annotate_*``: ``python -m beam_pipelines.annotate SUBCOMMAND`` on the Airflow worker, which
  needs activebeam installed (``params.activebeam_python``: its interpreter). ``export`` sends the
  night's selection to Label Studio (``--label_studio_url``, no shared disk: pictures are
  uploaded); ``import``, ``qc`` and ``dataset`` take in what annotators finished since the last
  run, and ``dataset --retrain_after N --retrain_topic T`` publishes the retraining trigger once
  enough new labels arrived.

Idempotence: every step can run again with the same result. ``mine`` writes frames and candidates
by deterministic ids (a relaunched job appends nothing to BigQuery and rewrites the same MongoDB
documents); ``export`` skips frames already in the project; ``import`` upserts annotations by
their id; ``qc`` recomputes from the annotations; ``dataset`` writes the same files and sends a
trigger once per threshold crossing. So task retries (``retries=2``, 10 min apart) and manual
re-runs of a night are safe. ``max_active_runs=1`` keeps two nights from exporting at once;
``catchup=False`` runs only the latest night after an outage.

Parameters (``params``, overridable per run): ``project``, ``region``, ``template`` (the Flex
Template spec, ``gs://.../mine.json``), ``input`` (glob), ``output_root`` (``gs://`` prefix),
``temp_location``, ``mongo_uri``, ``bigquery_table``, ``budget``, ``strategy``,
``label_studio_url``, ``label_studio_api_key_env`` (name of the worker's environment variable that
holds the token: no secret in the DAG), ``label_studio_project``, ``retrain_after``,
``retrain_topic``, ``activebeam_python``, ``work_dir`` (the annotate commands' local
``--output_dir``, per night).

This file imports only Airflow and its Google provider (nothing of activebeam), so it loads in
Airflow's own environment; ``tests/test_airflow_dag.py`` loads it with ``DagBag`` there.
"""
import datetime
import json

import pendulum
from airflow.providers.google.cloud.operators.dataflow import DataflowStartFlexTemplateOperator
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Param, task

DAG_ID = "activebeam_nightly"
#: The night's output directory of ``mine`` (Cloud Storage).
OUTPUT_DIR = "{{ params.output_root }}/{{ ds }}"
#: The annotate commands' ``--output_dir`` on the Airflow worker (dead letters, pictures to upload).
WORK_DIR = "{{ params.work_dir }}/{{ ds }}"
#: Each task's upstream tasks, as the module docstring draws them.
UPSTREAM = {
    "mine": (),
    "selection_id": ("mine",),
    "annotate_export": ("selection_id",),
    "annotate_import": ("annotate_export",),
    "annotate_qc": ("annotate_import",),
    "annotate_dataset": ("annotate_qc",),
}

PARAMS = {
    "project": Param("my-project", type="string", description="Google Cloud project of the Dataflow job"),
    "region": Param("europe-west1", type="string"),
    "template": Param("gs://my-bucket/templates/mine.json", type="string", description="Flex Template spec"),
    "input": Param("gs://my-cams/incoming/*", type="string", description="the media glob mined each night"),
    "output_root": Param("gs://my-bucket/activebeam/nightly", type="string"),
    "temp_location": Param("gs://my-bucket/tmp", type="string"),
    "mongo_uri": Param("mongodb://mongo.internal:27017", type="string"),
    "bigquery_table": Param("my-project:activebeam.frames", type="string"),
    "budget": Param(200, type="integer", minimum=0),
    "strategy": Param("uncertainty_kcenter", type="string"),
    "label_studio_url": Param("https://labelstudio.internal", type="string"),
    "label_studio_api_key_env": Param("LABEL_STUDIO_API_KEY", type="string",
                                      description="worker environment variable holding the Label Studio token"),
    "label_studio_project": Param("activebeam-cams", type="string"),
    "retrain_after": Param(500, type="integer", minimum=0),
    "retrain_topic": Param("projects/my-project/topics/retrain", type="string"),
    "activebeam_python": Param("python3", type="string", description="interpreter with activebeam installed"),
    "work_dir": Param("/tmp/activebeam-nightly", type="string", description="local folder on the worker"),
}


def _annotate(subcommand: str, *extra: str) -> str:
    """The bash command of one ``python -m beam_pipelines.annotate`` step."""
    words = ["{{ params.activebeam_python }}", "-m", "beam_pipelines.annotate", subcommand,
             "--output_dir", WORK_DIR, "--mongo_uri", "'{{ params.mongo_uri }}'",
             "--label_studio_url", "'{{ params.label_studio_url }}'",
             "--label_studio_api_key", '"$' + '{{ params.label_studio_api_key_env }}"',
             "--label_studio_project", "'{{ params.label_studio_project }}'", *extra]
    return " ".join(words)


with DAG(
    dag_id=DAG_ID,
    description="mine on Dataflow, then the labelling loop (docs/scheduling.md)",
    schedule="0 2 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    default_args={"retries": 2, "retry_delay": datetime.timedelta(minutes=10)},
    tags=["activebeam"],
) as dag:
    mine = DataflowStartFlexTemplateOperator(
        task_id="mine",
        project_id="{{ params.project }}",
        location="{{ params.region }}",
        body={"launchParameter": {
            "jobName": "activebeam-mine-{{ ds_nodash }}",
            "containerSpecGcsPath": "{{ params.template }}",
            "parameters": {
                "input": "{{ params.input }}", "output_dir": OUTPUT_DIR, "mongo_uri": "{{ params.mongo_uri }}",
                "bigquery_table": "{{ params.bigquery_table }}", "budget": "{{ params.budget }}",
                "strategy": "{{ params.strategy }}",
            },
            "environment": {"tempLocation": "{{ params.temp_location }}"},
        }},
        wait_until_finished=True,
    )

    @task(task_id="selection_id")
    def selection_id(output_dir: str) -> str:
        """The ``selection_id`` of the night's candidates (skips the export when there are none)."""
        from airflow.exceptions import AirflowSkipException
        from airflow.providers.google.cloud.hooks.gcs import GCSHook
        if not output_dir.startswith("gs://"):
            raise ValueError(f"output_root must be a gs:// prefix, got {output_dir!r}")
        bucket, _, prefix = output_dir[len("gs://"):].partition("/")
        name = f"{prefix.rstrip('/')}/candidates.jsonl".lstrip("/")
        text = GCSHook().download(bucket_name=bucket, object_name=name).decode("utf-8")
        for line in text.splitlines():
            if line.strip():
                return json.loads(line)["selection_id"]
        raise AirflowSkipException(f"no candidates in {output_dir}: nothing to export tonight")

    selection = selection_id(OUTPUT_DIR)
    export = BashOperator(task_id="annotate_export", bash_command=_annotate(
        "export", "--selection_id", "{{ ti.xcom_pull(task_ids='selection_id') }}"))
    # The loop goes on on a night without candidates: annotations of earlier exports still come in.
    imported = BashOperator(task_id="annotate_import", bash_command=_annotate("import"),
                            trigger_rule="none_failed")
    qc = BashOperator(task_id="annotate_qc", bash_command=_annotate("qc"))
    dataset = BashOperator(task_id="annotate_dataset", bash_command=_annotate(
        "dataset", "--retrain_after", "{{ params.retrain_after }}", "--retrain_topic", "'{{ params.retrain_topic }}'"))

    mine >> selection >> export >> imported >> qc >> dataset
