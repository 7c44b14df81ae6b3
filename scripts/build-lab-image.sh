#!/usr/bin/env bash
# Build the lab image every lab manifest names: sa-lab-labs:<workspace version>.
#
# The tag comes from Cargo.toml's [workspace.package] version, the same version
# lab_kit::LAB_IMAGE is compiled from, so the tag the manifests name is the tag
# that was built. Never :latest.
#
# By default the image is built here, without Docker and without pulling
# anything: the lab binaries cargo builds (labs/*), the shared libraries they
# link (glibc, libgcc_s: copied from this machine, the ones they were linked
# against) and a `lab` user, packed FROM scratch with umoci into an OCI
# archive under ~/.cache/sa-lab/images/. The archive's path is printed on
# stdout; `ctr images import` (the kubelet node) and `kind load image-archive`
# name the image docker.io/library/sa-lab-labs:<version>. The same binaries
# give the same archive, which is then reused.
#
#   scripts/build-lab-image.sh                   build the OCI archive, print its path
#   scripts/build-lab-image.sh --bin-dir DIR     pack the lab-* binaries in DIR instead of
#                                                building them (default: cargo build, target/debug)
#   scripts/build-lab-image.sh --print-tag       print the tag, build nothing
#
# With Docker (or podman: DOCKER=podman), from the Dockerfile, into the
# engine's image store; prints the tag (or REF):
#
#   scripts/build-lab-image.sh --docker                  build sa-lab-labs:<version>
#   scripts/build-lab-image.sh --docker --image REF      also tag it as REF (a registry
#                                                        reference for the `current` provider)
#   scripts/build-lab-image.sh --docker --image REF --push   ... and push REF
#
# Progress goes to stderr. DOCKER (default: docker) names the container CLI.
set -o errexit -o nounset -o pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${REPO_ROOT}/scripts/lib.sh"
readonly IMAGE_NAME="sa-lab-labs"
DOCKER="${DOCKER:-docker}"

