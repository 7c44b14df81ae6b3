# shellcheck shell=bash
# Shared by scripts/kind-up.sh, scripts/kind-down.sh and scripts/bench.sh:
# which container engine runs the kind node (podman for the locally built
# node image, Docker for the upstream one), podman's configuration, the
# node's own podman network, the network collision check, and the count of
# what a cluster leaves behind. Source it after scripts/lib.sh.

# The engine's CLI: docker or podman (set by use_podman / use_docker).
ENGINE="${ENGINE:-docker}"
# The podman network of the cluster's node (local node image only).
NETWORK=""
readonly SA_LAB_KIND_SUBNET_DEFAULT="10.89.240.0/24"

# node_network NAME: the podman network of kind cluster NAME's node.
node_network() { printf 'kind-%s\n' "$1"; }

# use_podman NAME: kind's podman provider on the node network of cluster NAME,
# podman configured by kind/containers.conf (ulimits lowered to the host's
# hard limits where those are lower).
use_podman() {
  local name="$1" conf nofile nproc hard
  ENGINE=podman
  DOCKER=podman
  NETWORK="$(node_network "${name}")"
  export KIND_EXPERIMENTAL_PROVIDER=podman KIND_EXPERIMENTAL_PODMAN_NETWORK="${NETWORK}" DOCKER
  nofile=20000
  nproc=32768
  hard="$(ulimit -Hn)"
  [[ "${hard}" == unlimited || "${hard}" -ge "${nofile}" ]] || nofile="${hard}"
  hard="$(ulimit -Hu)"
  [[ "${hard}" == unlimited || "${hard}" -ge "${nproc}" ]] || nproc="${hard}"
  conf="$(state_dir)/podman/containers.conf"
  mkdir -p "$(dirname "${conf}")"
  sed -e "s|\"nofile=20000:20000\"|\"nofile=${nofile}:${nofile}\"|" \
    -e "s|\"nproc=32768:32768\"|\"nproc=${nproc}:${nproc}\"|" \
    "${REPO_ROOT}/kind/containers.conf" >"${conf}.tmp"
  mv -f "${conf}.tmp" "${conf}"
  export CONTAINERS_CONF="${conf}"
}

use_docker() {
  ENGINE="${DOCKER:-docker}"
  unset KIND_EXPERIMENTAL_PROVIDER
}

# ensure_podman: rootful podman with runc and netavark answers; installs
# Debian's packages when root on Debian. /lib/modules must exist (kind mounts
# it into the node): an empty one is made if missing, and removed by
# kind-down once no sa-lab kind cluster is left.
ensure_podman() {
  [[ "$(id -u)" -eq 0 ]] ||
    die "the local node image runs under rootful podman: run this as root" \
      "(kind's nodes are privileged containers; rootless podman on cgroup v1 cannot run them)" \
      "with Docker instead: scripts/kind-up.sh --node-image upstream"
  # netavark and conmon live in /usr/lib/podman, off PATH.
  require_debian_packages "kind runs the local node image under podman (or use Docker: --node-image upstream)" \
    podman=podman,conmon runc=runc /usr/lib/podman/netavark=netavark,aardvark-dns
  local err
  err="$(podman info --format '{{.Host.OCIRuntime.Name}} {{.Host.CgroupManager}}' 2>&1)" ||
    die "podman does not answer with kind/containers.conf" "podman info said: ${err//$'\n'/ }"
  [[ "${err}" == "runc cgroupfs" ]] ||
    die "podman runs '${err}', expected 'runc cgroupfs' from kind/containers.conf (CONTAINERS_CONF=${CONTAINERS_CONF})"
  if [[ ! -e /lib/modules ]]; then
    mkdir /lib/modules
    mkdir -p "$(cache_root)"
    touch "$(cache_root)/kind-made-lib-modules"
    log "made an empty /lib/modules (kind mounts it into the node; kind-down removes it)"
  fi
}

# node_kubectl NAME ARGS...: the node's own kubectl as the cluster admin.
node_kubectl() {
  local name="$1"
  shift
  "${ENGINE}" exec -i "${name}-control-plane" kubectl --kubeconfig /etc/kubernetes/admin.conf "$@"
}

