#!/usr/bin/env bash
# Build (or reuse) the pinned test control plane binaries: etcd, kube (apiserver, controller-manager,
# scheduler, kubectl in one multi-call binary) and kwok. Needs Go >= 1.26 and the Go module proxy.
# Usage: testenv/build-binaries.sh [--force] [--print-dir]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
# Only the standard library is needed, so this works before the project is installed.
PYTHONPATH="${here}${PYTHONPATH:+:${PYTHONPATH}}" exec "${python}" -m kubetune_testenv build "$@"
