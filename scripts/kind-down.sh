#!/usr/bin/env bash
# Delete the sa-lab kind cluster and its sa-lab state. Safe to run twice.
#
#   scripts/kind-down.sh [--name NAME] [--no-logs]
#
#   --name NAME   cluster name (default: $SA_LAB_KIND_CLUSTER, else sa-lab-kind)
#   --no-logs     do not save the cluster's logs before deleting it
#
# Before deleting, the cluster's logs are saved (kind export logs) under
#   ${SA_LAB_HOME:-${XDG_STATE_HOME:-$HOME/.local/state}/sa-lab}/logs/kind-<name>/
# Then the kind cluster is deleted, its context removed from the default
# kubeconfig if scripts/kind-up.sh --export-to-default put it there, and
# <state>/clusters/<name> removed (only if scripts/kind-up.sh made it: a local
# provider cluster of the same name is never touched).
set -o errexit -o nounset -o pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${REPO_ROOT}/scripts/lib.sh"
KIND="${KIND:-kind}"
DOCKER="${DOCKER:-docker}"

CLUSTER_NAME=""
CLEANED_UP=0

require_tools() {
  command -v "${KIND}" >/dev/null 2>&1 ||
    die "kind is not installed: nothing to delete with (see ${REPO_ROOT}/scripts/kind-up.sh --help)"
  require_engine "kind clusters are Docker containers" \
    "install Docker Engine or Docker Desktop, then run this script again"
}

is_kind_dir() {
  local dir="$1"
  [[ -f "${dir}/provider" && "$(cat "${dir}/provider")" == "kind" ]]
}

# Idempotent; on a failed run, says what may be left behind.
cleanup() {
  local rc=$?
  [[ "${CLEANED_UP}" -eq 0 ]] || return 0
  CLEANED_UP=1
  if [[ "${rc}" -ne 0 && -n "${CLUSTER_NAME}" ]]; then
    warn "kind-down did not finish; check: ${KIND} get clusters, and $(cluster_dir "${CLUSTER_NAME}")"
  fi
  return "${rc}"
}

main() {
  local name="${SA_LAB_KIND_CLUSTER:-sa-lab-kind}" logs=1
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --name)
        [[ $# -ge 2 ]] || die "--name needs a value"
        name="$2"
        shift
        ;;
      --name=*) name="${1#--name=}" ;;
      --no-logs) logs=0 ;;
      -h | --help)
        usage
        return 0
        ;;
      *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
  done
  [[ "${name}" =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]] ||
    die "invalid cluster name '${name}': use lower-case letters, digits and '-'"
  umask 077
  require_tools
  CLUSTER_NAME="${name}"
  trap cleanup EXIT

  local dir
  dir="$(cluster_dir "${name}")"
  if kind_cluster_exists "${name}"; then
    [[ "${logs}" -eq 0 ]] || save_kind_logs "${name}"
    log "deleting kind cluster ${name}"
    if is_kind_dir "${dir}"; then
      "${KIND}" delete cluster --name "${name}" --kubeconfig "${dir}/kubeconfig" >&2
    else
      "${KIND}" delete cluster --name "${name}" >&2
    fi
    ok "deleted kind cluster ${name}"
  else
    ok "no kind cluster named ${name}"
  fi

  if is_kind_dir "${dir}"; then
    if [[ -f "${dir}/exported-to-default" ]]; then
      # kind removes the cluster's user, cluster and context from the default
      # kubeconfig, and does nothing if they are not there.
      "${KIND}" delete cluster --name "${name}" >/dev/null 2>&1 || true
      ok "removed context kind-${name} from your default kubeconfig"
    fi
    rm -rf -- "${dir}"
    ok "removed ${dir}"
  elif [[ -d "${dir}" ]]; then
    warn "left ${dir} alone: it is not a kind cluster's (sa-lab down --name ${name} removes a local one)"
  fi
}

if [[ "${BASH_SOURCE[0]}" == "${0}" ]]; then
  main "$@"
fi
