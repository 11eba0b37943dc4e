# syntax=docker/dockerfile:1
# The consentgate image: one binary, `consentgate`, whose subcommand picks the service
# (`serve consent|profile|recommendation`, `policy validate`, `ledger verify`).
#
#   docker build -t consentgate:0.1.0 .
#
# The runtime stage is distroless (glibc and CA certificates, no shell, no package manager) and
# runs as the numeric user 65532. `serve` writes nothing to disk: the image runs with a
# read-only root filesystem, its configuration coming only from flags and environment variables
# and the files those name (policy, tokens, signing key), mounted read-only.

ARG RUST_VERSION=1.94

FROM rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /src
# The workspace (see .dockerignore for what is sent: sources, manifests, the lock file,
# migrations, proto/, policy/). protox compiles proto/ in Rust: no protoc needed.
COPY . .
# Build caches (crates.io sources, target/) live in BuildKit cache mounts, not in a layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin consentgate \
    && install -D -m 0755 target/release/consentgate /out/consentgate

# Debian 12 (bookworm), as the builder: the binary links the same glibc.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
LABEL org.opencontainers.image.title="consentgate" \
      org.opencontainers.image.description="Consent-gated personalization: consent, profile and recommendation services over gRPC" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/consentgate /usr/local/bin/consentgate
# distroless' nonroot user, by number so that Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
# gRPC: consent 50051, profile 50052, recommendation 50053; Prometheus metrics 9464.
EXPOSE 50051 50052 50053 9464
ENTRYPOINT ["/usr/local/bin/consentgate"]
CMD ["--help"]
