# syntax=docker/dockerfile:1
# imipflow binaries: imip-ingest, imip-processor, imip-ctl, imip-publisher, imip-manager.
# imip-ingest is the static deployable build (bench/README.md).
# Runtime: debian:bookworm-slim + the five binaries + ca-certificates (TLS to
# NATS/PostgreSQL), user 10001; docs/operations.md.
#   docker build -t imipflow:local .

FROM rust:1.95-bookworm AS builder
WORKDIR /src
# Only the workspace members, named one by one, so that BuildKit never sends
# target/ (there is no .dockerignore); add a new member here too. cargo needs
# every member's manifest even though only ingest, processor, ctl, publisher
# and manager are built.
# rust-toolchain.toml is left out on purpose: the image's toolchain is the
# pinned one, and rustfmt/clippy are not needed here.
COPY Cargo.toml Cargo.lock ./
COPY schema schema
COPY ingest ingest
COPY processor processor
COPY publisher publisher
COPY tests tests
COPY bench bench
COPY telemetry telemetry
COPY config config
COPY loadgen loadgen
COPY semantics semantics
COPY nats nats
COPY ctl ctl
COPY manager manager
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins -p imipflow-processor -p imipflow-ctl -p imipflow-publisher \
       -p imipflow-manager \
    && cargo rustc --locked --profile ingest -p imipflow-ingest --bin imip-ingest --target-dir target/static -- \
       -C target-feature=+crt-static -C relocation-model=static \
    && mkdir -p /out \
    && cp target/static/ingest/imip-ingest target/release/imip-processor target/release/imip-ctl \
       target/release/imip-publisher target/release/imip-manager /out/

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin imip
COPY --from=builder /out/ /usr/local/bin/
# Man pages and bash completion from the clap definitions (imip-ctl man,
# imip-ctl completions), as docs/operations.md installs them.
RUN mkdir -p /usr/local/share/man/man1 /usr/share/bash-completion/completions \
    && imip-ctl man /usr/local/share/man/man1 \
    && imip-ctl completions bash > /usr/share/bash-completion/completions/imip-ctl
# Health checks without curl or wget (bash's /dev/tcp): see deploy/healthcheck.sh.
COPY deploy/healthcheck.sh /usr/local/bin/imip-healthcheck
USER imip
# The processor's metrics/health listener; 0.0.0.0 inside the container so
# that the host (or Prometheus on the compose network) can reach it.
ENV IMIP_METRICS_LISTEN=0.0.0.0:9464
EXPOSE 9464 8080 8090
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=6 \
    CMD ["imip-healthcheck", "9464", "/healthz"]
CMD ["imip-processor", "run"]
