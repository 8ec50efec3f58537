# syntax=docker/dockerfile:1
#
# tokenvault container image.
#
#   docker build -t registry.example.com/tokenvault:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" .
#
# Needs BuildKit (the default builder of current Docker): the cargo registry
# and the target directory live in cache mounts, so a rebuild after a source
# change recompiles only the crates that changed. Nothing secret is copied in
# (.dockerignore keeps key files, databases and .git out of the context); all
# configuration arrives at run time (config file, TOKENVAULT_* environment).

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# ---------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS builder

WORKDIR /src
# SQLX_OFFLINE: sqlx compile-time checks use committed .sqlx/ data, never a live database.
# STRIP=debuginfo: keep symbol names for backtraces, drop the debug info.
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0 \
    SQLX_OFFLINE=true \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo

COPY . .

# protoc comes from the protoc-bin-vendored build dependency; no apt packages needed.
RUN --mount=type=cache,id=tokenvault-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=tokenvault-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=tokenvault-target,target=/src/target,sharing=locked \
    cargo build --release --locked --bin tokenvault \
 && install -D -m 0755 target/release/tokenvault /out/tokenvault

# ---------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE}

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=""

LABEL org.opencontainers.image.title="tokenvault" \
      org.opencontainers.image.description="OAuth integration broker and token vault for AI-agent platforms" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"

COPY --from=builder /out/tokenvault /usr/local/bin/tokenvault

# distroless "nonroot": uid/gid 65532, no shell. With no configuration,
# `serve` runs on an embedded SQLite file in the working directory, which
# this user owns; in Kubernetes the chart mounts a config and the root
# filesystem is read-only.
USER 65532:65532
WORKDIR /home/nonroot

# gRPC (tokenvault.v1, health, reflection) and HTTP (/oauth/callback, /healthz, /readyz, /metrics)
EXPOSE 50051 8080

ENTRYPOINT ["/usr/local/bin/tokenvault"]
CMD ["serve"]
