#!/usr/bin/env bash
# Build the helm CLI from the Go module proxy and cache it, for the chart's unit tests
# (tests/unit/charts/ run `helm lint` and `helm template`).
#
#   .ci/build-helm.sh            # builds the pinned version, prints the binary's path last
#   HELM_VERSION=v3.21.4 .ci/build-helm.sh
#
# The binary lands in ~/.cache/kubetune/helm/<version>/helm; a second run is a no-op.
# helm.sh/helm/v3 has no replace directives, so `go install module@version` builds it
# straight from the proxy. The build is niced and single-threaded by default because CI
# machines here have 2 cores shared with other builds (about 10 minutes of one core).
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
CACHE_ROOT="${KUBETUNE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubetune}"
DEST_DIR="$CACHE_ROOT/helm/$HELM_VERSION"
DEST="$DEST_DIR/helm"
JOBS="${BUILD_JOBS:-1}"

if [[ -x "$DEST" ]]; then
    echo "helm $HELM_VERSION already built: $DEST" >&2
    echo "$DEST"
    exit 0
fi

command -v go >/dev/null || { echo "error: go is not on PATH; install Go >= 1.24 to build helm" >&2; exit 1; }

mkdir -p "$DEST_DIR"
# go install writes to GOBIN; use a private temporary GOBIN and rename into place, so an
# interrupted build never leaves a half-written binary at the cached path.
TMP_BIN="$(mktemp -d "$DEST_DIR/.build.XXXXXX")"
trap 'rm -rf "$TMP_BIN"' EXIT

echo "building helm $HELM_VERSION with $(go version | cut -d' ' -f3) (-p $JOBS, GOMAXPROCS=$JOBS) ..." >&2
start=$(date +%s)
GOBIN="$TMP_BIN" GOFLAGS=-mod=mod GOTOOLCHAIN=local GOMAXPROCS="$JOBS" CGO_ENABLED=0 \
    nice -n 19 go install -p "$JOBS" -trimpath -ldflags="-s -w" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
mv "$TMP_BIN/helm" "$DEST.partial"
mv "$DEST.partial" "$DEST"
echo "built helm $HELM_VERSION in $(( $(date +%s) - start ))s: $("$DEST" version --short)" >&2
echo "$DEST"
