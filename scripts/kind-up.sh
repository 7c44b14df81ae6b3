#!/usr/bin/env bash
# Create (or reuse) the sa-lab kind cluster and load the lab image into it.
#
#   scripts/kind-up.sh [--name NAME] [--export-to-default] [--skip-image]
#                      [--recreate] [--keep-on-failure]
#
#   --name NAME           cluster name (default: $SA_LAB_KIND_CLUSTER, else sa-lab-kind)
#   --export-to-default   also write the cluster into your default kubeconfig
#                         ($KUBECONFIG or ~/.kube/config) and switch to its context
#   --skip-image          do not build and load the lab image (reuse what is loaded)
#   --recreate            delete an existing cluster of that name first
#   --keep-on-failure     keep a cluster this run created even if a later step fails
#
# The cluster comes from kind/cluster.yaml (Kubernetes and kind versions pinned
# there and below). Its kubeconfig is written, mode 0600, to
#   ${SA_LAB_HOME:-${XDG_STATE_HOME:-$HOME/.local/state}/sa-lab}/clusters/<name>/kubeconfig
# and never to ~/.kube/config unless --export-to-default is given. The lab image
# sa-lab-labs:<workspace version> is built (scripts/build-lab-image.sh) and
# loaded with `kind load docker-image`. Running it again is safe: an existing
# cluster is reused, its kubeconfig rewritten and the image reloaded.
# On failure the cluster's logs are saved under <state>/logs/kind-<name>/.
#
# Progress goes to stderr; the kubeconfig path is printed on stdout.
set -o errexit -o nounset -o pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${REPO_ROOT}/scripts/lib.sh"
# The kind release the node image in kind/cluster.yaml was built for. A node
# image is supported only with the kind release that built it.
readonly KIND_VERSION="v0.33.0"
readonly KIND_CONFIG="${REPO_ROOT}/kind/cluster.yaml"
KIND="${KIND:-kind}"
DOCKER="${DOCKER:-docker}"

# Set by main, read by cleanup.
CLUSTER_NAME=""
CLUSTER_CREATED=0
KEEP_ON_FAILURE=0
SUCCEEDED=0
CLEANED_UP=0

check_name() {
  # kind's own rule for cluster names (they become container and context names).
  [[ "$1" =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]] ||
    die "invalid cluster name '$1': use lower-case letters, digits and '-'"
}

require_kind() {
  command -v "${KIND}" >/dev/null 2>&1 ||
    die "kind is not installed" \
      "install the pinned release: go install sigs.k8s.io/kind@${KIND_VERSION}" \
      "(or download ${KIND_VERSION} from the kind releases page), then run this again"
  local version
  version="$("${KIND}" version 2>/dev/null | awk '{print $2}')"
  if [[ "${version}" != "${KIND_VERSION}" ]]; then
    if [[ "${SA_LAB_KIND_ANY_VERSION:-}" == "1" ]]; then
      warn "kind ${version:-unknown} is not the pinned ${KIND_VERSION}; going on (SA_LAB_KIND_ANY_VERSION=1)"
    else
      die "kind ${version:-unknown} is not the pinned ${KIND_VERSION}" \
        "the node image in kind/cluster.yaml is built for kind ${KIND_VERSION}:" \
        "go install sigs.k8s.io/kind@${KIND_VERSION} (or set SA_LAB_KIND_ANY_VERSION=1 to try anyway)"
    fi
  fi
}

# The Kubernetes minor of the kind node image must be the local control plane's.
check_config_minor() {
  [[ -f "${KIND_CONFIG}" ]] || die "missing ${KIND_CONFIG}"
  local node_minor local_version local_minor
  node_minor="$(sed -n 's|^[[:space:]]*image:[[:space:]]*kindest/node:v1\.\([0-9]*\)\..*|\1|p' "${KIND_CONFIG}" | head -n1)"
  local_version="$(sed -n 's|^[[:space:]]*k8s.io/kubernetes \(v[0-9.]*\).*$|\1|p' "${REPO_ROOT}/tools/k8sbin/go.mod" | head -n1)"
  local_minor="$(printf '%s' "${local_version}" | cut -d. -f2)"
  [[ -n "${node_minor}" ]] || die "no kindest/node image in ${KIND_CONFIG}"
  [[ "${node_minor}" == "${local_minor}" ]] ||
    die "kind/cluster.yaml runs Kubernetes 1.${node_minor} but the local provider pins ${local_version}" \
      "keep both on the same minor"
}

# A clusters/<name> directory that is not ours belongs to the local provider:
# never write into it (its `down` removes the whole directory).
claim_cluster_dir() {
  local dir="$1"
  if [[ -d "${dir}" && -n "$(ls -A "${dir}")" ]]; then
    [[ -f "${dir}/provider" && "$(cat "${dir}/provider")" == "kind" ]] ||
      die "${dir} holds another sa-lab cluster named ${CLUSTER_NAME} (not a kind one)" \
        "pick another name: scripts/kind-up.sh --name ${CLUSTER_NAME}-kind"
  fi
  mkdir -p "$(state_dir)/clusters"
  chmod 0700 "$(state_dir)"
  mkdir -p "${dir}"
  chmod 0700 "${dir}"
  printf 'kind\n' >"${dir}/provider"
}

create_cluster() {
  local name="$1" kubeconfig="$2"
  log "creating kind cluster ${name} from kind/cluster.yaml (pulls the node image the first time)"
  CLUSTER_CREATED=1
  "${KIND}" create cluster --name "${name}" --config "${KIND_CONFIG}" \
    --kubeconfig "${kubeconfig}" --wait 5m >&2
  ok "created kind cluster ${name}"
}

