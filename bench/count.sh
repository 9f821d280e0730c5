#!/usr/bin/env bash
# Work per request, counted rather than timed: for each proxy and cell, the user-space instructions
# (callgrind) and allocations per request, and the syscalls and context switches per request
# (perf stat; strace -c for syscalls by name), over an exact number of requests from
# bench/floor's floor-load client, in the steady state (after WARMUP requests over the same
# connections, and before they close). Instruction counts do not depend on what else the machine runs,
# so this is how a change to the request path is measured on a busy machine. Same stand-in,
# proxies and configs as run.sh (bench/common.sh). See BENCHMARKS.md "Counting work per request".
# Usage: bench/count.sh [--release|--debug]
#
# Environment overrides:
#   CONNECTIONS  client connections per cell ("1 8")
#   UPSTREAMS    "http" and/or "https" (both)
#   TARGETS      which proxies ("sidecar floor-tpc nginx"; also sidecar-default, sidecar-h2 (https
#                only), haproxy (not under callgrind: it counts only syscalls))
#   REQUESTS     requests measured per target and cell (20000), after WARMUP (1000) uncounted ones
#   CALLGRIND=0  skip the callgrind pass; SYSCALLS=0 skip the perf stat and strace passes
#   ANNOTATE=N   print the sidecar's N costliest functions, inclusive, per cell (0: none)
#   CALLGRIND_ARGS  more valgrind options for the callgrind pass (e.g. "--cache-sim=yes" for the
#                simulated cache misses per request)
#   BENCH_BIN    use this sidecar binary (a release build with CARGO_PROFILE_RELEASE_DEBUG=1 gives
#                callgrind_annotate line numbers); KEEP_TMP=1 keeps the callgrind files
#   LAYOUT=plain  count `cargo build --release` as it comes, not the image's profile-optimized build
#                 (LAYOUT=bolt, the release default; see run.sh)
set -euo pipefail

PROFILE=release
for arg in "$@"; do
  case $arg in
    --release) PROFILE=release ;;
    --debug) PROFILE=debug ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "count.sh: unknown argument: $arg (try --help)" >&2; exit 64 ;;
  esac
done
: "${CONNECTIONS:=1 8}" "${UPSTREAMS:=http https}" "${TARGETS:=sidecar floor-tpc nginx}"
: "${REQUESTS:=20000}" "${WARMUP:=1000}" "${CALLGRIND:=1}" "${SYSCALLS:=1}" "${ANNOTATE:=0}"
FLOOR=1 # builds floor-load as well as the floor proxies
THREADS=1
QUIET_WAIT=0

# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
((CALLGRIND == 0)) || install_missing valgrind:valgrind
((SYSCALLS == 0)) || install_missing strace:strace

HAVE_PERF=0
if command -v perf >/dev/null && perf stat -e task-clock,raw_syscalls:sys_enter true >/dev/null 2>&1; then
  HAVE_PERF=1
fi

make_certs
start_upstream
probe_coalesce
probe_affinity
declare -gA URL TPIDS ADMIN SIDECAR_LOG

