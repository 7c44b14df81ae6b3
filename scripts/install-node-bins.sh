#!/usr/bin/env bash
# Build the binaries the kubelet node runs (`sa-lab up --node kubelet`) from
# their Go modules and sources, and cache them per version: kubelet and
# kube-proxy (k8s.io/kubernetes), containerd with its runc shim and ctr,
# crictl, the CNI plugins bridge, host-local, loopback and portmap, and the
# static pause binary (build/pause/linux/pause.c of the kubernetes module)
# with its image, packed without Docker or a registry (umoci). runc,
# iptables, conntrack, gcc, umoci and jq come from Debian: installed with
# apt-get when running as root, otherwise named as missing. Builds only what
# is missing; prints the cache directory on stdout when done (bin/, cni/,
# images/pause.tar and images/pause.ref inside).
#
#   scripts/install-node-bins.sh               build into the cache if needed
#   scripts/install-node-bins.sh --kubeadm     ... and kubeadm too (for kind)
#   scripts/install-node-bins.sh --print       print the directory, build nothing
#
# Versions are pinned in tools/k8sbin, tools/containerdbin, tools/cnibin and
# tools/critools (go.mod). The kubernetes commands share the Go build cache
# with scripts/install-k8s.sh: run that first and these take about a minute.
set -o errexit -o nounset -o pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${REPO_ROOT}/scripts/lib.sh"

k8s_version() { module_version k8sbin k8s.io/kubernetes; }
containerd_version() { module_version containerdbin github.com/containerd/containerd/v2; }
cni_version() { module_version cnibin github.com/containernetworking/plugins; }
crictl_version() { module_version critools sigs.k8s.io/cri-tools; }

# The cache directory for these versions (the same rule as
# sa_lab::kubelet::bins::cache_dir()).
cache_dir() {
  printf '%s/node/%s-containerd%s-cni%s-crictl%s\n' "$(cache_root)" \
    "$(k8s_version)" "$(containerd_version)" "$(cni_version)" "$(crictl_version)"
}

# missing DIR NAME...: prints the names not yet executable in DIR.
missing() {
  local dir="$1" b
  shift
  for b in "$@"; do [[ -x "${dir}/${b}" ]] || printf '%s\n' "${b}"; done
}

