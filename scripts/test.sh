#!/usr/bin/env bash
# The test command (the README's): builds everything the tests need, then
# runs every test: unit tests, e2e tests against fresh local clusters (real
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler + the sandbox
# node), the book checks (also in headless Chromium), shellcheck on every
# script, and a check that the book's transcripts still match what
# `sa-lab run` prints; then, as root, every chapter's tables again with the
# kubelet node (the real kubelet, containerd, runc, CNI and kube-proxy), one
# cluster at a time.
#
#   scripts/test.sh                     everything, on local clusters
#   scripts/test.sh -- --test cluster   extra arguments go to `cargo test`
#   SA_LAB_PROVIDER=kind scripts/test.sh
#       the provider-agnostic e2e tests (every chapter table, the preflight)
#       on the kind cluster scripts/kind-up.sh made, plus the tests that need
#       no cluster. The local-only tests (cluster lifecycle, sandbox node, CLI
#       on local clusters) do not apply there and are not run.
set -o errexit -o nounset -o pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${REPO_ROOT}/scripts/lib.sh"

log() { printf '\n=== %s\n' "$*" >&2; }

main() {
  cd "${REPO_ROOT}"
  if [[ "${1:-}" == "--" ]]; then shift; fi

  if [[ "${SA_LAB_PROVIDER:-local}" != "kind" ]]; then
    log "Kubernetes binaries (built from Go modules, cached per version)"
    local k8s_bin
    k8s_bin="$(scripts/install-k8s.sh)"
    export SA_LAB_K8S_BIN="${k8s_bin}"
    if kubelet_node_possible; then
      log "The kubelet node's binaries (containerd, CNI, kubelet, kube-proxy, pause; cached per version)"
      SA_LAB_NODE_BIN="$(scripts/install-node-bins.sh)"
      export SA_LAB_NODE_BIN
    else
      # The one opt-out: without root the kubelet node cannot run at all.
      warn "not root (with CAP_SYS_ADMIN, CAP_NET_ADMIN): the kubelet node's tests are skipped (CI runs them)"
      export SA_LAB_SKIP_KUBELET=1
    fi
    if [[ "$(id -u)" == 0 && -z "${SA_LAB_FAKETIME_LIB:-}" ]]; then
      # The clock-jump fault test moves the sandbox node's clock with it.
      require_debian_packages "the clock-jump fault test (e2e/tests/faults_host.rs) uses libfaketime" \
        faketime=faketime
    fi
  fi

  log "mdBook"
  MDBOOK="$(scripts/install-mdbook.sh)"
  export MDBOOK

  log "shellcheck"
  scripts/lint-scripts.sh

  log "Book: diagrams drawn from their sources, every page in headless Chromium"
  scripts/render-diagrams.sh --check
  scripts/check-book.sh

  log "Building sa-lab and every lab binary"
  cargo build --workspace --bins --locked

  if [[ "${SA_LAB_PROVIDER:-local}" == "kind" ]]; then
    log "Tests on kind (cluster ${SA_LAB_KIND_CLUSTER:-sa-lab-kind}; chapters share it, so one at a time)"
    cargo test --workspace --locked --lib --bins
    cargo test -p sa-lab-e2e --locked --test book --test manifests --test kind_scripts --test provider \
      --test chapter_01 --test chapter_02 --test chapter_03 --test chapter_04 \
      --test chapter_05 --test chapter_06 --test chapter_07 --test chapter_08 --test exercises \
      "$@" -- --test-threads=1
    return
  fi

  # Local clusters get their own state dir, so tests never touch a learner's.
  SA_LAB_HOME="$(mktemp -d "${TMPDIR:-/tmp}/sa-lab-test.XXXXXX")"
  export SA_LAB_HOME
  trap 'cleanup' EXIT

  export SA_LAB_QUIET=1

  log "Tests (unit + e2e on local clusters + book)"
  SA_LAB_NODE=sandbox cargo test --workspace --locked "$@" -- --test-threads="${SA_LAB_TEST_THREADS:-2}"

  if [[ "${SA_LAB_SKIP_KUBELET:-0}" != "1" ]]; then
    log "Every chapter's tables with the kubelet node (one kubelet node per host: one at a time)"
    SA_LAB_NODE=kubelet cargo test -p sa-lab-e2e --locked --test chapter_01 --test chapter_02 \
      --test chapter_03 --test chapter_04 --test chapter_05 --test chapter_06 --test chapter_07 \
      --test chapter_08 "$@" -- --test-threads=1
  fi

  if [[ $# -eq 0 ]]; then
    log "The book's transcripts match what sa-lab prints today"
    SA_LAB_NO_BUILD=1 scripts/capture-transcripts.sh --check
  fi
}

# Stops any cluster a killed test run left behind, then removes the state.
cleanup() {
  local dir name
  for dir in "${SA_LAB_HOME}"/clusters/*/; do
    [[ -d "${dir}" ]] || continue
    name="$(basename "${dir}")"
    target/debug/sa-lab down --name "${name}" >/dev/null 2>&1 || true
  done
  rm -rf "${SA_LAB_HOME}"
}

main "$@"
