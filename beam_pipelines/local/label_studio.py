"""An embedded Label Studio server on 127.0.0.1, as the ``mine`` job embeds ``mongod``.

``scripts/setup.sh`` installs ``label-studio`` in its own virtualenv
(``$ACTIVEBEAM_HOME/venvs/label-studio``; never in the project's). :class:`LocalLabelStudio`
starts it with SQLite and its data under a directory of the caller, bound to loopback only, with
a pre-made admin and API token, local-files serving from ``document_root``, and every outbound
call (version check, Sentry, analytics) turned off::

    with LocalLabelStudio("/out/label-studio", document_root="/out") as ls:
        ls.url, ls.api_key          # http://127.0.0.1:PORT, the admin's token

The first start on a new data directory takes about 40 s (database migrations), later ones 5-10 s.
"""
import logging
import os
import secrets
import subprocess
from typing import Optional

from beam_pipelines.local.home import activebeam_home
from beam_pipelines.local.processes import free_port, parent_death_signal, stop_process, wait_for_http

_LOG = logging.getLogger(__name__)
ADMIN_USER = "admin@activebeam.local"
CREDENTIALS_FILE = "activebeam-credentials"
#: Variables Label Studio reads that must not leak in from the caller's environment.
#: The caller's Python path (Bazel's runfiles, a test runner's) must not reach Label Studio's own virtualenv.
CLEARED = ("USERNAME", "PASSWORD", "HOST", "PORT", "DEBUG", "LABEL_STUDIO_HOST", "LABEL_STUDIO_PORT",
           "PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH", "PYTHONNOUSERSITE", "DJANGO_SETTINGS_MODULE")


class LabelStudioNotFound(FileNotFoundError):
    pass


class LabelStudioStartError(RuntimeError):
    pass


def find_label_studio() -> str:
    """The ``label-studio`` executable set-up installed; :class:`LabelStudioNotFound` otherwise."""
    binary = os.path.join(activebeam_home(), "venvs", "label-studio", "bin", "label-studio")
    if not os.path.exists(binary):
        raise LabelStudioNotFound(f"{binary} is missing: run scripts/setup.sh")
    return binary


class LocalLabelStudio:
    """A Label Studio server for the life of a ``with`` block (or :meth:`start` / :meth:`stop`).

    Parameters
    ----------
    data_dir : str
        Label Studio's data (SQLite database, uploads); created if missing. The admin's password
        and token are kept in ``<data_dir>/activebeam-credentials`` so a restart on the same
        directory keeps working.
    document_root : str
        Local files under this directory can be served to annotators (``/data/local-files/?d=``).
    port : int, optional
        Port on 127.0.0.1 (default: a free one).
    startup_timeout_s : float
        How long to wait for ``/health``.
    """

    def __init__(self, data_dir: str, document_root: str, port: Optional[int] = None,
                 startup_timeout_s: float = 180.0):
        self.data_dir = os.path.abspath(data_dir)
        self.document_root = os.path.abspath(document_root)
        self.port = port or free_port()
        self._timeout_s = startup_timeout_s
        self._process = None
        self.api_key, self.password = self._credentials()
        self.user = ADMIN_USER

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _credentials(self):
        os.makedirs(self.data_dir, exist_ok=True)
        path = os.path.join(self.data_dir, CREDENTIALS_FILE)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                token, password = f.read().split()
            return token, password
        token, password = secrets.token_hex(20), secrets.token_urlsafe(16)
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as f:
            f.write(f"{token} {password}\n")
        return token, password

    def environment(self) -> dict:
        """The server's environment (see ``docs/annotation.md``)."""
        env = {k: v for k, v in os.environ.items() if k not in CLEARED}
        home = os.path.join(self.data_dir, "home")
        os.makedirs(home, exist_ok=True)
        env.update({
            "LABEL_STUDIO_BASE_DATA_DIR": self.data_dir, "HOME": home, "XDG_CONFIG_HOME": home,
            "LABEL_STUDIO_USERNAME": self.user, "LABEL_STUDIO_PASSWORD": self.password,
            "LABEL_STUDIO_USER_TOKEN": self.api_key, "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LOCAL_FILES_SERVING_ENABLED": "true", "LOCAL_FILES_DOCUMENT_ROOT": self.document_root,
            "LATEST_VERSION_CHECK": "false", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "",
            "COLLECT_ANALYTICS": "false", "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "false",
            # Label Studio runs `git describe` in its package folder and writes the answer there when
            # it finds a repository (a virtualenv under a checkout's .activebeam/): none, so it reads
            # its shipped version file and never writes into its (possibly read-only) installation.
            "GIT_DIR": os.devnull,
        })
        return env

    def start(self) -> "LocalLabelStudio":
        binary = find_label_studio()
        log_path = os.path.join(self.data_dir, "label-studio.log")
        with open(log_path, "ab") as log:
            self._process = subprocess.Popen(
                [binary, "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(self.port),
                 "--data-dir", self.data_dir],
                stdout=log, stderr=subprocess.STDOUT, env=self.environment(), preexec_fn=parent_death_signal())
        # Exactly our port and Label Studio's own answer: a busy port makes it silently take the next one.
        wait_for_http(self._process, f"{self.url}/health", self._timeout_s, "Label Studio", log_path,
                      ready=lambda body: b"UP" in body, interval_s=0.5, request_timeout_s=2.0,
                      error=LabelStudioStartError)
        _LOG.info("Label Studio at %s (data in %s)", self.url, self.data_dir)
        return self

    def stop(self):
        """SIGTERM (Label Studio ignores SIGINT when started from a script), then SIGKILL."""
        if self._process is None:
            return
        stop_process(self._process)
        self._process = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
