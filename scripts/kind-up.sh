#!/usr/bin/env bash
# Create (or reuse) the sa-lab kind cluster and load the lab image into it.
#
#   scripts/kind-up.sh [--name NAME] [--node-image auto|local|upstream]
#                      [--export-to-default] [--skip-image] [--recreate]
#                      [--keep-on-failure]
#
#   --name NAME           cluster name (default: $SA_LAB_KIND_CLUSTER, else sa-lab-kind)
#   --node-image WHICH    local: the node image built on this machine
#                         (scripts/build-kind-node-image.sh), run by rootful podman;
#                         no Docker, no registry, nothing leaves the machine.
#                         upstream: kind's kindest/node image (kind/cluster.yaml),
#                         pulled by Docker.
#                         auto (default; also $SA_LAB_KIND_NODE_IMAGE): upstream
#                         when a Docker engine answers, else local.
#   --export-to-default   also write the cluster into your default kubeconfig
#                         ($KUBECONFIG or ~/.kube/config) and switch to its context
#   --skip-image          do not build and load the lab image (reuse what is loaded)
#   --recreate            delete an existing cluster of that name first
#   --keep-on-failure     keep a cluster this run created even if a later step fails
#
# kind itself is built from its Go module (scripts/install-kind.sh) unless
# KIND names a kind binary. Its kubeconfig is written, mode 0600, to
#   ${SA_LAB_HOME:-${XDG_STATE_HOME:-$HOME/.local/state}/sa-lab}/clusters/<name>/kubeconfig
# and never to ~/.kube/config unless --export-to-default is given. The lab image
# sa-lab-labs:<workspace version> is built (scripts/build-lab-image.sh) and
# loaded into the node. Running it again is safe: an existing cluster is
# reused, its kubeconfig rewritten and the image reloaded. On failure the
# cluster's logs are saved under <state>/logs/kind-<name>/.
#
# With the local node image, the node sits on a podman network of its own
# (internal: no route off it; subnet $SA_LAB_KIND_SUBNET, default 10.89.240.0/24)
# and podman reads kind/containers.conf (through CONTAINERS_CONF). Before
# anything is created, the node, Pod and Service networks are checked against
# the host's routes and resolvers: a collision stops here.
#
# Progress goes to stderr; the kubeconfig path is printed on stdout.
set -o errexit -o nounset -o pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${REPO_ROOT}/scripts/lib.sh"
# shellcheck source-path=SCRIPTDIR source=kind-lib.sh
source "${REPO_ROOT}/scripts/kind-lib.sh"
# The kind release the node image in kind/cluster.yaml was built for. A node
# image is supported only with the kind release that built it.
readonly KIND_VERSION="v0.33.0"

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
  if [[ -z "${KIND:-}" ]]; then
    KIND="$("${REPO_ROOT}/scripts/install-kind.sh")"
  fi
  command -v "${KIND}" >/dev/null 2>&1 ||
    die "kind is not installed (KIND=${KIND})" \
      "build the pinned release: scripts/install-kind.sh (or go install sigs.k8s.io/kind@${KIND_VERSION})"
  local version
  version="$("${KIND}" version 2>/dev/null | awk '{print $2}')"
  if [[ "${version}" != "${KIND_VERSION}" ]]; then
    if [[ "${SA_LAB_KIND_ANY_VERSION:-}" == "1" ]]; then
      warn "kind ${version:-unknown} is not the pinned ${KIND_VERSION}; going on (SA_LAB_KIND_ANY_VERSION=1)"
    else
      die "kind ${version:-unknown} is not the pinned ${KIND_VERSION}" \
        "the node images are built for kind ${KIND_VERSION}:" \
        "scripts/install-kind.sh builds it (or set SA_LAB_KIND_ANY_VERSION=1 to try anyway)"
    fi
  fi
  export KIND
}

# The Kubernetes minor of the kind node image must be the local control plane's.
check_config_minor() {
  local config="${REPO_ROOT}/kind/cluster.yaml" node_minor local_version local_minor
  [[ -f "${config}" ]] || die "missing ${config}"
  node_minor="$(sed -n 's|^[[:space:]]*image:[[:space:]]*kindest/node:v1\.\([0-9]*\)\..*|\1|p' "${config}" | head -n1)"
  local_version="$(sed -n 's|^[[:space:]]*k8s.io/kubernetes \(v[0-9.]*\).*$|\1|p' "${REPO_ROOT}/tools/k8sbin/go.mod" | head -n1)"
  local_minor="$(printf '%s' "${local_version}" | cut -d. -f2)"
  [[ -n "${node_minor}" ]] || die "no kindest/node image in ${config}"
  [[ "${node_minor}" == "${local_minor}" ]] ||
    die "kind/cluster.yaml runs Kubernetes 1.${node_minor} but the local provider pins ${local_version}" \
      "keep both on the same minor"
}

