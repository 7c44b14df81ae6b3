#!/usr/bin/env bash
# Build the Kubernetes control-plane binaries sa-lab's local provider runs
# (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd)
# from their Go modules, and cache them per version. Builds only what is
# missing; prints the bin directory on stdout when done.
#
#   scripts/install-k8s.sh            build into the cache if needed
#   scripts/install-k8s.sh --print    print the bin dir, build nothing
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

build_k8s() {
  local out="$1" version missing=()
  version="$(k8s_version)"
  for b in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    [[ -x "${out}/${b}" ]] || missing+=("${b}")
  done
  if [[ ${#missing[@]} -eq 0 ]]; then
    log "Kubernetes ${version}: cached in ${out}"
    return
  fi
  log "building ${missing[*]} ${version} from Go modules (cold: about 12 min on 2 cores)"
  local pkgs=()
  for b in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/${b}"); done
  local ldflags
  ldflags="$(k8s_ldflags "${version}")"
  # Build into a temp dir and move into place, so an interrupted build never
  # leaves a half-written binary in the cache.
  local tmp
  tmp="$(mktemp -d "${out}/.build.XXXXXX")"
  (cd "${REPO_ROOT}/tools/k8sbin" &&
    CGO_ENABLED=0 go build -v -trimpath -ldflags "${ldflags}" -o "${tmp}/" "${pkgs[@]}" 2>&1 | go_progress 250)
  for b in "${missing[@]}"; do mv "${tmp}/${b}" "${out}/${b}"; done
  rmdir "${tmp}"
}

build_etcd() {
  local out="$1" version
  version="$(etcd_version)"
  if [[ -x "${out}/etcd" ]]; then
    log "etcd ${version}: cached in ${out}"
    return
  fi
  log "building etcd ${version} from Go modules"
  local tmp
  tmp="$(mktemp -d "${out}/.build.XXXXXX")"
  (cd "${REPO_ROOT}/tools/etcdbin" &&
    CGO_ENABLED=0 go build -v -trimpath -ldflags "-s -w" -o "${tmp}/etcd" go.etcd.io/etcd/server/v3 2>&1 | go_progress 250)
  mv "${tmp}/etcd" "${out}/etcd"
  rmdir "${tmp}"
}

main() {
  local out
  out="$(bin_dir)"
  if [[ "${1:-}" == "--print" ]]; then
    echo "${out}"
    return
  fi
  if ! command -v go >/dev/null 2>&1; then
    echo "error: Go is not installed; sa-lab builds Kubernetes from its Go modules." >&2
    echo "       Install Go >= 1.26 (https://go.dev/doc/install) or set SA_LAB_K8S_BIN" >&2
    echo "       to a directory holding kube-apiserver, kube-controller-manager," >&2
    echo "       kube-scheduler, kubectl and etcd." >&2
    exit 1
  fi
  mkdir -p "${out}"
  build_etcd "${out}"
  build_k8s "${out}"
  echo "${out}"
}

main "$@"
