#!/usr/bin/env bash
# A release build of the sidecar optimized from a profile of the bench's own load: compiled with
# LLVM's profile-guided optimization (PGO) and then laid out by BOLT (LLVM's post-link optimizer).
# What the container image ships (deploy/Dockerfile runs `bench/bolt.sh --production`), and what
# the bench measures (BENCHMARKS.md "The instruction cache, and BOLT" and "Compiled from a
# profile, too (PGO)"; docs/design.md "Performance").
# Usage: bench/bolt.sh [--production] — prints the path of the optimized binary; give it to run.sh
# or count.sh as BENCH_BIN, and the same build without the layout (printed too) as COMPARE_BIN.
#
#   --production  build as the image does: `--locked -p cma-auth-proxy --no-default-features`
#                 (no `dev` subcommand, no simulated CMA)
#
# Steps, each pass's training the same load (`train` below): the bench's stand-in
# (bench/common.sh) and wrk at 1, 8 and 64 connections over a plain, a TLS (HTTP/1.1) and a TLS
# HTTP/2 upstream, with read coalescing on and off.
#  1. PGO: a release build instrumented to count what its code does (`-Cprofile-generate`, in
#     target/bolt/pgo); the training; the counts it writes as it exits, merged (llvm-profdata, of
#     the toolchain's own LLVM: rustup's llvm-tools component, added when missing).
#  2. The release build compiled with those counts (`-Cprofile-use`: inlining, branch order and
#     what is kept out of line follow what the load ran), linked with --emit-relocs (target/bolt).
#  3. BOLT: an instrumented copy of that build (llvm-bolt -instrument); the training; the profiles
#     it writes when it exits, merged; and the build laid out by them (hot blocks together, cold
#     ones split off, functions ordered by calls; the moved code on 4 KiB page boundaries, not
#     BOLT's default 2 MiB, which pads the file by up to 4 MiB for huge pages that a binary's text
#     does not get without madvise and the kernel's file THP).
# Neither pass changes what the code does: they change how it is compiled and where it sits. Both
# follow measured counts, so two runs may optimize the same commit a little differently.
#
# Needs nginx, wrk, curl, python3, openssl (installed with apt when missing, as for the bench),
# BOLT (Debian's bolt-19) and rustup (for llvm-tools).
#
# Environment overrides:
#   TRAIN_SECONDS  seconds of wrk per connection count and upstream (3)
#   BOLT           the llvm-bolt to use (default: the newest llvm-bolt-NN on PATH; installs
#                  Debian's bolt-19 when there is none)
#   PGO=0          skip step 1: the build of step 2 as it comes (the layout alone, as before
#                  2026-12-01)
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
: "${TRAIN_SECONDS:=3}" "${PGO:=1}"
# Checked, not read as arithmetic: there `PGO=yes` or `PGO=true` would quietly be 0.
[[ $PGO == 0 || $PGO == 1 ]] || { echo "bolt.sh: PGO must be 0 or 1, not '$PGO'" >&2; exit 64; }
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
if ((PGO)); then
  # The counts' format is the compiler's LLVM's: llvm-profdata of the same toolchain.
  PROFDATA=$(cd "$ROOT" && echo "$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-profdata")
  if [[ ! -x $PROFDATA ]]; then
    log "adding rustup's llvm-tools component (llvm-profdata)"
    (cd "$ROOT" && rustup component add llvm-tools >/dev/null)
  fi
  [[ -x $PROFDATA ]] || { log "no llvm-profdata at $PROFDATA"; exit 1; }
fi

PLAIN=$OUT/release/cma-auth-proxy
PROFILES=$OUT/profiles # what the instrumented builds write, and the logs of the passes
rm -rf "$PROFILES"
mkdir -p "$PROFILES"
# Step 2 (with the PGO counts, when there are some) and its copy instrumented for BOLT.
build_for_layout() { # extra RUSTFLAGS
  log "cargo build ${build[*]}, linked with --emit-relocs${1:+, compiled from the PGO counts} (target/bolt)"
  (cd "$ROOT" && RUSTFLAGS="${RUSTFLAGS:-} $1 -C link-args=-Wl,--emit-relocs" \
    cargo build "${build[@]}" --target-dir "$OUT")
  "$BOLT" "$PLAIN" -instrument -o "$OUT/cma-auth-proxy.instrumented" \
    --instrumentation-file="$PROFILES/run" --instrumentation-file-append-pid >"$PROFILES/instrument.log" 2>&1 \
    || { cat "$PROFILES/instrument.log" >&2; exit 1; }
}
if ((PGO)); then
  # Build scripts are instrumented too (RUSTFLAGS reach them) and write counts as they run; those
  # go to the build's own directory, not into the profile.
  log "cargo build ${build[*]}, instrumented for PGO (target/bolt/pgo)"
  (cd "$ROOT" && RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$OUT/pgo/build-counts" \
    cargo build "${build[@]}" --target-dir "$OUT/pgo")
  TRAINEE=$OUT/pgo/release/cma-auth-proxy
else
  build_for_layout ""
  TRAINEE=$OUT/cma-auth-proxy.instrumented
fi

# The training load: the bench's stand-in, an instrumented build as the sidecar under test.
BENCH_BIN=$TRAINEE
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
  stop_sidecar "$1" # it writes its counts as it exits
}
training() { # binary what
  BIN=$1
  log "training $2: wrk at 1, 8 and 64 connections, ${TRAIN_SECONDS} s each, per upstream"
  train sidecar@http "http://127.0.0.1:$UP_PORT" off
  train sidecar-default@http "http://127.0.0.1:$UP_PORT" default
  train sidecar@https "https://127.0.0.1:$UP_TLS_PORT" off
  train sidecar-h2@https "https://127.0.0.1:$UP_H2_PORT" off
  check_logins
}
if ((PGO)); then
  export LLVM_PROFILE_FILE="$PROFILES/pgo/%p-%m.profraw"
  training "$TRAINEE" "the PGO build"
  unset LLVM_PROFILE_FILE
  # Named by its content: cargo rebuilds when RUSTFLAGS change, not when a file they name does.
  "$PROFDATA" merge -o "$PROFILES/pgo.profdata" "$PROFILES"/pgo/*.profraw
  counts=$OUT/pgo-$(sha256sum "$PROFILES/pgo.profdata" | cut -c1-16).profdata
  rm -f "$OUT"/pgo-*.profdata
  mv "$PROFILES/pgo.profdata" "$counts"
  build_for_layout "-Cprofile-use=$counts"
fi
training "$OUT/cma-auth-proxy.instrumented" "the BOLT build"

"$MERGE" "$PROFILES"/run.*.fdata >"$PROFILES/merged.fdata" 2>/dev/null
"$BOLT" "$PLAIN" -o "$OUT/cma-auth-proxy.bolt" -data="$PROFILES/merged.fdata" \
  -reorder-blocks=ext-tsp -reorder-functions=cdsort -split-functions -split-all-cold -split-eh \
  -no-huge-pages -dyno-stats >"$PROFILES/optimize.log" 2>&1 || { cat "$PROFILES/optimize.log" >&2; exit 1; }
grep -E 'executed instructions|taken branches|splitting separates' "$PROFILES/optimize.log" >&2 || true
log "optimized: $OUT/cma-auth-proxy.bolt (the same build without the layout: $PLAIN)"
echo "$OUT/cma-auth-proxy.bolt"