# go_build TOOLDIR OUTDIR TAGS LDFLAGS PKG...: builds into a temp dir inside
# OUTDIR and moves the results into place, so an interrupted build never
# leaves a half-written binary in the cache.
go_build() {
  local tool="$1" out="$2" tags="$3" ldflags="$4" tmp pkg start="${SECONDS}"
  shift 4
  tmp="$(mktemp -d "${out}/.build.XXXXXX")"
  # shellcheck disable=SC2064 # expand now: the trap must remove this tmp dir
  trap "rm -rf '${tmp}'" EXIT
  (cd "${REPO_ROOT}/tools/${tool}" &&
    go_compile -v -tags "${tags}" -ldflags "${ldflags}" -o "${tmp}/" "$@" 2>&1 | go_progress 100)
  for pkg in "$@"; do mv "${tmp}/${pkg##*/}" "${out}/"; done
  rmdir "${tmp}"
  trap - EXIT
  ok "built $(printf '%s ' "${@##*/}")($((SECONDS - start))s)"
}

build_kubernetes() {
  local bin="$1" kubeadm="$2" version want=(kubelet kube-proxy) todo=()
  [[ "${kubeadm}" -eq 0 ]] || want+=(kubeadm)
  mapfile -t todo < <(missing "${bin}" "${want[@]}")
  version="$(k8s_version)"
  if [[ ${#todo[@]} -eq 0 ]]; then
    ok "${want[*]} ${version}: cached"
    return
  fi
  wait_for_control_plane_build
  log "building ${todo[*]} ${version} (about a minute with the control plane's Go build cache warm)"
  local ldflags
  ldflags="$(k8s_ldflags "${version}")"
  local pkgs=() b
  for b in "${todo[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/${b}"); done
  go_build k8sbin "${bin}" "" "${ldflags}" "${pkgs[@]}"
}

# Two cold Kubernetes builds side by side share nothing and take twice as
# long on 2 cores: if scripts/install-k8s.sh is building right now, wait for
# it (its packages are most of ours).
wait_for_control_plane_build() {
  local pid
  while pid="$(pgrep -f 'go build .* ./controlplane' | head -n1)" && [[ -n "${pid}" ]]; do
    log "waiting for the running control-plane build (pid ${pid}, scripts/install-k8s.sh) to share its build cache"
    tail --pid="${pid}" -f /dev/null
  done
}

build_containerd() {
  local bin="$1" version todo=()
  version="$(containerd_version)"
  mapfile -t todo < <(missing "${bin}" containerd containerd-shim-runc-v2 ctr)
  if [[ ${#todo[@]} -eq 0 ]]; then
    ok "containerd ${version}: cached"
    return
  fi
  log "building containerd ${version} (${todo[*]}; cold: about 3 min on 2 cores)"
  local pkg=github.com/containerd/containerd/v2 pkgs=() b
  for b in "${todo[@]}"; do pkgs+=("${pkg}/cmd/${b}"); done
  go_build containerdbin "${bin}" "no_btrfs no_devmapper no_zfs" \
    "-s -w -X ${pkg}/version.Version=${version#v}" "${pkgs[@]}"
}

build_crictl() {
  local bin="$1" version
  version="$(crictl_version)"
  if [[ -x "${bin}/crictl" ]]; then
    ok "crictl ${version}: cached"
    return
  fi
  log "building crictl ${version}"
  go_build critools "${bin}" "" "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=${version}" \
    sigs.k8s.io/cri-tools/cmd/crictl
}

build_cni() {
  local dir="$1" version todo=()
  version="$(cni_version)"
  mapfile -t todo < <(missing "${dir}" bridge host-local loopback portmap)
  if [[ ${#todo[@]} -eq 0 ]]; then
    ok "CNI plugins ${version}: cached"
    return
  fi
  log "building the CNI plugins ${version} (${todo[*]})"
  local base=github.com/containernetworking/plugins pkgs=() b
  for b in "${todo[@]}"; do
    case "${b}" in
      host-local) pkgs+=("${base}/plugins/ipam/host-local") ;;
      portmap) pkgs+=("${base}/plugins/meta/portmap") ;;
      *) pkgs+=("${base}/plugins/main/${b}") ;;
    esac
  done
  go_build cnibin "${dir}" "" "-s -w -X ${base}/pkg/utils/buildversion.BuildVersion=${version}" "${pkgs[@]}"
}

# The pause binary every Pod sandbox runs, from the kubernetes module's own
# source, linked statically as upstream does (build/pause/Makefile), and the
# pause image made of it (as upstream's: /pause, user 65535), named as
# upstream names that tag. images/pause.ref holds the name, images/pause.tar
# the OCI archive.
build_pause() {
  local dir="$1" version src tag ref
  version="$(k8s_version)"
  if [[ -x "${dir}/bin/pause" && -f "${dir}/images/pause.tar" && -f "${dir}/images/pause.ref" ]]; then
    ok "pause $(cat "${dir}/images/pause.ref"): cached"
    return
  fi
  require_debian_packages "the pause image is compiled (gcc) and packed (umoci, jq) here" \
    gcc=gcc,libc6-dev umoci=umoci jq=jq
  src="$(cd "${REPO_ROOT}/tools/k8sbin" && go mod download -json "k8s.io/kubernetes@${version}" |
    sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')"
  [[ -f "${src}/build/pause/linux/pause.c" ]] || die "no build/pause/linux/pause.c in ${src}"
  tag="$(sed -n 's/^TAG ?= \([0-9.]*\)$/\1/p' "${src}/build/pause/Makefile")"
  [[ -n "${tag}" ]] || die "no TAG in ${src}/build/pause/Makefile"
  ref="registry.k8s.io/pause:${tag}"
  log "building ${ref} from build/pause/linux/pause.c of kubernetes ${version} (gcc -static, umoci)"
  local root
  root="$(mktemp -d "${dir}/.pause.XXXXXX")"
  # shellcheck disable=SC2064 # expand now: the trap must remove this dir
  trap "rm -rf '${root}'" EXIT
  gcc -Os -Wall -Werror -static "-DVERSION=v${tag}-${version}" -o "${root}/pause" "${src}/build/pause/linux/pause.c"
  cp "${root}/pause" "${dir}/bin/.pause.tmp"
  mv "${dir}/bin/.pause.tmp" "${dir}/bin/pause"
  mkdir -p "${dir}/images"
  oci_archive "${root}" "${ref}" "${dir}/images/pause.tar" 65535:65535 /pause
  printf '%s\n' "${ref}" >"${dir}/images/pause.ref"
  rm -rf "${root}"
  trap - EXIT
  ok "built ${ref}"
}

main() {
  local print=0 kubeadm=0 dir
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --print) print=1 ;;
      --kubeadm) kubeadm=1 ;;
      -h | --help)
        usage
        return 0
        ;;
      *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
  done
  dir="$(cache_dir)"
  if [[ "${print}" -eq 1 ]]; then
    printf '%s\n' "${dir}"
    return 0
  fi
  command -v go >/dev/null 2>&1 ||
    die "Go is not installed; the kubelet node's binaries are built from their Go modules" \
      "install Go >= 1.26 (https://go.dev/doc/install), then run this script again"
  mkdir -p "${dir}/bin" "${dir}/cni"
  # The host tools the node runs but does not build: runc (the OCI runtime
  # containerd's shim calls), iptables (kube-proxy, sa-lab's fail-closed
  # rules) and conntrack (clearing the Pods' entries on the way down).
  require_debian_packages "the kubelet node runs them" \
    runc=runc iptables=iptables ip6tables=iptables conntrack=conntrack ip=iproute2
  build_containerd "${dir}/bin"
  build_cni "${dir}/cni"
  build_crictl "${dir}/bin"
  build_pause "${dir}"
  build_kubernetes "${dir}/bin" "${kubeadm}"
  printf '%s\n' "${dir}"
}

main "$@"
