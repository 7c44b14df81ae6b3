# syntax=docker/dockerfile:1
#
# The sa-lab lab image: every lab binary (labs/*: lab-toolbox, lab-01-..., ...)
# in /usr/local/bin, run as a non-root user. Lab Pods name it as
# sa-lab-labs:<workspace version> (lab_kit::LAB_IMAGE). Build it with
# scripts/build-lab-image.sh, which derives that tag from Cargo.toml; never
# tag it :latest (kind load + imagePullPolicy: IfNotPresent rely on a fixed tag).
#
# Base images are pinned by version (Rust 1.95.0 on Debian 13 "trixie", the
# same Debian release at run time so the glibc the binaries link against is
# there). Not pinned by digest: add @sha256:... from your own registry mirror
# if you need bit-for-bit rebuilds.

ARG RUST_VERSION=1.95.0
ARG DEBIAN_RELEASE=trixie

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
WORKDIR /src
# The whole workspace (the build context is trimmed by .dockerignore): cargo
# needs every member's manifest to load the workspace, and --locked keeps the
# dependency versions those of Cargo.lock.
COPY . .
# Build every binary of every package under labs/ (lab-kit is a library and
# contributes none), then copy the lab-* executables out of the cache mount.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    set -eux; \
    packages=""; \
    for manifest in labs/*/Cargo.toml; do \
      name="$(sed -n 's/^name[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$manifest" | head -n1)"; \
      packages="$packages -p $name"; \
    done; \
    cargo build --release --locked --bins $packages; \
    mkdir -p /out; \
    find target/release -maxdepth 1 -type f -perm -u+x -name 'lab-*' -exec cp {} /out/ \; ; \
    ls -l /out; \
    test -n "$(ls /out)"

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
ARG SA_LAB_VERSION=unknown
LABEL org.opencontainers.image.title="sa-lab-labs" \
      org.opencontainers.image.description="sa-lab lab binaries: programs that run in a Pod as its ServiceAccount" \
      org.opencontainers.image.version="${SA_LAB_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# A named user for readability, and a numeric USER: the kubelet can only verify
# runAsNonRoot against a numeric user.
RUN groupadd --gid 65532 lab \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin lab
COPY --from=builder /out/ /usr/local/bin/
USER 65532:65532
# No ENTRYPOINT: every lab Pod names its binary in `command`.
CMD ["lab-toolbox", "whoami"]
