# syntax=docker/dockerfile:1
# imipflow binaries: imip-ingest, imip-processor, imip-ctl, imip-publisher.
#   docker build -t imipflow:local .

FROM rust:1.95-bookworm AS builder
WORKDIR /src
# Only the workspace members, named one by one, so that BuildKit never sends
# target/ (there is no .dockerignore); add a new member here too. cargo needs
# every member's manifest even though only ingest, processor and publisher are
# built.
# rust-toolchain.toml is left out on purpose: the image's toolchain is the
# pinned one, and rustfmt/clippy are not needed here.
COPY Cargo.toml Cargo.lock ./
COPY schema schema
COPY ingest ingest
COPY processor processor
COPY publisher publisher
COPY tests tests
COPY bench bench
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins -p imipflow-ingest -p imipflow-processor -p imipflow-publisher \
    && mkdir -p /out \
    && cp target/release/imip-ingest target/release/imip-processor target/release/imip-ctl \
       target/release/imip-publisher /out/

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin imip
COPY --from=builder /out/ /usr/local/bin/
USER imip
CMD ["imip-processor", "run"]
