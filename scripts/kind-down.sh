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
#
# With the local node image (podman), the node's podman network goes too, and
# the script counts what podman still holds of the cluster (containers,
# volumes, networks): anything left fails the run. The node image stays: it
# is the cache scripts/kind-up.sh reuses (podman rmi it to free the space).
set -o errexit -o nounset -o pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${REPO_ROOT}/scripts/lib.sh"
# shellcheck source-path=SCRIPTDIR source=kind-lib.sh
source "${REPO_ROOT}/scripts/kind-lib.sh"

CLUSTER_NAME=""
CLEANED_UP=0

# The engine that runs cluster NAME: what kind-up recorded, else podman if
# it holds the cluster's node, else Docker.
engine_of() {
  local name="$1" dir
  dir="$(cluster_dir "${name}")"
  if [[ -f "${dir}/node-image" ]]; then
    [[ "$(cat "${dir}/node-image")" == local ]] && echo podman || echo docker
  elif command -v podman >/dev/null 2>&1 &&
    [[ -n "$(podman ps -a -q --filter "label=io.x-k8s.kind.cluster=${name}" 2>/dev/null)" ]]; then
    echo podman
  else
    echo docker
  fi
}

require_tools() {
  local name="$1"
  if [[ -z "${KIND:-}" ]]; then
    KIND="$("${REPO_ROOT}/scripts/install-kind.sh" --print)"
    [[ -x "${KIND}" ]] || KIND="$(command -v kind || true)"
  fi
  [[ -n "${KIND}" && -x "${KIND}" ]] ||
    die "kind is not installed: nothing to delete with (scripts/install-kind.sh builds it)"
  export KIND
  if [[ "$(engine_of "${name}")" == podman ]]; then
    use_podman "${name}"
  else
    use_docker
    require_engine "kind clusters are Docker containers" \
      "install Docker Engine or Docker Desktop, then run this script again"
  fi
}

# After a podman cluster is gone: its network, then a count of what is left.
check_podman_leftovers() {
  local name="$1" line left=()
  remove_node_network "${name}"
  release_lib_modules
  while read -r line; do
    [[ "${line%% *}" -eq 0 ]] || left+=("${line}")
  done < <(leftovers "${name}")
  [[ ${#left[@]} -eq 0 ]] ||
    die "podman still holds ${left[*]} of kind cluster ${name}" \
      "see: podman ps -a, podman volume ls, podman network ls"
  ok "nothing left of ${name}: 0 containers, 0 volumes, 0 networks (the node image stays cached)"
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
  require_tools "${name}"
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
  [[ "${ENGINE}" != podman ]] || check_podman_leftovers "${name}"

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
