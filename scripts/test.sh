#!/usr/bin/env bash
# Does all set-up (idempotent), then runs the whole test suite with Bazel.
# Extra arguments go to `bazel test` (e.g. //tests:test_decode).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
export ACTIVEBEAM_HOME="${ACTIVEBEAM_HOME:-$PWD/.activebeam}"
if [ "$#" -eq 0 ]; then set -- //...; fi
exec bazel test "$@"