# start_target name upstream — starts one proxy (under WRAP) for the cell; sets T to its target name.
start_target() {
  local upurl="http://127.0.0.1:$UP_PORT" up_addr="127.0.0.1:$UP_PORT" tls=()
  if [[ $2 == https ]]; then
    upurl="https://127.0.0.1:$UP_TLS_PORT"
    up_addr="127.0.0.1:$UP_TLS_PORT"
    tls=("$DIR/tls/ca.pem" "$TLS_NAME")
  fi
  T=$1@$2
  case $1 in
    sidecar | sidecar-default | sidecar-h2)
      local coalesce=off
      [[ $1 == sidecar-default ]] && coalesce=default
      [[ $1 == sidecar-h2 ]] && upurl="https://127.0.0.1:$UP_H2_PORT"
      new_sidecar "$T" "$upurl" "$coalesce"
      start_sidecar "$T"
      wait_http "${ADMIN[$T]}/readyz" 200 "${TPIDS[$T]}"
      ;;
    floor-tpc) start_floor "$T" "$TPC_PORT" "$up_addr" 2 "${tls[@]}" ;;
    nginx)
      start_nginx_proxy
      TPIDS[$T]=$NGINX_PID
      local port=$NGINX_PORT
      [[ $2 == https ]] && port=$NGINX_TLS_PORT
      URL[$T]="http://127.0.0.1:$port/v3/content_types"
      ;;
    haproxy)
      start_haproxy
      TPIDS[$T]=$HAPROXY_PID
      local port=$HAPROXY_PORT
      [[ $2 == https ]] && port=$HAPROXY_TLS_PORT
      URL[$T]="http://127.0.0.1:$port/v3/content_types"
      ;;
    *) fail "unknown target $1" ;;
  esac
  wait_http "${URL[$T]}" 200 "${TPIDS[$T]}"
}
stop_target() {
  if [[ $T == sidecar* ]]; then
    stop_sidecar "$T"
    return
  fi
  local pid=${TPIDS[$T]}
  kill -TERM "$pid"
  wait "$pid" || true
  forget_pid "$pid"
}
# measured connections start stop — floor-load against the current target: WARMUP requests, then
# `start` (a command) once every connection has made its share, then REQUESTS requests over the
# same connections, then `stop` before they close: what is counted is the steady state, as under
# wrk, without the connections' opening (and their upstream TLS handshakes) or closing.
measured() {
  local hostport=${URL[$T]#http://} conns=$1 start=$2 stop=$3 line
  hostport=${hostport%%/*}
  coproc LOAD { "$FLOOR_DIR/floor-load" --warmup "$WARMUP" "$hostport" /v3/content_types "$REQUESTS" "$conns" 2>>"$DIR/load.log"; }
  local load_pid=$LOAD_PID out=${LOAD[0]} in=${LOAD[1]}
  read -r line <&"$out" || true
  [[ $line == warm ]] || fail "floor-load against $T: no warm-up (load.log)"
  eval "$start"
  echo go >&"$in"
  read -r line <&"$out" || true
  [[ -n $line ]] || fail "floor-load against $T (load.log)"
  echo "$line" >>"$DIR/load.log"
  eval "$stop"
  echo close >&"$in"
  wait "$load_pid" || fail "floor-load against $T (load.log)"
}

counts=()
for up in $UPSTREAMS; do
  for conns in $CONNECTIONS; do
    for name in $TARGETS; do
      [[ $name == sidecar-h2 && $up == http ]] && continue
      cg=/dev/null perf_out=/dev/null strace_out=/dev/null
      if ((CALLGRIND)) && [[ $name != haproxy ]]; then
        cg_base="$DIR/callgrind-$name-$up-$conns"
        read -ra extra <<<"${CALLGRIND_ARGS:-}"
        WRAP=(valgrind --tool=callgrind "${extra[@]}" --callgrind-out-file="$cg_base.%p")
        start_target "$name" "$up"
        WRAP=()
        log "$T, $conns connections: callgrind, $WARMUP + $REQUESTS requests"
        pid=${TPIDS[$T]}
        measured "$conns" 'callgrind_control -z "$pid" >/dev/null' 'callgrind_control -d "$pid" >/dev/null'
        cg=$(ls -t "$cg_base.$pid".* | head -1)
        stop_target
        if ((ANNOTATE > 0)) && [[ $name == sidecar* ]]; then
          log "$T, $conns connections: costliest functions, inclusive"
          callgrind_annotate --inclusive=yes "$cg" 2>/dev/null | sed -n "1,$((ANNOTATE + 25))p" >&2
        fi
      fi
      if ((SYSCALLS)); then
        start_target "$name" "$up"
        pids=$(python3 -c 'import sys; sys.path.insert(0, sys.argv[1]); import benchlib; print(",".join(map(str, benchlib.children_of(sys.argv[2:]))))' \
          "$HERE" "${TPIDS[$T]}")
        log "$T, $conns connections: perf stat and strace -c, $WARMUP + $REQUESTS requests each"
        if ((HAVE_PERF)); then
          perf_out="$DIR/perf-$name-$up-$conns"
          # perf and strace attach to every thread before they count (the half second).
          measured "$conns" 'perf stat -x, -o "$perf_out" -e task-clock,context-switches,raw_syscalls:sys_enter -p "$pids" 2>/dev/null &
            perf_pid=$!; PIDS+=("$perf_pid"); sleep 0.5' \
            'kill -INT "$perf_pid"; wait "$perf_pid" || true; forget_pid "$perf_pid"'
        fi
        strace_out="$DIR/strace-$name-$up-$conns"
        strace_args=()
        IFS=, read -ra plist <<<"$pids"
        for p in "${plist[@]}"; do strace_args+=(-p "$p"); done
        measured "$conns" 'strace -c -f -q -o "$strace_out" "${strace_args[@]}" &
          strace_pid=$!; PIDS+=("$strace_pid"); sleep 0.5' \
          'kill -INT "$strace_pid"; wait "$strace_pid" || true; forget_pid "$strace_pid"'
        stop_target
      fi
      python3 "$LIB" count "$DIR/count-$name-$up-$conns.json" "$T" "$conns" "$up" "$REQUESTS" \
        "$cg" "$perf_out" "$strace_out"
      counts+=("$DIR/count-$name-$up-$conns.json")
    done
  done
done
check_logins

echo
echo "## Work per request ($(date -u +%Y-%m-%dT%H:%MZ))"
echo
echo "Machine: $(nproc) CPUs, Linux $(uname -r); $(nginx -v 2>&1 | sed 's/.*: //');" \
  "sidecar $("$BIN" --version | awk '{print $2}') ($BIN_LABEL). floor-load, $REQUESTS requests per" \
  "target and cell after $WARMUP uncounted; instructions and allocations from callgrind (user" \
  "space, all threads), syscalls and context switches from \`perf stat\`, syscalls by name from" \
  "\`strace -c -f\` (a separate pass)."
echo
python3 "$LIB" count-report "${counts[@]}"