# Picks the node image from WHICH (auto|local|upstream): prints "local" or
# "upstream", a tab, and why.
choose_node_image() {
  case "$1" in
    local | upstream) printf '%s\tasked for (--node-image or SA_LAB_KIND_NODE_IMAGE)\n' "$1" ;;
    auto)
      if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
        printf 'upstream\ta Docker engine answers (--node-image local to build one here)\n'
      else
        printf 'local\tno Docker engine answers here\n'
      fi
      ;;
    *) die "--node-image $1: expected auto, local or upstream" ;;
  esac
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

# cluster_config DIR TEMPLATE: the cluster's own kind config in DIR (TEMPLATE
# with kind/apiserver-patches.yaml, shared by both templates), its
# audit policy (src/audit-policy.yaml, the local provider's) and an empty
# audit log beside it, all 0600: the node mounts them, and sa-lab reads the
# log from DIR/logs as it does a local cluster's. Prints the config's path.
cluster_config() {
  local dir="$1" template="$2"
  install -m 0600 "${REPO_ROOT}/src/audit-policy.yaml" "${dir}/audit-policy.yaml"
  install -d -m 0700 "${dir}/logs"
  [[ -f "${dir}/logs/audit.log" ]] || install -m 0600 /dev/null "${dir}/logs/audit.log"
  {
    sed '/^nodes:/,$d' "${template}"
    cat "${REPO_ROOT}/kind/apiserver-patches.yaml"
    sed -n '/^nodes:/,$p' "${template}"
  } | sed "s|@CLUSTER_DIR@|${dir}|g" >"${dir}/kind-config.yaml"
  printf '%s\n' "${dir}/kind-config.yaml"
}

create_cluster() {
  local name="$1" kubeconfig="$2" node_image="$3" args=() dir
  dir="$(dirname "${kubeconfig}")"
  if [[ "${node_image}" == "local" ]]; then
    local ref
    ref="$("${REPO_ROOT}/scripts/build-kind-node-image.sh")"
    args=(--config "$(cluster_config "${dir}" "${REPO_ROOT}/kind/cluster-local.yaml")" --image "${ref}")
    log "creating kind cluster ${name}: node image ${ref} (built on this machine), podman, network ${NETWORK}"
  else
    args=(--config "$(cluster_config "${dir}" "${REPO_ROOT}/kind/cluster.yaml")")
    log "creating kind cluster ${name}: upstream node image from kind/cluster.yaml (pulled the first time)"
  fi
  CLUSTER_CREATED=1
  local start="${SECONDS}"
  "${KIND}" create cluster --name "${name}" "${args[@]}" --kubeconfig "${kubeconfig}" --wait 5m >&2
  ok "created kind cluster ${name} ($((SECONDS - start)) s)"
}

write_kubeconfig() {
  local name="$1" kubeconfig="$2" node_image="$3" tmp
  tmp="$(mktemp "${kubeconfig}.XXXXXX")"
  "${KIND}" get kubeconfig --name "${name}" >"${tmp}"
  if [[ "${node_image}" == local ]]; then
    # podman forwards no port into an internal network: the host reaches the
    # API server at the node's address on the bridge (in kubeadm's serving
    # certificate, as the advertise address), not at kind's 127.0.0.1 port.
    local ip
    ip="$(node_ip "${name}")"
    [[ -n "${ip}" ]] || die "no address for ${name}-control-plane on network $(node_network "${name}")"
    sed -i "s|^\(\s*server:\s*\)https://127\.0\.0\.1:[0-9]*\s*\$|\1https://${ip}:6443|" "${tmp}"
    grep -q "server: https://${ip}:6443" "${tmp}" || die "could not point the kubeconfig at ${ip}:6443"
  fi
  chmod 0600 "${tmp}"
  mv -f "${tmp}" "${kubeconfig}"
  ok "kubeconfig written to ${kubeconfig} (context kind-${name})"
}

# CoreDNS that answers cluster names only (kind/coredns.yaml), on the local
# node image, where kubeadm's own is turned off.
apply_coredns() {
  local name="$1"
  log "CoreDNS for cluster names only (kind/coredns.yaml: no forwarding)"
  node_kubectl "${name}" apply -f - <"${REPO_ROOT}/kind/coredns.yaml" >/dev/null
  node_kubectl "${name}" --namespace kube-system rollout status deployment/coredns --timeout=180s >/dev/null ||
    die "CoreDNS did not become ready in 180 s" \
      "see: ${ENGINE} exec ${name}-control-plane kubectl --kubeconfig /etc/kubernetes/admin.conf -n kube-system describe pods -l k8s-app=kube-dns"
  ok "CoreDNS ready"
}

