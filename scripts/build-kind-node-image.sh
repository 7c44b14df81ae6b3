#!/usr/bin/env bash
# Build the kind node image sa-lab uses on machines without Docker or a
# registry, and cache it per version. Prints the image reference on stdout.
#
#   scripts/build-kind-node-image.sh              build if not cached
#   scripts/build-kind-node-image.sh --print-ref  print the reference, build nothing
#   scripts/build-kind-node-image.sh --rebuild    build even if cached
#
# `kind build node-image` cannot work offline (it always fetches etcd, CoreDNS,
# pause and kindnetd from a registry), so this assembles the image the way
# kind's base image and node-image builder do, from parts built here:
#
#   root filesystem  Debian bookworm from Debian's packages (mmdebstrap): systemd,
#                    runc, iptables, nftables, iproute2, conntrack, ...
#   kind base files  the entrypoint, systemd units, containerd and crictl config,
#                    taken at build time from the kind module (tools/kindbin)
#   node binaries    containerd, its runc shim, ctr, crictl, the CNI plugins,
#                    kubelet and kubeadm (scripts/install-node-bins.sh --kubeadm),
#                    kubectl (scripts/install-k8s.sh)
#   CNI config       kind/node/10-sa-lab.conflist over kind/cluster-local.yaml's podSubnet
#   images           registry.k8s.io/kube-apiserver, -controller-manager,
#                    -scheduler, -proxy (v1.37.2), etcd (3.6.16-0), coredns/coredns
#                    (v1.14.6, tools/corednsbin), pause (containerd's sandbox image):
#                    each a minimal image of one static binary (kube-proxy adds
#                    Debian's nft), imported into the node's containerd, pinned
#
# The reference is localhost/sa-lab/kind-node:<kubernetes version>-<key>, the
# key a hash of every version and file that goes in, so a version change
# builds a new image; older sa-lab node images are removed after a build.
# Needs root and podman (the images live in podman's storage, which
# kind's podman provider reads); installs mmdebstrap and umoci with apt-get.
set -o errexit -o nounset -o pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${REPO_ROOT}/scripts/lib.sh"

readonly IMAGE_REPO="localhost/sa-lab/kind-node"
readonly DEBIAN_SUITE="bookworm"
# kind's base image packages (images/base/Dockerfile) less the storage and
# build tools a single-node lab cluster does not use, plus Debian's runc
# (kind builds its own) and jq (to write containerd's base OCI spec).
readonly DEBIAN_PACKAGES="systemd,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,ca-certificates,bash,procps,runc,jq"
readonly NODE_CONFIG="${REPO_ROOT}/kind/cluster-local.yaml"

kind_version() { module_version kindbin sigs.k8s.io/kind; }
k8s_version() { module_version k8sbin k8s.io/kubernetes; }
etcd_version() { module_version etcdbin go.etcd.io/etcd/server/v3; }
coredns_version() { module_version corednsbin github.com/coredns/coredns; }

# Every pinned version is found (a go.mod reshaped by hand could hide one).
check_versions() {
  local what
  for what in kind_version k8s_version etcd_version coredns_version; do
    [[ -n "$("${what}")" ]] || die "${what//_/ } not found in tools/*/go.mod (a require line per module, as go writes them)"
  done
}

# A value from kind/cluster-local.yaml: `key: "value"` (first match).
config_value() {
  sed -n "s|^\s*$1:\s*\"\{0,1\}\([^\"]*\)\"\{0,1\}\s*\$|\1|p" "${NODE_CONFIG}" | head -n1
}

# The etcd image tag kind/cluster-local.yaml asks kubeadm for: must be the
# etcd tools/etcdbin builds.
etcd_tag() {
  local tag
  tag="$(config_value imageTag)"
  [[ "${tag}" == "$(etcd_version | sed 's/^v//')-0" ]] ||
    die "kind/cluster-local.yaml asks kubeadm for etcd ${tag:-<none>}, but tools/etcdbin builds $(etcd_version)" \
      "set etcd.local.imageTag to \"$(etcd_version | sed 's/^v//')-0\" there"
  printf '%s\n' "${tag}"
}

