#!/usr/bin/env bash
# Does all set-up (idempotent), then runs the `mine` job on the bundled real media with its
# embedded defaults (local runner, embedded mongod, the EfficientNet-Lite0 backbone and NanoDet-g
# detector that set-up converted; about 2 minutes on the bundled media).
# Extra arguments go to the job (see `python -m beam_pipelines.mine --help`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
export ACTIVEBEAM_HOME="${ACTIVEBEAM_HOME:-$PWD/.activebeam}" NO_GCE_CHECK=true
exec .venv/bin/python -m beam_pipelines.mine "$@"
