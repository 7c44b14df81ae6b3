#!/usr/bin/env bash
# The main job (the README's first command): build what is missing (the
# Kubernetes binaries from Go modules, cached; sa-lab and every lab binary),
# then run every chapter on a fresh local cluster and tear it down. Each
# build step says how long it took (a cold machine: about 12 min on 2 cores).
#
#   scripts/tour.sh            the tour, as tables
#   scripts/tour.sh -o json    the same, as JSON on stdout
set -o errexit -o nounset -o pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

main() {
  cd "${REPO_ROOT}"
  local start="${SECONDS}"
  echo " • Kubernetes binaries (built once from Go modules, then cached)" >&2
  SA_LAB_K8S_BIN="$(scripts/install-k8s.sh)"
  export SA_LAB_K8S_BIN
  echo " ✓ Kubernetes binaries ($((SECONDS - start)) s)" >&2
  start="${SECONDS}"
  echo " • Building sa-lab and the lab binaries (cold: about 4 min on 2 cores)" >&2
  cargo build --workspace --bins --locked --quiet
  echo " ✓ sa-lab and the lab binaries ($((SECONDS - start)) s)" >&2
  exec target/debug/sa-lab tour "$@"
}

main "$@"