# Everything that decides the image's content, one line each.
key_inputs() {
  printf 'kind %s\nkubernetes %s\netcd %s\ncoredns %s\ndebian %s %s\n' \
    "$(kind_version)" "$(k8s_version)" "$(etcd_version)" "$(coredns_version)" \
    "${DEBIAN_SUITE}" "${DEBIAN_PACKAGES}"
  local f
  for f in tools/containerdbin/go.mod tools/cnibin/go.mod tools/critools/go.mod \
    tools/corednsbin/main.go tools/k8sbin/controlplane/main.go kind/node/10-sa-lab.conflist \
    scripts/build-kind-node-image.sh scripts/lib.sh; do
    [[ -f "${REPO_ROOT}/${f}" ]] || continue
    printf '%s %s\n' "${f}" "$(sha256sum <"${REPO_ROOT}/${f}" | cut -c1-64)"
  done
  printf 'podSubnet %s\n' "$(config_value podSubnet)"
}

image_ref() {
  printf '%s:%s-%s\n' "${IMAGE_REPO}" "$(k8s_version)" "$(key_inputs | sha256sum | cut -c1-12)"
}

# need_debian_tools: mmdebstrap and umoci, installed with apt-get when root.
need_debian_tools() {
  require_debian_packages "the node image is built from Debian's packages with them" \
    mmdebstrap=mmdebstrap umoci=umoci
}

# The kind module's directory in the Go module cache (downloaded if needed).
kind_module_dir() {
  local dir
  dir="$(cd "${REPO_ROOT}/tools/kindbin" &&
    go mod download -json "sigs.k8s.io/kind@$(kind_version)" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')"
  [[ -d "${dir}/images/base/files" ]] || die "no images/base/files in the kind module (${dir:-not downloaded})"
  printf '%s\n' "${dir}"
}

# CoreDNS from tools/corednsbin, cached per version.
build_coredns() {
  local version out
  version="$(coredns_version)"
  out="$(cache_root)/coredns/${version}/coredns"
  if [[ -x "${out}" ]]; then
    log "CoreDNS ${version}: cached" && printf '%s\n' "${out}"
    return 0
  fi
  log "building CoreDNS ${version} (cluster names only, no forwarding plugin)"
  mkdir -p "$(dirname "${out}")"
  (cd "${REPO_ROOT}/tools/corednsbin" &&
    go_compile -ldflags "-s -w" -o "${out}.tmp" .) >&2
  mv -f "${out}.tmp" "${out}"
  printf '%s\n' "${out}"
}

# The binaries the node runs and the images' binaries, from the scripts that
# own their builds. SA_LAB_NODE_BINS names a directory laid out as
# scripts/install-node-bins.sh's (bin/, cni/) to use instead.
node_bins_dir() {
  if [[ -n "${SA_LAB_NODE_BINS:-}" ]]; then
    printf '%s\n' "${SA_LAB_NODE_BINS}"
    return 0
  fi
  [[ -x "${REPO_ROOT}/scripts/install-node-bins.sh" ]] ||
    die "scripts/install-node-bins.sh is missing: it builds containerd, kubelet and kubeadm for the node" \
      "or set SA_LAB_NODE_BINS to a directory with bin/ (containerd, containerd-shim-runc-v2, ctr, crictl, pause, kubelet, kube-proxy, kubeadm) and cni/"
  "${REPO_ROOT}/scripts/install-node-bins.sh" --kubeadm
}

# check_bins DIR NAME...: each is an executable file in DIR.
check_bins() {
  local dir="$1" b
  shift
  for b in "$@"; do
    [[ -x "${dir}/${b}" ]] || die "missing ${dir}/${b}"
  done
}

# mmdebstrap ROOTFS: a Debian root filesystem from Debian's packages.
make_rootfs() {
  local rootfs="$1"
  log "Debian ${DEBIAN_SUITE} root filesystem from Debian's packages (mmdebstrap)"
  mmdebstrap --quiet --variant=minbase --include="${DEBIAN_PACKAGES}" \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    "${DEBIAN_SUITE}" "${rootfs}" \
    "deb http://deb.debian.org/debian ${DEBIAN_SUITE} main" \
    "deb http://deb.debian.org/debian ${DEBIAN_SUITE}-updates main" \
    "deb http://deb.debian.org/debian-security ${DEBIAN_SUITE}-security main" >&2
}

