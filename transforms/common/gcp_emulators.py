"""Pointing Beam's Google Cloud clients at local emulators (tests and offline development).

Acts only when the variables the Google client libraries already read are set:
``BIGQUERY_EMULATOR_HOST`` (e.g. ``http://127.0.0.1:9050``) and ``STORAGE_EMULATOR_HOST``
(e.g. ``http://127.0.0.1:9023``). In production they are unset and nothing changes.
"""
import os


def _anonymous_default_credentials():
    """Makes ``google.auth.default`` return anonymous credentials (no metadata-server probe)."""
    import google.auth
    from google.auth.credentials import AnonymousCredentials
    project = os.environ.get("GOOGLE_CLOUD_PROJECT")
    google.auth.default = lambda *args, **kwargs: (AnonymousCredentials(), project)


def use_emulators_if_configured() -> bool:
    """Routes Beam's GCS and BigQuery clients to the configured emulators, anonymously.

    * GCS: ``google-cloud-storage`` (which Beam's ``gs://`` filesystem uses) reads
      ``STORAGE_EMULATOR_HOST`` itself; only the credentials are replaced.
    * BigQuery: Beam's apitools client takes its endpoint from the class attribute
      ``BigqueryV2.BASE_URL``, which is set to ``$BIGQUERY_EMULATOR_HOST/bigquery/v2/``.

    Both changes apply to this process (the driver, and the in-process local runners).
    Returns whether any emulator is configured.

    Raises
    ------
    ValueError
        If ``BIGQUERY_EMULATOR_HOST`` lacks its ``http://`` scheme.
    """
    bigquery = os.environ.get("BIGQUERY_EMULATOR_HOST")
    storage = os.environ.get("STORAGE_EMULATOR_HOST")
    if not bigquery and not storage:
        return False
    if bigquery:
        if not bigquery.startswith(("http://", "https://")):
            raise ValueError(f"BIGQUERY_EMULATOR_HOST must start with http://, got {bigquery!r}")
        from apache_beam.io.gcp.internal.clients.bigquery import BigqueryV2
        BigqueryV2.BASE_URL = bigquery.rstrip("/") + "/bigquery/v2/"
    _anonymous_default_credentials()
    return True
