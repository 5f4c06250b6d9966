#!/usr/bin/env bash
# bench/smoke.sh: CI check that the imip-ingest benchmark runs end to end
# (5 samples per series, no callgrind); it says nothing about speed.
# Needs NATS (JetStream) and PostgreSQL at their defaults, and the debug
# binaries imip-ingest and imip-processor in target/debug (built by the test
# script). Exits non-zero when the benchmark fails.
set -euo pipefail
cd "$(dirname "$0")/.."
out=/tmp/imip-bench-smoke.md
rm -f "$out"
cargo run -q -p imipflow-bench -- ingest --smoke --bin-dir target/debug --out "$out"
grep -q '^## Ratios' "$out" || { echo "bench/smoke.sh: $out has no ratios" >&2; exit 1; }
echo "bench/smoke.sh: ok ($out)"
