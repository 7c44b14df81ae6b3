# shellcheck shell=bash
# Shared by the scripts in scripts/: status lines in the style of kind
# (` • doing`, ` ✓ done`, ` ! warning`, ` ✗ failed`) on stderr, usage from a
# script's header comment, and sa-lab's state directory layout (the same rule
# as sa_lab::paths::home()). Source it after setting REPO_ROOT.

log() { printf ' • %s\n' "$*" >&2; }
ok() { printf ' ✓ %s\n' "$*" >&2; }
warn() { printf ' ! %s\n' "$*" >&2; }
fail() { printf ' ✗ %s\n' "$*" >&2; }

# die MESSAGE [DETAIL...]: a failure line, indented details, exit 1.
die() {
  fail "$1"
  shift
  local line
  for line in "$@"; do printf '   %s\n' "${line}" >&2; done
  exit 1
}

# Prints the calling script's header comment (line 2 up to `set -o`).
usage() {
  sed -n '2,/^set -o/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

# $SA_LAB_HOME, else $XDG_STATE_HOME/sa-lab, else ~/.local/state/sa-lab.
state_dir() {
  if [[ -n "${SA_LAB_HOME:-}" ]]; then
    printf '%s\n' "${SA_LAB_HOME}"
  else
    printf '%s/sa-lab\n' "${XDG_STATE_HOME:-${HOME}/.local/state}"
  fi
}

# $SA_LAB_CACHE, else $XDG_CACHE_HOME/sa-lab, else ~/.cache/sa-lab (the same
# rule as sa_lab::paths::cache()): builds cached per version (Kubernetes,
# kind, the kind node image's parts, the kubelet node's binaries).
cache_root() {
  printf '%s\n' "${SA_LAB_CACHE:-${XDG_CACHE_HOME:-${HOME}/.cache}/sa-lab}"
}

# module_version TOOL MODULE: the version of MODULE that tools/TOOL/go.mod
# requires (the builder modules pin every Go binary sa-lab builds).
module_version() {
  sed -n "s|^\s*$2 \(v[0-9.]*\).*\$|\1|p" "${REPO_ROOT}/tools/$1/go.mod" | head -n1
}

# k8s_ldflags VERSION: the linker flags every Kubernetes command is built
# with (stripped, its version stamped as a release's). One definition: the
# control plane's and the node's builds share the Go build cache only if
# they agree.
k8s_ldflags() {
  local version="$1" minor
  minor="$(echo "${version}" | cut -d. -f2)"
  printf '%s' "-s -w -X k8s.io/component-base/version.gitVersion=${version}" \
    " -X k8s.io/component-base/version.gitMajor=1" \
    " -X k8s.io/component-base/version.gitMinor=${minor}" \
    " -X k8s.io/component-base/version.gitTreeState=clean" \
    " -X k8s.io/client-go/pkg/version.gitVersion=${version}"
}

cluster_dir() { printf '%s/clusters/%s\n' "$(state_dir)" "$1"; }
logs_dir() { printf '%s/logs/kind-%s\n' "$(state_dir)" "$1"; }

# require_engine WHY HINT: the container CLI ($DOCKER, default docker) is
# installed and an engine answers; else say WHY it is needed and HINT.
require_engine() {
  local why="$1" hint="$2" err
  command -v "${DOCKER:-docker}" >/dev/null 2>&1 ||
    die "${DOCKER:-docker} is not installed: ${why}" "${hint}"
  if ! err="$("${DOCKER:-docker}" info --format '{{.ServerVersion}}' 2>&1 >/dev/null)"; then
    die "the ${DOCKER:-docker} CLI is installed but no container engine answers" \
      "start the engine (Docker Desktop, 'sudo systemctl start docker', or set DOCKER_HOST)" \
      "${DOCKER:-docker} info said: ${err//$'\n'/ }"
  fi
}

# Is there a kind cluster named $1? ($KIND, default kind.)
kind_cluster_exists() {
  "${KIND:-kind}" get clusters 2>/dev/null | grep -qx -- "$1"
}

# Saves kind cluster $1's logs under logs_dir, in a directory per run.
save_kind_logs() {
  local name="$1" dest
  dest="$(logs_dir "${name}")/$(date -u +%Y%m%dT%H%M%SZ)"
  mkdir -p "${dest}"
  if "${KIND:-kind}" export logs "${dest}" --name "${name}" >/dev/null 2>&1; then
    ok "cluster logs saved to ${dest}"
  else
    warn "could not save the cluster's logs (kind export logs failed)"
  fi
}

# require_debian_packages WHY COMMAND=PACKAGE[,PACKAGE]...: each COMMAND is on
# PATH, or its Debian PACKAGEs are installed with apt-get when running as
# root; else exit, saying WHY the command is needed and how to install it.
require_debian_packages() {
  local why="$1" pair missing=() pkgs
  shift
  for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null 2>&1 && continue
    IFS=, read -r -a pkgs <<<"${pair#*=}"
    missing+=("${pkgs[@]}")
  done
  ((${#missing[@]} == 0)) && return 0
  if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    die "${missing[*]} not installed: ${why}" \
      "Debian/Ubuntu: sudo apt-get install -y --no-install-recommends ${missing[*]}"
  fi
  log "installing ${missing[*]} (Debian packages): ${why}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    die "apt-get could not install ${missing[*]}"
}

# The build flags of every Go program sa-lab builds. Their binaries are
# stripped (-ldflags -s -w), so the compiler need not write DWARF at all:
# -dwarf=false makes a cold build of the control plane 8 % less work.
# go_package_count passes them too, so its count is what the build compiles;
# the control plane's and the node's builds share the Go build cache only if
# their flags agree.
GO_BUILD_FLAGS=(-trimpath "-gcflags=all=-dwarf=false")
readonly GO_BUILD_FLAGS

# go_compile ARGS...: `go build` with GO_BUILD_FLAGS and cgo off, its
# compiler collecting garbage less often (GOGC=400: 7 % less work on a cold
# control-plane build, peak memory under 3 GiB; 1000 saves no more).
go_compile() {
  GOGC=400 CGO_ENABLED=0 go build "${GO_BUILD_FLAGS[@]}" "$@"
}

# go_progress [EVERY] [TOTAL]: reads `go build -v` output, prints a progress
# line every EVERY (default 250) packages and passes through anything that
# is not a package path (errors, warnings). Module downloads are counted,
# not listed. With TOTAL (go_package_count's: what a cold build compiles),
# each line also says about how long is left.
go_progress() {
  local every="${1:-250}" total="${2:-0}" n=0 fetched=0 line start="${SECONDS}" took
  while IFS= read -r line; do
    if [[ "${line}" == "go: downloading "* ]]; then
      fetched=$((fetched + 1))
      ((fetched % 100)) || printf '   ... %d Go modules downloaded (%ds)\n' "${fetched}" "$((SECONDS - start))" >&2
    elif [[ "${line}" =~ ^[A-Za-z0-9._/~+-]+$ ]]; then
      n=$((n + 1))
      ((n % every == 0)) || continue
      took=$((SECONDS - start))
      if ((total > n)); then
        printf '   ... %d of %d packages compiled (%ds; about %ds left, then linking)\n' \
          "${n}" "${total}" "${took}" "$((took * (total - n) / n))" >&2
      else
        printf '   ... %d packages compiled (%ds)\n' "${n}" "${took}" >&2
      fi
    else
      printf '%s\n' "${line}" >&2
    fi
  done
}

# go_package_count DIR PKG...: downloads the modules PKG... need (module DIR,
# progress on stderr) and prints how many packages `go build -trimpath` of
# them would compile: the stale ones, the standard library included (all on
# a cold machine). Nothing on failure: the build that follows says why.
go_package_count() {
  local dir="$1"
  shift
  (cd "${dir}" && go list "${GO_BUILD_FLAGS[@]}" -deps -f '{{if .Stale}}{{.ImportPath}}{{end}}' "$@" 2> >(go_progress >&2)) |
    grep -c . || true
}

# Can the kubelet node run here? Root with CAP_NET_ADMIN and CAP_SYS_ADMIN
# (the rule of sa_lab::kubelet::host::require_root).
kubelet_node_possible() {
  local cap
  [[ "$(id -u)" -eq 0 ]] || return 1
  cap="$(sed -n 's/^CapEff:[[:space:]]*//p' /proc/self/status)"
  (((16#${cap} >> 12) & 1 && (16#${cap} >> 21) & 1))
}

# oci_archive ROOTFS REF OUT USER ENTRYPOINT...: packs directory ROOTFS as a
# one-layer image (FROM scratch) with umoci and writes it as an OCI archive
# (a tar of the OCI image layout) to OUT. REF is the full name, e.g.
# docker.io/library/sa-lab-labs:0.1.0; the index carries it in the
# annotations containerd's own export writes (io.containerd.image.name and
# org.opencontainers.image.ref.name), so `ctr images import` and
# `kind load image-archive` name the image REF. No daemon, no registry.
oci_archive() {
  local rootfs="$1" ref="$2" out="$3" user="$4"
  shift 4
  local tag="${ref##*:}" work layout args=() e rootless=()
  [[ "$(id -u)" -eq 0 ]] || rootless=(--rootless)
  for e in "$@"; do args+=(--config.entrypoint "${e}"); done
  work="$(mktemp -d "${TMPDIR:-/tmp}/sa-lab-oci.XXXXXX")"
  layout="${work}/oci"
  # The image's / (a temporary directory here, 0700) is world-readable in
  # any image; fixed timestamps: the same files give the same digests.
  chmod 0755 "${rootfs}"
  find "${rootfs}" -exec touch -h -d @0 {} +
  (
    set -o errexit
    umoci init --layout "${layout}"
    umoci new --image "${layout}:${tag}"
    umoci insert "${rootless[@]}" --image "${layout}:${tag}" \
      --history.created 1970-01-01T00:00:00Z --history.created_by "sa-lab: ${ref}" "${rootfs}" /
    umoci config --image "${layout}:${tag}" --created 1970-01-01T00:00:00Z --no-history \
      --os linux --architecture amd64 --config.user "${user}" "${args[@]}" \
      --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --config.workingdir /
    umoci gc --layout "${layout}"
    jq --arg name "${ref}" --arg tag "${tag}" \
      '.manifests[0].annotations = {"io.containerd.image.name": $name, "org.opencontainers.image.ref.name": $tag}' \
      "${layout}/index.json" >"${work}/index.json"
    mv "${work}/index.json" "${layout}/index.json"
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "${layout}" -cf "${out}.tmp" .
    mv "${out}.tmp" "${out}"
  ) || {
    rm -rf "${work}" "${out}.tmp"
    return 1
  }
  rm -rf "${work}"
}