# What kind's base Dockerfile does to its base image, on ROOTFS.
add_kind_base() {
  local rootfs="$1" files="$2/images/base/files" node_bins="$3"
  log "kind $(kind_version) base files (entrypoint, systemd units, containerd config) from its module"
  install -D -m 0755 -t "${rootfs}/usr/local/bin" "${files}"/usr/local/bin/*
  mkdir -p "${rootfs}/kind/bin" "${rootfs}/LICENSES" "${rootfs}/etc/containerd" \
    "${rootfs}/etc/default" "${rootfs}/etc/sysctl.d" "${rootfs}/etc/systemd/system/kubelet.service.d"
  install -m 0644 "${files}/kind/README.txt" "${rootfs}/kind/"
  install -m 0755 -t "${rootfs}/kind/bin" "${files}"/kind/bin/*
  install -m 0644 -t "${rootfs}/LICENSES" "${files}"/LICENSES/*
  install -m 0644 "${files}/etc/crictl.yaml" "${rootfs}/etc/"
  install -m 0644 -t "${rootfs}/etc/containerd" "${files}"/etc/containerd/*
  install -m 0644 -t "${rootfs}/etc/default" "${files}"/etc/default/*
  install -m 0644 -t "${rootfs}/etc/sysctl.d" "${files}"/etc/sysctl.d/*
  install -m 0644 -t "${rootfs}/etc/systemd/system" "${files}"/etc/systemd/system/*.service \
    "${files}"/etc/systemd/system/*.slice
  install -m 0644 -t "${rootfs}/etc/systemd/system/kubelet.service.d" \
    "${files}"/etc/systemd/system/kubelet.service.d/*
  chmod 0755 "${rootfs}/kind" "${rootfs}/kind/bin"
  # The unit pruning of kind's base Dockerfile.
  find "${rootfs}/lib/systemd/system/sysinit.target.wants/" -name systemd-tmpfiles-setup.service -delete
  rm -f "${rootfs}"/lib/systemd/system/multi-user.target.wants/* \
    "${rootfs}"/etc/systemd/system/*.wants/* \
    "${rootfs}"/lib/systemd/system/local-fs.target.wants/* \
    "${rootfs}"/lib/systemd/system/sockets.target.wants/*udev* \
    "${rootfs}"/lib/systemd/system/sockets.target.wants/*initctl* \
    "${rootfs}"/lib/systemd/system/basic.target.wants/*
  echo "ReadKMsg=no" >>"${rootfs}/etc/systemd/journald.conf"
  ln -sf /usr/lib/systemd/systemd "${rootfs}/sbin/init"
  chroot "${rootfs}" systemctl enable kubelet.service containerd.service undo-mount-hacks.service >/dev/null 2>&1
  chroot "${rootfs}" systemctl mask systemd-binfmt.service >/dev/null 2>&1
  mkdir -p "${rootfs}/etc/kubernetes/manifests"

  # containerd, its shim and ctr where kind's units expect them; Debian's runc.
  install -m 0755 -t "${rootfs}/usr/local/bin" "${node_bins}/bin/containerd" \
    "${node_bins}/bin/containerd-shim-runc-v2" "${node_bins}/bin/ctr" "${node_bins}/bin/crictl"
  # kind's base OCI spec for containers: `ctr oci spec` with kind's hook, no rlimits.
  "${node_bins}/bin/ctr" oci spec |
    chroot "${rootfs}" jq '.hooks.createContainer[.hooks.createContainer | length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' |
    chroot "${rootfs}" jq 'del(.process.rlimits)' >"${rootfs}/etc/containerd/cri-base.json"
  # Root here may not write a negative oom_score_adj (no CAP_SYS_RESOURCE):
  # containerd must not ask for one (kind does the same for rootless nodes).
  sed -i 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/' "${rootfs}/etc/containerd/config.toml"
  grep -q 'restrict_oom_score_adj = true' "${rootfs}/etc/containerd/config.toml" ||
    die "kind's containerd config has no restrict_oom_score_adj line to set"
}

# The node layer: Kubernetes binaries, CNI, /kind/version.
add_node_layer() {
  local rootfs="$1" node_bins="$2" k8s_bin="$3" pod_subnet
  log "Kubernetes $(k8s_version) binaries, CNI plugins and the single-node CNI config"
  install -m 0755 -t "${rootfs}/usr/bin" "${node_bins}/bin/kubelet" "${node_bins}/bin/kubeadm" "${k8s_bin}/kubectl"
  mkdir -p "${rootfs}/opt/cni/bin" "${rootfs}/etc/cni/net.d"
  install -m 0755 -t "${rootfs}/opt/cni/bin" "${node_bins}"/cni/{bridge,host-local,loopback,portmap}
  pod_subnet="$(config_value podSubnet)"
  [[ -n "${pod_subnet}" ]] || die "no podSubnet in ${NODE_CONFIG}"
  sed "s|@POD_SUBNET@|${pod_subnet}|" "${REPO_ROOT}/kind/node/10-sa-lab.conflist" \
    >"${rootfs}/etc/cni/net.d/10-sa-lab.conflist"
  printf '%s\n' "$(k8s_version)" >"${rootfs}/kind/version"
  # kind applies this manifest if present (else the same StorageClass with a warning).
  mkdir -p "${rootfs}/kind/manifests"
  cat >"${rootfs}/kind/manifests/default-storage.yaml" <<'EOF'
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: kubernetes.io/host-path
EOF
}

# stage DIR FILE DEST...: copies FILE to DIR/DEST with its mode.
stage() {
  local dir="$1" file="$2" dest="$3"
  install -D -m 0755 "${file}" "${dir}${dest}"
}

# The images kubeadm v1.37 and kind's containerd config name, as OCI archives
# in OUT, one NAME.tar each with NAME.ref holding the image reference.
make_images() {
  local out="$1" rootfs="$2" node_bins="$3" k8s_bin="$4" coredns="$5" version tag
  version="$(k8s_version)"
  log "component images: kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, etcd, coredns, pause"
  local b dir
  # Each is the one control-plane binary (scripts/install-k8s.sh), run as the
  # name kubeadm starts it by.
  for b in kube-apiserver kube-controller-manager kube-scheduler; do
    dir="${out}/${b}.root"
    stage "${dir}" "${k8s_bin}/${b}" "/usr/local/bin/${b}"
    oci_archive "${dir}" "registry.k8s.io/${b}:${version}" "${out}/${b}.tar" 0:0 "/usr/local/bin/${b}"
    printf 'registry.k8s.io/%s:%s\n' "${b}" "${version}" >"${out}/${b}.ref"
  done

  # kube-proxy in nftables mode runs `nft`: Debian's, with the libraries it links.
  dir="${out}/kube-proxy.root"
  stage "${dir}" "${node_bins}/bin/kube-proxy" /usr/local/bin/kube-proxy
  stage "${dir}" "${rootfs}/usr/sbin/nft" /usr/sbin/nft
  local lib
  while read -r lib; do
    mkdir -p "${dir}$(dirname "${lib}")"
    cp -L "${rootfs}${lib}" "${dir}${lib}"
  done < <(chroot "${rootfs}" ldd /usr/sbin/nft | grep -o '/[^ ]*' | sort -u)
  oci_archive "${dir}" "registry.k8s.io/kube-proxy:${version}" "${out}/kube-proxy.tar" 0:0 /usr/local/bin/kube-proxy
  printf 'registry.k8s.io/kube-proxy:%s\n' "${version}" >"${out}/kube-proxy.ref"

  tag="$(etcd_tag)"
  dir="${out}/etcd.root"
  stage "${dir}" "${k8s_bin}/etcd" /usr/local/bin/etcd
  mkdir -p "${dir}/var/lib/etcd"
  oci_archive "${dir}" "registry.k8s.io/etcd:${tag}" "${out}/etcd.tar" 0:0 /usr/local/bin/etcd
  printf 'registry.k8s.io/etcd:%s\n' "${tag}" >"${out}/etcd.ref"

  dir="${out}/coredns.root"
  stage "${dir}" "${coredns}" /coredns
  oci_archive "${dir}" "registry.k8s.io/coredns/coredns:$(coredns_version)" "${out}/coredns.tar" 65532:65532 /coredns
  printf 'registry.k8s.io/coredns/coredns:%s\n' "$(coredns_version)" >"${out}/coredns.ref"

  # The sandbox image kind's containerd config names (sandbox_image).
  tag="$(sed -n 's|^\s*sandbox_image = "registry.k8s.io/pause:\(.*\)"$|\1|p' "${rootfs}/etc/containerd/config.toml")"
  [[ -n "${tag}" ]] || die "no registry.k8s.io/pause sandbox_image in kind's containerd config"
  dir="${out}/pause.root"
  stage "${dir}" "${node_bins}/bin/pause" /pause
  oci_archive "${dir}" "registry.k8s.io/pause:${tag}" "${out}/pause.tar" 65535:65535 /pause
  printf 'registry.k8s.io/pause:%s\n' "${tag}" >"${out}/pause.ref"
}

# Imports the images in IMAGES into ROOTFS's containerd (namespace k8s.io,
# pinned, content only: the CRI unpacks on first use), as kind's node-image
# builder does, with containerd run in a chroot of ROOTFS inside a private
# mount and PID namespace: its mounts and processes end with the namespace.
preload_images() {
  local rootfs="$1" images="$2"
  log "preloading the images into the node's containerd"
  mkdir -p "${rootfs}/tmp/images"
  cp "${images}"/*.tar "${images}"/*.ref "${rootfs}/tmp/images/"
  cat >"${rootfs}/tmp/import.toml" <<'EOF'
version = 3
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images", "io.containerd.nri.v1.nri"]
[grpc]
  address = "/tmp/containerd.sock"
EOF
  cat >"${rootfs}/tmp/import.sh" <<'EOF'
set -o errexit -o nounset -o pipefail
containerd --config /tmp/import.toml --log-level warn 2>/tmp/containerd.log &
for i in $(seq 100); do [ -S /tmp/containerd.sock ] && break; sleep 0.1; done
ctr --address /tmp/containerd.sock version >/dev/null 2>&1
for tar in /tmp/images/*.tar; do
  ref="$(cat "${tar%.tar}.ref")"
  ctr --address /tmp/containerd.sock --namespace k8s.io images import --no-unpack --digests \
    --label io.cri-containerd.pinned=pinned --base-name "${ref%:*}" "${tar}" >/dev/null 2>/tmp/ctr.log ||
    { grep -v DEPRECATION /tmp/ctr.log >&2; exit 1; }
done
ctr --address /tmp/containerd.sock --namespace k8s.io images list -q 2>/dev/null | grep -v '@sha256:' | sort
kill %1
wait %1 || true
EOF
  # shellcheck disable=SC2016 # expanded by the inner bash
  unshare --mount --pid --fork --propagation private bash -c '
    set -o errexit
    r="$1"
    mount -t proc proc "${r}/proc"
    mount -t tmpfs tmpfs "${r}/run"
    mount --rbind /dev "${r}/dev"
    mount --rbind /sys "${r}/sys"
    chroot "${r}" bash /tmp/import.sh
  ' preload "${rootfs}" >"${images}/imported.txt"
  rm -rf -- "${rootfs}/tmp/images" "${rootfs}/tmp/import.toml" "${rootfs}/tmp/import.sh" \
    "${rootfs}/tmp/containerd.log" "${rootfs}/tmp/containerd.sock" "${rootfs}/tmp/ctr.log"
  local missing=() ref
  for ref in "${images}"/*.ref; do
    grep -qxF -- "$(cat "${ref}")" "${images}/imported.txt" || missing+=("$(cat "${ref}")")
  done
  [[ ${#missing[@]} -eq 0 ]] ||
    die "images missing from the node's containerd after import: ${missing[*]}" \
      "imported: $(tr '\n' ' ' <"${images}/imported.txt")"
  ok "preloaded: $(tr '\n' ' ' <"${images}/imported.txt")"
}

WORK=""
cleanup() {
  [[ -z "${WORK}" ]] || rm -rf -- "${WORK}"
}

build() {
  local ref="$1" node_bins k8s_bin kind_dir coredns
  [[ "$(id -u)" -eq 0 ]] ||
    die "building the kind node image needs root (mmdebstrap, chroot, podman's rootful storage)" \
      "run it as root, or use Docker with the upstream node image: scripts/kind-up.sh --node-image upstream"
  command -v podman >/dev/null 2>&1 || die "podman is not installed (scripts/kind-up.sh installs it)"
  command -v go >/dev/null 2>&1 || die "Go is not installed: the node's parts are built from Go modules" \
    "install Go >= 1.26 (https://go.dev/doc/install)"
  need_debian_tools
  node_bins="$(node_bins_dir)"
  check_bins "${node_bins}/bin" containerd containerd-shim-runc-v2 ctr crictl pause kubelet kube-proxy kubeadm
  check_bins "${node_bins}/cni" bridge host-local loopback portmap
  k8s_bin="$(SA_LAB_QUIET=1 "${REPO_ROOT}/scripts/install-k8s.sh")"
  check_bins "${k8s_bin}" kube-apiserver kube-controller-manager kube-scheduler kubectl etcd
  coredns="$(build_coredns)"
  kind_dir="$(kind_module_dir)"

  local start="${SECONDS}"
  mkdir -p "$(cache_root)"
  WORK="$(mktemp -d "$(cache_root)/kind-node-build.XXXXXX")"
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  local rootfs="${WORK}/rootfs"
  make_rootfs "${rootfs}"
  add_kind_base "${rootfs}" "${kind_dir}" "${node_bins}"
  add_node_layer "${rootfs}" "${node_bins}" "${k8s_bin}"
  mkdir -p "${WORK}/images"
  make_images "${WORK}/images" "${rootfs}" "${node_bins}" "${k8s_bin}" "${coredns}"
  preload_images "${rootfs}" "${WORK}/images"

  log "importing the root filesystem into podman as ${ref}"
  tar --numeric-owner --xattrs -C "${rootfs}" -c . |
    podman import --quiet \
      --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' \
      --change 'ENV container=docker' \
      --change 'STOPSIGNAL SIGRTMIN+3' \
      --message "sa-lab kind node: $(key_inputs | tr '\n' ';')" \
      - "${ref}" >/dev/null
  ok "built ${ref} in $((SECONDS - start)) s"
  remove_older "${ref}"
}

# Removes sa-lab node images other than REF: the cache keeps one per machine.
remove_older() {
  local ref="$1" other
  while read -r other; do
    [[ -n "${other}" && "${other}" != "${ref}" ]] || continue
    podman rmi "${other}" >/dev/null 2>&1 && log "removed the older node image ${other}"
  done < <(podman images --format '{{.Repository}}:{{.Tag}}' --filter "reference=${IMAGE_REPO}")
}

main() {
  # The image's files get their modes from here, whoever calls (kind-up.sh
  # runs under umask 077): non-root processes in the node and its images
  # (CoreDNS, pause) must read them.
  umask 022
  local print=0 rebuild=0
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --print-ref) print=1 ;;
      --rebuild) rebuild=1 ;;
      -h | --help)
        usage
        return 0
        ;;
      *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
  done
  check_versions
  local ref
  ref="$(image_ref)"
  if [[ "${print}" -eq 1 ]]; then
    printf '%s\n' "${ref}"
    return 0
  fi
  if [[ "${rebuild}" -eq 0 ]] && podman image exists "${ref}" 2>/dev/null; then
    ok "node image ${ref}: cached"
  else
    build "${ref}"
  fi
  printf '%s\n' "${ref}"
}

if [[ "${BASH_SOURCE[0]}" == "${0}" ]]; then
  main "$@"
fi
