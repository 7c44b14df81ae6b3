#!/usr/bin/env bash
# The main job (the README's first command): build what is missing (the
# Kubernetes binaries from Go modules, cached; sa-lab and every lab binary;
# the two side by side, so neither waits on the other's downloads and
# links), then run every chapter on a fresh local cluster and tear it down.
# Each build says how long it took (a cold machine: about 8 min on 2 cores).
# kubectl is not built here (the tour does not run it): the first `sa-lab up`
# builds it, in about 30 s.
#
#   scripts/tour.sh            the tour, as tables
#   scripts/tour.sh -o json    the same, as JSON on stdout
set -o errexit -o nounset -o pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${REPO_ROOT}/scripts/lib.sh"

K8S_PID=""
K8S_OUT=""

# Stops the Kubernetes build if it still runs (Ctrl-C, or sa-lab's build
# failed): it is its own process group, so the Go compiler goes with it.
stop_k8s_build() {
  if [[ -n "${K8S_PID}" ]]; then
    kill -TERM -- "-${K8S_PID}" 2>/dev/null || true
    wait "${K8S_PID}" 2>/dev/null || true
  fi
  if [[ -n "${K8S_OUT}" ]]; then rm -f "${K8S_OUT}"; fi
}

main() {
  cd "${REPO_ROOT}"
  local start="${SECONDS}"
  trap stop_k8s_build EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  K8S_OUT="$(mktemp)"
  echo " • Kubernetes binaries (built once from Go modules, then cached) and, beside them," >&2
  echo "   sa-lab and the lab binaries (cold: about 8 min for both on 2 cores)" >&2
  # Its own session: a Ctrl-C reaches this script, whose trap stops it.
  setsid scripts/install-k8s.sh --no-kubectl >"${K8S_OUT}" &
  K8S_PID=$!
  cargo build --workspace --bins --locked --quiet
  echo " ✓ sa-lab and the lab binaries ($((SECONDS - start)) s)" >&2
  if ! wait "${K8S_PID}"; then
    K8S_PID=""
    die "building the Kubernetes binaries failed (its output is above)" \
      "run scripts/install-k8s.sh --no-kubectl alone to see it again"
  fi
  K8S_PID=""
  echo " ✓ Kubernetes binaries ($((SECONDS - start)) s)" >&2
  SA_LAB_K8S_BIN="$(cat "${K8S_OUT}")"
  export SA_LAB_K8S_BIN
  stop_k8s_build
  trap - EXIT INT TERM
  exec target/debug/sa-lab tour "$@"
}

main "$@"