# node_has_image NAME TAG: the node's containerd has image TAG.
node_has_image() {
  "${ENGINE}" exec "$1-control-plane" crictl inspecti -q "$2" >/dev/null 2>&1
}

# --- networks -----------------------------------------------------------

ip4_to_int() {
  local a b c d
  IFS=. read -r a b c d <<<"$1"
  printf '%s\n' "$(((a << 24) | (b << 16) | (c << 8) | d))"
}

# cidr_overlap A B: the IPv4 ranges A and B (CIDR or single address) share an address.
cidr_overlap() {
  local a="$1" b="$2" n len mask s1 e1 s2 e2
  [[ "${a}" == */* ]] || a="${a}/32"
  [[ "${b}" == */* ]] || b="${b}/32"
  n="$(ip4_to_int "${a%/*}")"
  len="${a#*/}"
  mask=$(((0xFFFFFFFF << (32 - len)) & 0xFFFFFFFF))
  s1=$((n & mask))
  e1=$((s1 | (~mask & 0xFFFFFFFF)))
  n="$(ip4_to_int "${b%/*}")"
  len="${b#*/}"
  mask=$(((0xFFFFFFFF << (32 - len)) & 0xFFFFFFFF))
  s2=$((n & mask))
  e2=$((s2 | (~mask & 0xFFFFFFFF)))
  ((s1 <= e2 && s2 <= e1))
}

# host_ipv4_ranges SKIP_DEV: "range what" lines: the host's IPv4 routes (main
# table, no default) and addresses, skipping interface SKIP_DEV, and its
# resolvers.
host_ipv4_ranges() {
  local skip="$1" dest dev rest
  while read -r dest rest; do
    # A typed route (unreachable, blackhole, prohibit, ...) names its range second.
    if [[ ! "${dest}" =~ ^[0-9] && "${dest}" != default ]]; then
      read -r dest rest <<<"${rest} (${dest})"
    fi
    [[ "${dest}" =~ ^[0-9.]+(/[0-9]+)?$ ]] || continue
    dev="$(sed -n 's/.* dev \([^ ]*\).*/\1/p' <<<" ${rest}")"
    [[ -z "${skip}" || "${dev}" != "${skip}" ]] || continue
    printf '%s route %s %s\n' "${dest}" "${dest}" "${rest}"
  done < <(ip -4 route show table main 2>/dev/null)
  while read -r _ dev _ dest _; do
    [[ -z "${skip}" || "${dev}" != "${skip}" ]] || continue
    printf '%s address %s on %s\n' "${dest%/*}" "${dest}" "${dev}"
  done < <(ip -4 -o addr show 2>/dev/null)
  local conf
  for conf in /etc/resolv.conf /run/systemd/resolve/resolv.conf; do
    [[ -f "${conf}" ]] || continue
    sed -n 's/^[[:space:]]*nameserver[[:space:]]*\([0-9.]*\)[[:space:]]*$/\1/p' "${conf}" |
      while read -r dest; do printf '%s resolver %s (%s)\n' "${dest}" "${dest}" "${conf}"; done
  done
}

# config_subnet FILE KEY: podSubnet or serviceSubnet in a kind config.
config_subnet() {
  sed -n "s|^\s*$2:\s*\"\{0,1\}\([0-9./]*\)\"\{0,1\}\s*\$|\1|p" "$1" | head -n1
}

# node_subnet NODE_IMAGE: the IPv4 subnet of the node's network.
node_subnet() {
  if [[ "$1" == local ]]; then
    printf '%s\n' "${SA_LAB_KIND_SUBNET:-${SA_LAB_KIND_SUBNET_DEFAULT}}"
  else
    "${ENGINE}" network inspect kind --format '{{range .IPAM.Config}}{{.Subnet}} {{end}}' 2>/dev/null |
      tr ' ' '\n' | grep -E '^[0-9.]+/[0-9]+$' | head -n1 || true
  fi
}

