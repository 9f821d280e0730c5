#!/usr/bin/env bash
# A release build of the sidecar with its code laid out by BOLT (LLVM's post-link optimizer) from
# a profile of the bench's own load: what the container image ships (deploy/Dockerfile runs
# `bench/bolt.sh --production`), and what the bench measures (BENCHMARKS.md "The instruction
# cache, and BOLT"; docs/design.md "Performance").
# Usage: bench/bolt.sh [--production] — prints the path of the laid-out binary; give it to run.sh
# or count.sh as BENCH_BIN, and the same build without the layout (printed too) as COMPARE_BIN.
#
#   --production  build as the image does: `--locked -p cma-auth-proxy --no-default-features`
#                 (no `dev` subcommand, no simulated CMA)
#
# Steps: a release build linked with --emit-relocs (target/bolt); an instrumented copy of it
# (llvm-bolt -instrument); that copy run against the bench's stand-in (bench/common.sh) with
# wrk at 1, 8 and 64 connections over a plain, a TLS (HTTP/1.1) and a TLS HTTP/2 upstream, with
# read coalescing on and off; the profiles it writes when it exits, merged; and the build laid
# out by them (hot blocks together, cold ones split off, functions ordered by calls; the moved code
# on 4 KiB page boundaries, not BOLT's default 2 MiB, which pads the file by up to 4 MiB for huge
# pages that a binary's text does not get without madvise and the kernel's file THP). The layout
# changes where code sits, not what it does; it follows a measured profile, so two runs may lay
# the same commit out differently.
#
# Needs nginx, wrk, curl, python3, openssl (installed with apt when missing, as for the bench)
# and BOLT (Debian's bolt-19).
#
# Environment overrides:
#   TRAIN_SECONDS  seconds of wrk per connection count and upstream (3)
#   BOLT           the llvm-bolt to use (default: the newest llvm-bolt-NN on PATH; installs
#                  Debian's bolt-19 when there is none)
set -euo pipefail
build=(--release --quiet --bin cma-auth-proxy)
for arg in "$@"; do
  case $arg in
    --production) build+=(--locked -p cma-auth-proxy --no-default-features) ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bolt.sh: unknown argument: $arg (try --help)" >&2; exit 64 ;;
  esac
done
PROFILE=release
FLOOR=0
HAPROXY=0
UPSTREAMS="http https"
: "${TRAIN_SECONDS:=3}"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
OUT=${CARGO_TARGET_DIR:-$ROOT/target}/bolt
log() { printf '[bolt %s] %s\n' "$(date +%T)" "$*" >&2; }

if [[ -z ${BOLT:-} ]]; then
  BOLT=$(compgen -c llvm-bolt- | grep -E '^llvm-bolt-[0-9]+$' | sort -t- -k3 -n | tail -1 || true)
  if [[ -z $BOLT ]]; then
    log "installing bolt-19"
    sudo=
    ((EUID == 0)) || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq bolt-19 >/dev/null
    BOLT=llvm-bolt-19
  fi
fi
# Called by its real path, llvm-bolt finds its instrumentation runtime in ../lib beside it.
BOLT=$(readlink -f "$(command -v "$BOLT")")
MERGE=$(dirname "$BOLT")/merge-fdata
[[ -x $MERGE ]] || MERGE=$(command -v "merge-fdata${BOLT##*llvm-bolt}")

log "cargo build ${build[*]}, linked with --emit-relocs (target/bolt)"
(cd "$ROOT" && RUSTFLAGS="${RUSTFLAGS:-} -C link-args=-Wl,--emit-relocs" \
  cargo build "${build[@]}" --target-dir "$OUT")
PLAIN=$OUT/release/cma-auth-proxy
PROFILES=$OUT/profiles # what the instrumented build writes, and the logs of both passes
rm -rf "$PROFILES"
mkdir -p "$PROFILES"
"$BOLT" "$PLAIN" -instrument -o "$OUT/cma-auth-proxy.instrumented" \
  --instrumentation-file="$PROFILES/run" --instrumentation-file-append-pid >"$PROFILES/instrument.log" 2>&1 \
  || { cat "$PROFILES/instrument.log" >&2; exit 1; }

# The training load: the bench's stand-in, the instrumented build as the sidecar under test.
BENCH_BIN=$OUT/cma-auth-proxy.instrumented
# shellcheck source=bench/common.sh
source "$HERE/common.sh"
make_certs
start_upstream
probe_coalesce
probe_affinity
train() { # name upstream_url coalesce
  new_sidecar "$1" "$2" "$3"
  start_sidecar "$1"
  wait_http "${URL[$1]}" 200
  local c
  for c in 1 8 64; do
    wrk -t1 -c"$c" -d"${TRAIN_SECONDS}s" "${URL[$1]}" >/dev/null
  done
  stop_sidecar "$1" # it writes its profile as it exits
}
log "training: wrk at 1, 8 and 64 connections, ${TRAIN_SECONDS} s each, per upstream"
train sidecar@http "http://127.0.0.1:$UP_PORT" off
train sidecar-default@http "http://127.0.0.1:$UP_PORT" default
train sidecar@https "https://127.0.0.1:$UP_TLS_PORT" off
train sidecar-h2@https "https://127.0.0.1:$UP_H2_PORT" off
check_logins

"$MERGE" "$PROFILES"/run.*.fdata >"$PROFILES/merged.fdata" 2>/dev/null
"$BOLT" "$PLAIN" -o "$OUT/cma-auth-proxy.bolt" -data="$PROFILES/merged.fdata" \
  -reorder-blocks=ext-tsp -reorder-functions=cdsort -split-functions -split-all-cold -split-eh \
  -no-huge-pages -dyno-stats >"$PROFILES/optimize.log" 2>&1 || { cat "$PROFILES/optimize.log" >&2; exit 1; }
grep -E 'executed instructions|taken branches|splitting separates' "$PROFILES/optimize.log" >&2 || true
log "laid out: $OUT/cma-auth-proxy.bolt (the same build without the layout: $PLAIN)"
echo "$OUT/cma-auth-proxy.bolt"
