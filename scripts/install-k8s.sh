#!/usr/bin/env bash
# Build the Kubernetes control-plane binaries sa-lab's local provider runs
# (kube-apiserver, kube-controller-manager, kube-scheduler as one binary,
# sa-lab-control-plane, and links to it; kubectl; etcd) from their Go
# modules, and cache them per version. Builds only what is
# missing; prints the bin directory on stdout when done.
#
#   scripts/install-k8s.sh               build into the cache if needed
#   scripts/install-k8s.sh --no-kubectl  the cluster's binaries only (the
#                                        tour; kubectl is built on first
#                                        `sa-lab up`, about 30 s then)
#   scripts/install-k8s.sh --print       print the bin dir, build nothing
#
# Versions are pinned in tools/k8sbin/go.mod and tools/etcdbin/go.mod.
set -o errexit -o nounset -o pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${REPO_ROOT}/scripts/lib.sh"

k8s_version() { module_version k8sbin k8s.io/kubernetes; }

etcd_version() { module_version etcdbin go.etcd.io/etcd/server/v3; }

bin_dir() {
  echo "$(cache_root)/k8s/$(k8s_version)-etcd$(etcd_version)/bin"
}

# The control plane is one binary (tools/k8sbin/controlplane: why there);
# kube-apiserver, kube-controller-manager and kube-scheduler are links to it.
readonly CONTROL_PLANE=(kube-apiserver kube-controller-manager kube-scheduler)

# The build directory in use: removed if the build fails or is stopped.
BUILD_TMP=""

build_k8s() {
  local out="$1" kubectl="$2" version missing=() b pkgs=()
  version="$(k8s_version)"
  [[ -x "${out}/sa-lab-control-plane" ]] || missing+=(sa-lab-control-plane)
  [[ "${kubectl}" == no || -x "${out}/kubectl" ]] || missing+=(kubectl)
  if [[ ${#missing[@]} -eq 0 ]]; then
    link_control_plane "${out}"
    log "Kubernetes ${version}: cached in ${out}"
    return
  fi
  for b in "${missing[@]}"; do
    case "${b}" in
      sa-lab-control-plane) pkgs+=(./controlplane) ;;
      *) pkgs+=("k8s.io/kubernetes/cmd/${b}") ;;
    esac
  done
  local total
  total="$(CGO_ENABLED=0 go_package_count "${REPO_ROOT}/tools/k8sbin" "${pkgs[@]}")"
  log "building ${missing[*]} (Kubernetes ${version}) from Go modules (cold: about 7 min on 2 cores)"
  local ldflags
  ldflags="$(k8s_ldflags "${version}")"
  # Build into a temp dir and move into place, so an interrupted build never
  # leaves a half-written binary in the cache.
  local tmp
  tmp="$(mktemp -d "${out}/.build.XXXXXX")"
  BUILD_TMP="${tmp}"
  (cd "${REPO_ROOT}/tools/k8sbin" &&
    go_compile -v -ldflags "${ldflags}" -o "${tmp}/" "${pkgs[@]}" 2>&1 | go_progress 250 "${total}")
  if [[ -e "${tmp}/controlplane" ]]; then mv "${tmp}/controlplane" "${out}/sa-lab-control-plane"; fi
  if [[ -e "${tmp}/kubectl" ]]; then mv "${tmp}/kubectl" "${out}/kubectl"; fi
  rmdir "${tmp}"
  BUILD_TMP=""
  link_control_plane "${out}"
}

# link_control_plane OUT: each control-plane name in OUT a link to the one
# binary (replacing what an older layout left there: three binaries).
link_control_plane() {
  local b
  for b in "${CONTROL_PLANE[@]}"; do
    [[ "$(readlink "$1/${b}")" == sa-lab-control-plane ]] || ln -sfn sa-lab-control-plane "$1/${b}"
  done
}

build_etcd() {
  local out="$1" version
  version="$(etcd_version)"
  if [[ -x "${out}/etcd" ]]; then
    log "etcd ${version}: cached in ${out}"
    return
  fi
  local tmp total
  total="$(CGO_ENABLED=0 go_package_count "${REPO_ROOT}/tools/etcdbin" go.etcd.io/etcd/server/v3)"
  log "building etcd ${version} from Go modules"
  tmp="$(mktemp -d "${out}/.build.XXXXXX")"
  BUILD_TMP="${tmp}"
  (cd "${REPO_ROOT}/tools/etcdbin" &&
    go_compile -v -ldflags "-s -w" -o "${tmp}/etcd" go.etcd.io/etcd/server/v3 2>&1 | go_progress 250 "${total}")
  mv "${tmp}/etcd" "${out}/etcd"
  rmdir "${tmp}"
  BUILD_TMP=""
}

main() {
  local out kubectl=yes
  out="$(bin_dir)"
  case "${1:-}" in
    --print)
      echo "${out}"
      return
      ;;
    --no-kubectl) kubectl=no ;;
    "") ;;
    *) die "unknown argument: $1" "usage: scripts/install-k8s.sh [--no-kubectl | --print]" ;;
  esac
  if ! command -v go >/dev/null 2>&1; then
    echo "error: Go is not installed; sa-lab builds Kubernetes from its Go modules." >&2
    echo "       Install Go >= 1.26 (https://go.dev/doc/install) or set SA_LAB_K8S_BIN" >&2
    echo "       to a directory holding kube-apiserver, kube-controller-manager," >&2
    echo "       kube-scheduler, kubectl and etcd." >&2
    exit 1
  fi
  mkdir -p "${out}"
  trap 'if [[ -n "${BUILD_TMP}" ]]; then rm -rf "${BUILD_TMP}"; fi' EXIT
  build_etcd "${out}"
  build_k8s "${out}" "${kubectl}"
  echo "${out}"
}

main "$@"
