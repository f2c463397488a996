#!/usr/bin/env bash
# Build (or reuse from ~/.cache/kubetune/images/) kubetune's container images as OCI archives, without a
# registry: the pause image, a Debian bookworm base (mmdebstrap), the operator and the trainer image from
# the repository's Dockerfiles (buildah). Cold: minutes; cached: seconds. Import one into a containerd
# with `ctr -n k8s.io images import <archive>` (or kubetune_testenv.images.import_image).
#
#   .ci/build-images.sh            # build what changed
#   .ci/build-images.sh --force    # rebuild all four
#
# Needs root and the Debian packages buildah, mmdebstrap, gcc and libc6-dev (see docs/testing.md, Images);
# the network to the Debian mirror in /etc/apt/sources.list* and to PyPI.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
# Only the standard library is needed, so this works before the project is installed.
PYTHONPATH="${root}/testenv${PYTHONPATH:+:${PYTHONPATH}}" exec "${python}" -m kubetune_testenv images "$@"
