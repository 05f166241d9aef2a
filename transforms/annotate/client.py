"""A small client of Label Studio's REST API (``requests``), for the calls activebeam makes.

The official ``label-studio-sdk`` covers the same calls but pins its own ``pydantic`` and
``httpx``; these ten endpoints do not need it::

    client = LabelStudioClient("http://127.0.0.1:8080", api_key)
    project = client.ensure_project("cams-week-12", label_config)      # created or updated
    client.import_tasks(project["id"], tasks)
    for task in client.tasks(project["id"]):                           # every page
        task["annotations"]

Authentication is the legacy ``Authorization: Token KEY`` header (a personal access token
works the same way on Label Studio 1.23). Errors raise :class:`LabelStudioError` with the
method, path, status and the start of the server's answer. References: Label Studio's API
reference (https://api.labelstud.io/api-reference/introduction/getting-started).
"""
import os
import time
from typing import Dict, Iterator, List, Optional

DEFAULT_TIMEOUT_S = 60.0
PAGE_SIZE = 100


class LabelStudioError(RuntimeError):
    """A request Label Studio refused or did not answer."""


class LabelStudioClient:
    """Label Studio's REST API at ``url`` with an API token.

    Parameters
    ----------
    url : str
        Base URL, e.g. ``http://127.0.0.1:8080``.
    api_key : str
        An access token of a user of the organisation.
    timeout_s : float
        Per-request timeout; connection failures are retried ``attempts`` times with backoff.
    """

    def __init__(self, url: str, api_key: str, timeout_s: float = DEFAULT_TIMEOUT_S, attempts: int = 3):
        import requests
        if not url or not url.startswith(("http://", "https://")):
            raise ValueError(f"url must be an http(s) URL, got {url!r}")
        if not api_key:
            raise ValueError("api_key must be a Label Studio access token")
        self.url = url.rstrip("/")
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Token {api_key}"
        self._session.trust_env = False  # never through a proxy: Label Studio is where we say
        self._timeout_s = timeout_s
        self._attempts = attempts

    def request(self, method: str, path: str, **kwargs):
        """JSON of ``method path`` (``None`` for an empty answer); :class:`LabelStudioError` on failure."""
        import requests
        for attempt in range(self._attempts):
            try:
                response = self._session.request(method, self.url + path, timeout=self._timeout_s, **kwargs)
                break
            except requests.ConnectionError as e:
                if attempt + 1 == self._attempts:
                    raise LabelStudioError(f"Label Studio at {self.url} unreachable ({method} {path}): {e}") from e
                time.sleep(0.5 * 2 ** attempt)
        if response.status_code >= 400:
            raise LabelStudioError(f"Label Studio refused {method} {path}: HTTP {response.status_code} "
                                   f"{response.text[:300]}")
        return response.json() if response.content else None

    def health(self) -> bool:
        try:
            return (self.request("GET", "/health") or {}).get("status") == "UP"
        except LabelStudioError:
            return False

    # -- projects ------------------------------------------------------------------------------
    def projects(self) -> List[dict]:
        out, page = [], 1
        while True:
            answer = self.request("GET", "/api/projects", params={"page": page, "page_size": PAGE_SIZE})
            if isinstance(answer, list):
                return answer
            out.extend(answer.get("results") or [])
            if not answer.get("next"):
                return out
            page += 1

    def project_by_title(self, title: str) -> Optional[dict]:
        found = [p for p in self.projects() if p.get("title") == title]
        return min(found, key=lambda p: p["id"]) if found else None

    def ensure_project(self, title: str, label_config: str, **settings) -> dict:
        """The project named ``title`` with ``label_config`` (and ``settings``, e.g.
        ``maximum_annotations``): created, or updated when it exists with other values."""
        project = self.project_by_title(title)
        wanted = dict(settings, label_config=label_config)
        if project is None:
            return self.request("POST", "/api/projects", json=dict(wanted, title=title))
        changed = {k: v for k, v in wanted.items() if project.get(k) != v}
        if changed:
            project = self.request("PATCH", f"/api/projects/{project['id']}", json=changed)
        return project

    def ensure_local_storage(self, project_id: int, path: str) -> dict:
        """A local-files storage of the project on ``path`` (a folder under the server's
        ``LOCAL_FILES_DOCUMENT_ROOT``), so that ``/data/local-files/?d=`` URLs under it are served."""
        for storage in self.request("GET", "/api/storages/localfiles", params={"project": project_id}) or []:
            if storage.get("path") == path:
                return storage
        return self.request("POST", "/api/storages/localfiles",
                            json={"project": project_id, "path": path, "use_blob_urls": False,
                                  "title": "activebeam frames"})

    def upload_file(self, project_id: int, path: str) -> str:
        """Uploads a picture into the project's storage on the server (its import API without
        creating a task: ``commit_to_project=false``); returns the URL tasks refer to it by
        (``/data/upload/<project>/<name>``), served by Label Studio to logged-in users."""
        with open(path, "rb") as f:
            answer = self.request("POST", f"/api/projects/{project_id}/import",
                                  params={"commit_to_project": "false"},
                                  files={"file": (os.path.basename(path), f, "image/png")})
        (upload_id,) = answer["file_upload_ids"]
        stored = self.request("GET", f"/api/import/file-upload/{upload_id}")["file"]
        return "/data/" + stored.lstrip("/")

    def file_uploads(self, project_id: int) -> List[dict]:
        """The files uploaded into the project (``{id, file, size}``)."""
        return self.request("GET", f"/api/projects/{project_id}/file-uploads", params={"all": "true"}) or []

    # -- tasks ---------------------------------------------------------------------------------
    def import_tasks(self, project_id: int, tasks: List[dict]) -> dict:
        return self.request("POST", f"/api/projects/{project_id}/import", json=tasks)

    def tasks(self, project_id: int) -> Iterator[dict]:
        """Every task of the project, with its annotations and predictions."""
        page = 1
        while True:
            try:
                answer = self.request("GET", "/api/tasks", params={
                    "project": project_id, "fields": "all", "page": page, "page_size": PAGE_SIZE})
            except LabelStudioError as e:
                if "HTTP 404" in str(e) and page > 1:  # past the last page
                    return
                raise
            tasks = answer.get("tasks", []) if isinstance(answer, dict) else answer
            yield from tasks
            total = answer.get("total", 0) if isinstance(answer, dict) else len(tasks)
            if not tasks or page * PAGE_SIZE >= total:
                return
            page += 1

    def update_task(self, task_id: int, **fields) -> dict:
        return self.request("PATCH", f"/api/tasks/{task_id}", json=fields)

    def create_annotation(self, task_id: int, result: List[dict], lead_time: float = 0.0,
                          ground_truth: bool = False) -> dict:
        return self.request("POST", f"/api/tasks/{task_id}/annotations",
                            json={"result": result, "lead_time": lead_time, "was_cancelled": False,
                                  "ground_truth": ground_truth})

    def export(self, project_id: int) -> List[dict]:
        """The project's annotated tasks as Label Studio's JSON export."""
        return self.request("GET", f"/api/projects/{project_id}/export", params={"exportType": "JSON"})

    def users(self) -> Dict[int, str]:
        """``{user id: e-mail}`` of the organisation."""
        answer = self.request("GET", "/api/users")
        users = answer.get("results", []) if isinstance(answer, dict) else answer
        return {int(u["id"]): u.get("email") or u.get("username") for u in users}