# Ready for lab Pods: what the local provider waits for too. Asked through the
# node's own kubectl (--wait watches, no polling), so the host needs no kubectl.
wait_ready() {
  local name="$1" i
  log "waiting for the default ServiceAccount and kube-root-ca.crt in namespace default"
  for i in serviceaccount/default configmap/kube-root-ca.crt; do
    node_kubectl "${name}" --namespace default wait --for=create "${i}" --timeout=120s >/dev/null ||
      die "cluster ${name}: no ${i} in namespace default after 120 s" \
        "is kube-controller-manager running? ${ENGINE} exec ${name}-control-plane crictl ps"
  done
  ok "cluster ${name} is ready for lab Pods"
}

load_image() {
  local name="$1" built tag
  tag="$("${REPO_ROOT}/scripts/build-lab-image.sh" --print-tag)"
  # An OCI archive built here (its path), or an image in Docker's store (its
  # tag). Under the usual umask: this script's 077 would make the image's
  # directories unreadable to the lab's non-root user (exit 127 in the Pod).
  built="$(umask 022 && "${REPO_ROOT}/scripts/build-lab-image.sh")"
  if [[ -f "${built}" ]]; then
    log "loading ${tag} into kind cluster ${name} (kind load image-archive ${built})"
    "${KIND}" load image-archive "${built}" --name "${name}" >&2
  else
    log "loading ${built} into kind cluster ${name} (kind load docker-image)"
    "${KIND}" load docker-image "${built}" --name "${name}" >&2
  fi
  # The node's containerd must now know the name the lab manifests use.
  node_has_image "${name}" "${tag}" ||
    die "${tag} is not in the node's containerd after kind load" \
      "an OCI archive must name the image (annotation io.containerd.image.name): ${built}"
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
    remove_node_network "${CLUSTER_NAME}"
    rm -rf -- "$(cluster_dir "${CLUSTER_NAME}")"
  fi
  return "${rc}"
}

main() {
  local name="${SA_LAB_KIND_CLUSTER:-sa-lab-kind}" export_default=0 skip_image=0 recreate=0
  local which="${SA_LAB_KIND_NODE_IMAGE:-auto}"
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --name)
        [[ $# -ge 2 ]] || die "--name needs a value"
        name="$2"
        shift
        ;;
      --name=*) name="${1#--name=}" ;;
      --node-image)
        [[ $# -ge 2 ]] || die "--node-image needs a value: auto, local or upstream"
        which="$2"
        shift
        ;;
      --node-image=*) which="${1#--node-image=}" ;;
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
  local node_image why
  IFS=$'\t' read -r node_image why < <(choose_node_image "${which}")
  [[ -n "${node_image}" ]] || exit 1
  local dir kubeconfig
  dir="$(cluster_dir "${name}")"
  kubeconfig="${dir}/kubeconfig"
  if [[ "${node_image}" == "local" && "${export_default}" -eq 1 ]]; then
    die "--export-to-default is for the upstream node image" \
      "with the local one, use the cluster's own kubeconfig: export KUBECONFIG=${kubeconfig}"
  fi
  if [[ "${node_image}" == "local" ]]; then
    ok "node image: local, built on this machine (Debian packages, Go modules), run by podman: ${why}"
    use_podman "${name}"
    ensure_podman
  else
    ok "node image: upstream kindest/node (kind/cluster.yaml), run by Docker: ${why}"
    use_docker
    require_engine "kind runs its nodes as Docker containers" \
      "install Docker Engine or Docker Desktop, or use the local node image: --node-image local"
  fi
  require_kind
  CLUSTER_NAME="${name}"
  trap cleanup EXIT
  claim_cluster_dir "${dir}"
  printf '%s\n' "${node_image}" >"${dir}/node-image"

  if kind_cluster_exists "${name}" && [[ "${recreate}" -eq 1 ]]; then
    log "deleting kind cluster ${name} (--recreate)"
    "${KIND}" delete cluster --name "${name}" --kubeconfig "${kubeconfig}" >&2
  fi
  if kind_cluster_exists "${name}"; then
    ok "reusing kind cluster ${name}"
  else
    check_networks "${name}" "${node_image}"
    [[ "${node_image}" != "local" ]] || ensure_node_network "${name}"
    create_cluster "${name}" "${kubeconfig}" "${node_image}"
  fi
  write_kubeconfig "${name}" "${kubeconfig}" "${node_image}"
  if [[ "${node_image}" == "local" ]]; then
    check_no_way_out "${name}"
    apply_coredns "${name}"
    check_pod_no_way_out "${name}"
  fi
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
    echo "kind cluster ${name} is up (node image: ${node_image}). Next:"
    echo "  sa-lab run 01 --provider kind          # a chapter, on kind"
    echo "  SA_LAB_PROVIDER=kind scripts/test.sh   # the e2e suite, on kind"
    echo "  export KUBECONFIG=${kubeconfig}   # kubectl on this cluster"
    echo "  scripts/kind-down.sh --name ${name}    # delete it"
  } >&2
}

if [[ "${BASH_SOURCE[0]}" == "${0}" ]]; then
  main "$@"
fi