# The version in Cargo.toml's [workspace.package] table.
workspace_version() {
  local version
  version="$(awk '
    /^\[/ { in_table = ($0 == "[workspace.package]") ; next }
    in_table && /^[[:space:]]*version[[:space:]]*=/ {
      sub(/^[^=]*=[[:space:]]*"/, ""); sub(/".*$/, ""); print; exit
    }' "${REPO_ROOT}/Cargo.toml")"
  [[ -n "${version}" ]] || die "no version in [workspace.package] of ${REPO_ROOT}/Cargo.toml"
  printf '%s\n' "${version}"
}

image_tag() { printf '%s:%s\n' "${IMAGE_NAME}" "$(workspace_version)"; }

# The lab binaries (labs/*), in target/debug: the same build as
# scripts/test.sh's (the whole workspace, so the dependencies' features and
# artifacts are shared with it and a second build is a no-op).
cargo_build_labs() {
  log "building the lab binaries (cargo build --workspace --bins)"
  (cd "${REPO_ROOT}" && cargo build --workspace --bins --locked --quiet >&2)
  printf '%s/debug\n' "${CARGO_TARGET_DIR:-${REPO_ROOT}/target}"
}

# lab_binaries DIR: the lab-* executables in DIR, one per line.
lab_binaries() {
  find "$1" -maxdepth 1 -type f -perm -u+x -name 'lab-*' ! -name '*.d' | sort
}

# stage_rootfs ROOT BIN...: the image's files: the binaries in /usr/local/bin
# (debug info stripped), every shared library they load at the path the
# loader looks for it, /etc/passwd and /etc/group with the lab user, /tmp.
stage_rootfs() {
  local root="$1" bin lib
  shift
  mkdir -p "${root}/usr/local/bin" "${root}/etc" "${root}/tmp"
  chmod 1777 "${root}/tmp"
  for bin in "$@"; do
    cp "${bin}" "${root}/usr/local/bin/"
    strip --strip-debug "${root}/usr/local/bin/${bin##*/}"
  done
  # `ldd` names each library by the path the loader resolved (and the
  # loader itself by its PT_INTERP path); copy the file behind each.
  while IFS= read -r lib; do
    mkdir -p "${root}${lib%/*}"
    cp -L "${lib}" "${root}${lib}"
  done < <(for bin in "$@"; do ldd "${bin}" 2>/dev/null || true; done |
    grep -o '/[^ ]*' | sort -u)
  printf 'root:x:0:0:root:/root:/usr/sbin/nologin\nlab:x:65532:65532:lab:/nonexistent:/usr/sbin/nologin\n' >"${root}/etc/passwd"
  printf 'root:x:0:\nlab:x:65532:\n' >"${root}/etc/group"
}

# build_local BIN_DIR: the OCI archive of the lab image, built without Docker.
build_local() {
  local bin_dir="$1" version tag bins=() key cache out root
  require_debian_packages "the lab image is packed here (umoci, jq; strip drops debug info)" \
    umoci=umoci jq=jq strip=binutils
  version="$(workspace_version)"
  tag="${IMAGE_NAME}:${version}"
  mapfile -t bins < <(lab_binaries "${bin_dir}")
  [[ ${#bins[@]} -gt 0 ]] || die "no lab-* binaries in ${bin_dir}" \
    "build them with: cargo build --bins (or pass --bin-dir DIR)"
  # The archive is named by what goes in: the binaries and this script.
  key="$(cat "${bins[@]}" "${BASH_SOURCE[0]}" "${REPO_ROOT}/scripts/lib.sh" | sha256sum | cut -c1-16)"
  cache="$(cache_root)/images"
  out="${cache}/${IMAGE_NAME}-${version}-${key}.tar"
  if [[ -f "${out}" ]]; then
    ok "${tag}: cached (${out##*/})"
    printf '%s\n' "${out}"
    return 0
  fi
  mkdir -p "${cache}"
  log "packing ${tag} from ${#bins[@]} lab binaries in ${bin_dir} (umoci, FROM scratch)"
  root="$(mktemp -d "${TMPDIR:-/tmp}/sa-lab-labs-root.XXXXXX")"
  # shellcheck disable=SC2064 # expand now: the trap must remove this dir
  trap "rm -rf '${root}'" EXIT
  stage_rootfs "${root}" "${bins[@]}"
  oci_archive "${root}" "docker.io/library/${tag}" "${out}" 65532:65532
  rm -rf "${root}"
  trap - EXIT
  # Keep the three newest archives of this version; older ones are stale.
  find "${cache}" -maxdepth 1 -name "${IMAGE_NAME}-${version}-*.tar" -printf '%T@ %p\n' |
    sort -rn | tail -n +4 | cut -d' ' -f2- | xargs -r rm -f
  ok "built ${tag} ($(du -h "${out}" | cut -f1))"
  printf '%s\n' "${out}"
}

# Fails with a clear message when the CLI is missing or has no engine behind it.
check_ref() {
  local ref="$1"
  [[ "${ref}" =~ ^[^[:space:]]+$ ]] || die "--image ${ref}: an image reference has no spaces"
  [[ "${ref}" != *:latest ]] || die "--image ${ref}: never :latest; name the version, e.g. <registry>/sa-lab-labs:$(workspace_version)"
  local last="${ref##*/}"
  [[ "${last}" == *:* || "${last}" == *@* ]] ||
    die "--image ${ref}: give a tag (an untagged reference means :latest)"
}

build() {
  local tag="$1" version="$2"
  log "building ${tag} from ${REPO_ROOT}/Dockerfile (a cold build compiles every lab: several minutes)"
  DOCKER_BUILDKIT=1 "${DOCKER}" build \
    --file "${REPO_ROOT}/Dockerfile" \
    --build-arg "SA_LAB_VERSION=${version}" \
    --tag "${tag}" \
    "${REPO_ROOT}" >&2
  ok "built ${tag}"
}

main() {
  local print_tag=0 push=0 extra_ref="" docker=0 bin_dir=""
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --print-tag) print_tag=1 ;;
      --docker) docker=1 ;;
      --bin-dir)
        [[ $# -ge 2 ]] || die "--bin-dir needs a directory holding the lab-* binaries"
        bin_dir="$2"
        shift
        ;;
      --bin-dir=*) bin_dir="${1#--bin-dir=}" ;;
      --image)
        [[ $# -ge 2 ]] || die "--image needs a reference, e.g. registry.example.com/sa-lab-labs:$(workspace_version)"
        extra_ref="$2"
        shift
        ;;
      --image=*) extra_ref="${1#--image=}" ;;
      --push) push=1 ;;
      -h | --help)
        usage
        return 0
        ;;
      *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
  done

  local version tag
  version="$(workspace_version)"
  tag="${IMAGE_NAME}:${version}"
  if [[ "${print_tag}" -eq 1 ]]; then
    printf '%s\n' "${tag}"
    return 0
  fi
  if [[ "${docker}" -eq 0 ]]; then
    [[ -z "${extra_ref}" && "${push}" -eq 0 ]] ||
      die "--image and --push build with Docker: add --docker" \
        "(the default build makes a local OCI archive for the kubelet node and kind, no registry)"
    [[ -n "${bin_dir}" ]] || bin_dir="$(cargo_build_labs)"
    build_local "${bin_dir}"
    return 0
  fi
  [[ -z "${bin_dir}" ]] || die "--bin-dir packs local binaries; the --docker build compiles them in its builder stage"
  [[ -z "${extra_ref}" ]] || check_ref "${extra_ref}"
  [[ "${push}" -eq 0 || -n "${extra_ref}" ]] ||
    die "--push needs --image REF: ${tag} is a local name; push a registry reference"

  require_engine "the lab image is built with Docker (or podman: DOCKER=podman)" \
    "install Docker Engine or Docker Desktop, then run this script again"
  build "${tag}" "${version}"
  if [[ -n "${extra_ref}" ]]; then
    "${DOCKER}" tag "${tag}" "${extra_ref}"
    ok "tagged ${extra_ref}"
    if [[ "${push}" -eq 1 ]]; then
      log "pushing ${extra_ref}"
      "${DOCKER}" push "${extra_ref}" >&2
      ok "pushed ${extra_ref}"
    fi
    printf '%s\n' "${extra_ref}"
  else
    printf '%s\n' "${tag}"
  fi
}

# Only run when executed, so tests can source the functions.
if [[ "${BASH_SOURCE[0]}" == "${0}" ]]; then
  main "$@"
fi
