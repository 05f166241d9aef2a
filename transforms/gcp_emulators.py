"""Pointing Beam's Google Cloud clients at local emulators (tests and offline development).

Only acts when the emulator variables the Google client libraries already use are set:
``BIGQUERY_EMULATOR_HOST`` (e.g. ``http://127.0.0.1:9050``) for BigQuery. Never used in
production, where those variables are unset.
"""
import os


def use_bigquery_emulator_if_configured() -> bool:
    """Routes Beam's BigQuery client (apitools) to ``$BIGQUERY_EMULATOR_HOST``, anonymously.

    Beam's ``WriteToBigQuery`` has no endpoint option: its apitools client takes the endpoint from
    the class attribute ``BigqueryV2.BASE_URL``, and its credentials from ``google.auth.default``.
    Both are replaced in this process. Returns whether the emulator is configured.
    """
    host = os.environ.get("BIGQUERY_EMULATOR_HOST")
    if not host:
        return False
    if not host.startswith(("http://", "https://")):
        raise ValueError(f"BIGQUERY_EMULATOR_HOST must start with http://, got {host!r}")
    import google.auth
    from google.auth.credentials import AnonymousCredentials
    from apache_beam.io.gcp.internal.clients.bigquery import BigqueryV2

    BigqueryV2.BASE_URL = host.rstrip("/") + "/bigquery/v2/"
    project = os.environ.get("GOOGLE_CLOUD_PROJECT")
    google.auth.default = lambda *args, **kwargs: (AnonymousCredentials(), project)
    return True