write_kubeconfig() {
  local name="$1" kubeconfig="$2" tmp
  tmp="$(mktemp "${kubeconfig}.XXXXXX")"
  "${KIND}" get kubeconfig --name "${name}" >"${tmp}"
  chmod 0600 "${tmp}"
  mv -f "${tmp}" "${kubeconfig}"
  ok "kubeconfig written to ${kubeconfig} (context kind-${name})"
}

# Ready for lab Pods: what the local provider waits for too. Asked through the
# node's own kubectl, so the host needs no kubectl.
wait_ready() {
  local name="$1" node="${1}-control-plane" i
  log "waiting for the default ServiceAccount and kube-root-ca.crt in namespace default"
  for ((i = 0; i < 120; i++)); do
    if "${DOCKER}" exec "${node}" kubectl --kubeconfig /etc/kubernetes/admin.conf \
      get --namespace default serviceaccount/default configmap/kube-root-ca.crt >/dev/null 2>&1; then
      ok "cluster ${name} is ready for lab Pods"
      return 0
    fi
    sleep 1
  done
  die "cluster ${name}: no default ServiceAccount or kube-root-ca.crt after 120 s" \
    "is kube-controller-manager running? docker exec ${node} crictl ps"
}

load_image() {
  local name="$1" tag
  tag="$("${REPO_ROOT}/scripts/build-lab-image.sh" --docker)"
  log "loading ${tag} into kind cluster ${name}"
  "${KIND}" load docker-image "${tag}" --name "${name}" >&2
  ok "loaded ${tag} (lab Pods use imagePullPolicy: IfNotPresent, so the kubelet uses it)"
}

export_to_default() {
  local name="$1"
  "${KIND}" export kubeconfig --name "${name}" >&2
  printf 'yes\n' >"$(cluster_dir "${name}")/exported-to-default"
  ok "exported context kind-${name} to your default kubeconfig (${KUBECONFIG:-~/.kube/config})"
}

# Idempotent: runs once, on any exit.
cleanup() {
  local rc=$?
  [[ "${CLEANED_UP}" -eq 0 ]] || return 0
  CLEANED_UP=1
  if [[ "${SUCCEEDED}" -eq 1 || -z "${CLUSTER_NAME}" ]]; then
    return 0
  fi
  local exists=0
  if kind_cluster_exists "${CLUSTER_NAME}"; then
    exists=1
    save_kind_logs "${CLUSTER_NAME}"
  fi
  if [[ "${CLUSTER_CREATED}" -eq 1 && "${KEEP_ON_FAILURE}" -eq 0 ]]; then
    if [[ "${exists}" -eq 1 ]]; then
      warn "deleting the half-made cluster ${CLUSTER_NAME} (--keep-on-failure keeps it)"
      "${KIND}" delete cluster --name "${CLUSTER_NAME}" \
        --kubeconfig "$(cluster_dir "${CLUSTER_NAME}")/kubeconfig" >/dev/null 2>&1 || true
    fi
    rm -rf -- "$(cluster_dir "${CLUSTER_NAME}")"
  fi
  return "${rc}"
}

main() {
  local name="${SA_LAB_KIND_CLUSTER:-sa-lab-kind}" export_default=0 skip_image=0 recreate=0
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --name)
        [[ $# -ge 2 ]] || die "--name needs a value"
        name="$2"
        shift
        ;;
      --name=*) name="${1#--name=}" ;;
      --export-to-default) export_default=1 ;;
      --skip-image) skip_image=1 ;;
      --recreate) recreate=1 ;;
      --keep-on-failure) KEEP_ON_FAILURE=1 ;;
      -h | --help)
        usage
        return 0
        ;;
      *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
  done
  check_name "${name}"
  umask 077

  check_config_minor
  require_engine "kind runs its nodes as Docker containers" \
    "install Docker Engine or Docker Desktop; without Docker use the local provider: sa-lab up"
  require_kind

  local dir kubeconfig
  dir="$(cluster_dir "${name}")"
  kubeconfig="${dir}/kubeconfig"
  CLUSTER_NAME="${name}"
  trap cleanup EXIT
  claim_cluster_dir "${dir}"

  if kind_cluster_exists "${name}" && [[ "${recreate}" -eq 1 ]]; then
    log "deleting kind cluster ${name} (--recreate)"
    "${KIND}" delete cluster --name "${name}" --kubeconfig "${kubeconfig}" >&2
  fi
  if kind_cluster_exists "${name}"; then
    ok "reusing kind cluster ${name}"
  else
    create_cluster "${name}" "${kubeconfig}"
  fi
  write_kubeconfig "${name}" "${kubeconfig}"
  wait_ready "${name}"
  if [[ "${skip_image}" -eq 0 ]]; then
    load_image "${name}"
  fi
  if [[ "${export_default}" -eq 1 ]]; then
    export_to_default "${name}"
  fi
  SUCCEEDED=1

  printf '%s\n' "${kubeconfig}"
  {
    echo
    echo "kind cluster ${name} is up. Next:"
    echo "  sa-lab run 01 --provider kind          # a chapter, on kind"
    echo "  SA_LAB_PROVIDER=kind scripts/test.sh   # the e2e suite, on kind"
    echo "  export KUBECONFIG=${kubeconfig}   # kubectl on this cluster"
    echo "  scripts/kind-down.sh --name ${name}    # delete it"
  } >&2
}

if [[ "${BASH_SOURCE[0]}" == "${0}" ]]; then
  main "$@"
fi
