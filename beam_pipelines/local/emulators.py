"""Local Cloud Storage and Pub/Sub emulators for the streaming demo and benchmark, on 127.0.0.1.

* :func:`gcs_emulator`: ``gcp-storage-emulator`` (installed by ``scripts/setup.sh`` in its own
  virtualenv under ``$ACTIVEBEAM_HOME/venvs``) with one bucket; sets ``STORAGE_EMULATOR_HOST``.
* :func:`pubsub_emulator`: the Cloud SDK's Pub/Sub emulator (Debian package
  ``google-cloud-cli-pubsub-emulator``, not installable from PyPI); sets ``PUBSUB_EMULATOR_HOST``.
* :class:`Uploader`: writes a file to a bucket and publishes its Cloud Storage notification in
  the real format, as a bucket with a Pub/Sub notification configuration would.

::

    with gcs_emulator("cams") as bucket, pubsub_emulator() as host:
        uploader = Uploader(bucket, "my-project", "uploads")   # topic and subscription
        uploader.upload("cam1/0001.jpg", "/data/0001.jpg")     # then the job sees it
"""
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from typing import Iterator, Optional

from beam_pipelines.local.home import activebeam_home
from beam_pipelines.local.processes import free_port, stop_process, wait_for_http

PUBSUB_EMULATOR = "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator"


class EmulatorNotFound(FileNotFoundError):
    pass


@contextlib.contextmanager
def environment(**variables):
    """Sets environment variables for the block, then restores them (removes the new ones)."""
    saved = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def run_emulator(name: str, argv, health_url: str, env_vars: dict, extra_env: Optional[dict] = None,
                 timeout_s: float = 60, log_dir: Optional[str] = None) -> Iterator[str]:
    """Runs an emulator process (``extra_env`` added to its environment) until ``health_url``
    answers, sets ``env_vars`` in this process while it runs; yields its log's path (in
    ``log_dir``, default a new temporary folder, removed on a clean exit and kept, with the log,
    after an error). Stops it (SIGTERM, then SIGKILL) on exit.

    Raises
    ------
    RuntimeError, TimeoutError
        If the process exits, or does not answer within ``timeout_s``, before it is ready.
    """
    own_dir = log_dir is None
    log_dir = log_dir or tempfile.mkdtemp(prefix=f"activebeam-{name}-")
    log_path = os.path.join(log_dir, f"{name}.log")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                   env=dict(os.environ, **(extra_env or {})))
        try:
            wait_for_http(process, health_url, timeout_s, name, log_path, timeout_error=TimeoutError)
            with environment(**env_vars):
                yield log_path
        finally:
            stop_process(process, timeout_s=20)
    if own_dir:  # reached on a clean exit only: after an error the log stays for its message
        shutil.rmtree(log_dir, ignore_errors=True)


@contextlib.contextmanager
def gcs_emulator(bucket: str, data_dir: Optional[str] = None, project: str = "activebeam-local",
                 log_dir: Optional[str] = None):
    """A ``gcp-storage-emulator`` with ``bucket``; yields a ``google.cloud.storage.Bucket``."""
    binary = os.path.join(activebeam_home(), "venvs", "gcs-emulator", "bin", "gcp-storage-emulator")
    if not os.path.exists(binary):
        raise EmulatorNotFound(f"{binary} is missing: run scripts/setup.sh")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    data_dir = data_dir or tempfile.mkdtemp(prefix="activebeam-gcs-")
    argv = [binary, "-d", data_dir, "start", "--host", "127.0.0.1", "--port", str(port),
            "--default-bucket", bucket, "-q"]
    with run_emulator("gcs-emulator", argv, f"{endpoint}/storage/v1/b/{bucket}",
                      {"STORAGE_EMULATOR_HOST": endpoint, "NO_GCE_CHECK": "true"}, log_dir=log_dir):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage
        client = storage.Client(project=project, credentials=AnonymousCredentials())
        yield client.bucket(bucket)


@contextlib.contextmanager
def pubsub_emulator(log_dir: Optional[str] = None):
    """The Cloud SDK's Pub/Sub emulator; yields its ``host:port`` (its log in ``log_dir``, see
    :func:`run_emulator`).

    Raises
    ------
    EmulatorNotFound
        Where the Cloud SDK's emulator is not installed.
    """
    if not os.path.exists(PUBSUB_EMULATOR):
        raise EmulatorNotFound(f"{PUBSUB_EMULATOR} is missing (Debian package google-cloud-cli-pubsub-emulator)")
    port = free_port()
    host = f"127.0.0.1:{port}"
    with run_emulator("pubsub-emulator", [PUBSUB_EMULATOR, "--host=127.0.0.1", f"--port={port}"],
                  f"http://{host}/", {"PUBSUB_EMULATOR_HOST": host}, log_dir=log_dir):
        yield host


class Uploader:
    """Uploads files to a bucket and publishes their ``OBJECT_FINALIZE`` notifications
    (:func:`transforms.intake.notifications.notification_attributes`) to a topic, creating the
    topic and a subscription of the same name in ``project``."""

    def __init__(self, bucket, project: str, name: str, ack_deadline_s: int = 60):
        from google.cloud import pubsub_v1
        self.bucket = bucket
        self.publisher = pubsub_v1.PublisherClient()
        self.topic = self.publisher.topic_path(project, name)
        self.publisher.create_topic(name=self.topic)
        subscriber = pubsub_v1.SubscriberClient()
        self.subscription = subscriber.subscription_path(project, name)
        subscriber.create_subscription(name=self.subscription, topic=self.topic,
                                       ack_deadline_seconds=ack_deadline_s)
        subscriber.close()

    def put(self, name: str, path: Optional[str] = None, data: Optional[bytes] = None) -> dict:
        """Uploads a file (``path``) or bytes; returns the object resource (not notified yet)."""
        blob = self.bucket.blob(name)
        if data is not None:
            blob.upload_from_string(data)
        else:
            blob.upload_from_filename(path)
        blob.reload()
        return dict(blob._properties)  # noqa: SLF001 - the JSON API's object resource

    def notify(self, resource: dict, event_type: str = "OBJECT_FINALIZE"):
        """Publishes the notification of ``resource`` and waits for Pub/Sub to accept it."""
        from transforms.intake.notifications import notification_attributes
        attributes = notification_attributes(resource, event_type)
        self.publisher.publish(self.topic, json.dumps(resource).encode("utf-8"), **attributes).result()

    def upload(self, name: str, path: Optional[str] = None, data: Optional[bytes] = None) -> dict:
        resource = self.put(name, path, data)
        self.notify(resource)
        return resource
