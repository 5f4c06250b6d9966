#!/usr/bin/env bash
# bench/smoke.sh: CI check that every benchmark of the suite runs end to end
# in its tiny mode (`imip-bench all --smoke`: ingest, processor, latency,
# growth) and that each results file has its ratios; it says nothing about
# speed. Needs NATS (JetStream) and PostgreSQL at their defaults, and the
# debug binaries imip-ingest and imip-processor in target/debug, or in
# $CARGO_TARGET_DIR/debug when that is set (built by the test script). Exits non-zero when a benchmark fails. About 30 s.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d /tmp/imip-bench-smoke.XXXXXX)
trap 'rm -rf "$out"' EXIT
start=$(date +%s)
cargo run -q -p imipflow-bench -- all --smoke --bin-dir "${CARGO_TARGET_DIR:-target}/debug" --out-dir "$out"
for f in "$out"/ingest-*.md "$out"/latency-*.md "$out"/growth-*.md; do
    grep -q '^## Ratios' "$f" || { echo "bench/smoke.sh: $f has no ratios" >&2; exit 1; }
done
echo "bench/smoke.sh: ok in $(( $(date +%s) - start )) s"
