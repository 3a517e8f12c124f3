# The hookgate container image: `gateway serve`, configured by HOOKGATE_* environment variables.
#
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" -t hookgate:0.1.0 .
#   docker run --rm --read-only -p 8080:8080 -v hookgate-data:/var/lib/hookgate \
#     -v /path/to/rules:/etc/hookgate/rules:ro -v /path/to/secrets:/etc/hookgate/secrets:ro hookgate:0.1.0
#
# Two stages: Rust builds the release binary; the runtime is distroless `cc` (glibc, libgcc, CA
# certificates, no shell, no package manager) running as a numeric non-root user. The process writes
# only under /var/lib/hookgate (the queue, and SQLite's temporary files), so the root filesystem can be
# mounted read-only. docs/deploy.md describes the image and how it was checked;
# deploy/build-image-offline.sh builds an image with the same runtime configuration without pulling
# anything (FROM scratch), reusing the block between the `runtime-config` markers below verbatim.

ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# Everything the crate needs to build (see .dockerignore for what is left out).
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin gateway \
 && install -D -m 0755 target/release/gateway /out/usr/local/bin/gateway \
 && install -d -m 0750 /out/var/lib/hookgate

FROM ${RUNTIME_IMAGE} AS runtime
COPY --from=build /out/usr/local/bin/gateway /usr/local/bin/gateway
COPY --from=build --chown=65532:65532 /out/var/lib/hookgate /var/lib/hookgate

# BEGIN runtime-config (deploy/build-image-offline.sh copies these lines into its image unchanged)
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="hookgate" \
      org.opencontainers.image.description="A declarative webhook gateway: verify, match, deliver" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
ENV HOOKGATE_RULES=/etc/hookgate/rules/rules.hook \
    HOOKGATE_DATA=/var/lib/hookgate \
    HOOKGATE_LISTEN=0.0.0.0:8080 \
    HOOKGATE_ADMIN=0.0.0.0:9090 \
    HOOKGATE_LOG_FORMAT=json \
    SQLITE_TMPDIR=/var/lib/hookgate
USER 65532:65532
WORKDIR /var/lib/hookgate
VOLUME ["/var/lib/hookgate"]
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/gateway"]
CMD ["serve"]
# END runtime-config