# check_networks NAME NODE_IMAGE: the node, Pod and Service networks collide
# neither with each other nor with the host's routes, addresses or resolvers;
# else stops with what collides and what to change.
check_networks() {
  local name="$1" node_image="$2" config skip="" ours=() cidr range kind detail problems=()
  if [[ "${node_image}" == local ]]; then
    config="${REPO_ROOT}/kind/cluster-local.yaml"
    if podman network exists "$(node_network "${name}")" 2>/dev/null; then
      skip="$(podman network inspect "$(node_network "${name}")" --format '{{.NetworkInterface}}')"
    fi
  else
    config="${REPO_ROOT}/kind/cluster.yaml"
  fi
  local pod service node
  pod="$(config_subnet "${config}" podSubnet)"
  service="$(config_subnet "${config}" serviceSubnet)"
  node="$(node_subnet "${node_image}")"
  [[ -n "${pod}" && -n "${service}" ]] || die "no podSubnet/serviceSubnet in ${config}"
  ours=("Pod network ${pod} (podSubnet in ${config#"${REPO_ROOT}"/})"
    "Service network ${service} (serviceSubnet in ${config#"${REPO_ROOT}"/})")
  [[ -z "${node}" ]] || ours+=("node network ${node} (SA_LAB_KIND_SUBNET)")
  local i j
  for ((i = 0; i < ${#ours[@]}; i++)); do
    cidr="$(awk '{print $3}' <<<"${ours[i]}")"
    for ((j = i + 1; j < ${#ours[@]}; j++)); do
      if cidr_overlap "${cidr}" "$(awk '{print $3}' <<<"${ours[j]}")"; then
        problems+=("the ${ours[i]} overlaps the ${ours[j]}")
      fi
    done
    while read -r range kind detail; do
      if cidr_overlap "${cidr}" "${range}"; then
        problems+=("the ${ours[i]} collides with the host's ${kind} ${detail}")
      fi
    done < <(host_ipv4_ranges "${skip}")
  done
  if [[ ${#problems[@]} -gt 0 ]]; then
    die "the cluster's networks collide with this host's: nothing was created" "${problems[@]}" \
      "pick free ranges (see ip route and /etc/resolv.conf) and set them where named above"
  fi
  ok "networks checked against the host's routes and resolvers: Pods ${pod}, Services ${service}${node:+, nodes ${node}}"
}

# int_to_ip4 N: dotted quad.
int_to_ip4() {
  printf '%d.%d.%d.%d\n' $((($1 >> 24) & 255)) $((($1 >> 16) & 255)) $((($1 >> 8) & 255)) $(($1 & 255))
}

# ensure_node_network NAME: the node's podman network: internal (the node
# gets no default route, podman adds no masquerading or port forwarding),
# no DNS server, labelled as the cluster's. Its first address is the host's
# end of the bridge, so the host (and only the host) reaches the node.
ensure_node_network() {
  local name="$1" net subnet gateway
  net="$(node_network "${name}")"
  subnet="$(node_subnet local)"
  gateway="$(int_to_ip4 $(($(ip4_to_int "${subnet%/*}") + 1)))"
  if podman network exists "${net}" 2>/dev/null; then
    [[ "$(podman network inspect "${net}" --format '{{index .Labels "io.sa-lab.kind-cluster"}}')" == "${name}" ]] ||
      die "podman network ${net} exists but is not sa-lab's for cluster ${name}" \
        "remove it (podman network rm ${net}) or pick another cluster name"
    return 0
  fi
  podman network create --internal --disable-dns --subnet "${subnet}" --gateway "${gateway}" \
    --label "io.sa-lab.kind-cluster=${name}" "${net}" >/dev/null
  ok "podman network ${net} (${subnet}, internal: no route off it; the host is ${gateway})"
}

# node_ip NAME: the node's address on its podman network.
node_ip() {
  podman inspect "$1-control-plane" \
    --format "{{(index .NetworkSettings.Networks \"$(node_network "$1")\").IPAddress}}"
}

# check_no_way_out NAME: the node has no default route and cannot reach the
# host's resolver: nothing it or a Pod sends can leave the machine.
check_no_way_out() {
  local name="$1" node="$1-control-plane" routes resolver
  routes="$(podman exec "${node}" ip -4 route show default)"
  [[ -z "${routes}" ]] ||
    die "the node ${node} has a default route (${routes}): traffic could leave the machine" \
      "its network must be internal: scripts/kind-down.sh --name ${name}, then kind-up again"
  resolver="$(sed -n 's/^[[:space:]]*nameserver[[:space:]]*\([0-9.]*\)[[:space:]]*$/\1/p' /etc/resolv.conf | head -n1)"
  if [[ -n "${resolver}" ]] && podman exec "${node}" ip -4 route get "${resolver}" >/dev/null 2>&1; then
    die "the node ${node} has a route to the host's resolver ${resolver}" \
      "its network must be internal: scripts/kind-down.sh --name ${name}, then kind-up again"
  fi
  ok "the node has no route off its network (no default route, none to the host's resolver ${resolver:-})"
}

# pod_connect NAME ADDR PORT: from the network namespace of the CoreDNS Pod
# (a Pod like any lab Pod: bridge CNI, default route via the node), opens a
# TCP connection; prints "connected" or the error.
pod_connect() {
  # shellcheck disable=SC2016 # expanded by the node's bash
  podman exec "$1-control-plane" bash -c '
    pod="$(crictl pods --name coredns --state ready -q | head -n1)"
    [ -n "${pod}" ] || { echo "no ready CoreDNS Pod"; exit 0; }
    ns="$(crictl inspectp "${pod}" | jq -r ".info.runtimeSpec.linux.namespaces[] | select(.type == \"network\") | .path")"
    nsenter --net="${ns}" timeout 3 bash -c "exec 3<>/dev/tcp/\$1/\$2" connect "$0" "$1" 2>&1 && echo connected || true
  ' "$2" "$3" | tail -n1
}

# check_pod_no_way_out NAME: a Pod reaches the API server through the
# kubernetes Service (the first address of serviceSubnet), and not the
# host's resolver (off the node's network).
check_pod_no_way_out() {
  local name="$1" resolver out service api
  service="$(config_subnet "${REPO_ROOT}/kind/cluster-local.yaml" serviceSubnet)"
  api="$(int_to_ip4 $(($(ip4_to_int "${service%/*}") + 1)))"
  out="$(pod_connect "${name}" "${api}" 443)"
  [[ "${out}" == connected ]] ||
    die "a Pod cannot reach the API server at the kubernetes Service ${api}:443: ${out}"
  resolver="$(sed -n 's/^[[:space:]]*nameserver[[:space:]]*\([0-9.]*\)[[:space:]]*$/\1/p' /etc/resolv.conf | head -n1)"
  [[ -n "${resolver}" ]] || return 0
  out="$(pod_connect "${name}" "${resolver}" 53)"
  [[ "${out}" != connected ]] ||
    die "a Pod connected to the host's resolver ${resolver}:53: traffic leaves the node's network"
  ok "a Pod reaches the API server's Service, and not the host's resolver ${resolver}:53 (${out:-no answer in 3 s})"
}

# remove_node_network NAME: removes the node's podman network if it is ours.
remove_node_network() {
  local name="$1" net
  [[ "${ENGINE}" == podman ]] || return 0
  net="$(node_network "${name}")"
  podman network exists "${net}" 2>/dev/null || return 0
  [[ "$(podman network inspect "${net}" --format '{{index .Labels "io.sa-lab.kind-cluster"}}')" == "${name}" ]] || return 0
  podman network rm "${net}" >/dev/null
}

# release_lib_modules: removes the empty /lib/modules ensure_podman made, once
# no sa-lab kind cluster is left.
release_lib_modules() {
  local marker
  marker="$(cache_root)/kind-made-lib-modules"
  [[ -f "${marker}" ]] || return 0
  [[ -z "$(podman ps -a -q --filter label=io.x-k8s.kind.cluster)" ]] || return 0
  rmdir /lib/modules 2>/dev/null && log "removed the empty /lib/modules kind-up made"
  rm -f -- "${marker}"
}

# leftovers NAME: what podman still holds of kind cluster NAME, one
# "count what" line each: containers, volumes, networks.
leftovers() {
  local name="$1"
  printf '%s containers\n' "$(podman ps -a -q --filter "label=io.x-k8s.kind.cluster=${name}" | wc -l)"
  printf '%s volumes\n' "$(podman volume ls -q --filter "label=${name}-control-plane" | wc -l)"
  printf '%s networks\n' "$(podman network ls -q --filter "name=^$(node_network "${name}")\$" | wc -l)"
}
