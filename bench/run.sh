#!/usr/bin/env bash
# Benchmark: cma-auth-proxy vs nginx and haproxy as static-token proxies (and the minimal hyper
# proxies of bench/floor), same machine, same run, swept over client connections and a plain-HTTP
# and a TLS upstream. See BENCHMARKS.md. Usage: bench/run.sh [--smoke] [--release|--debug]
#
#   --smoke    CI variant: debug build, one cell of each kind (8 connections, http and https),
#              1 round x 1 s, 64 MiB upload, burst of 200, no floor proxies; exits non-zero only
#              when something is broken (failed request, wrong login count, bad exit), never
#              because something is slow.
#   --release  build/use release binaries (default for the full run): the image's build, compiled
#              and laid out from a profile by bench/bolt.sh --production, unless LAYOUT=plain
#   --debug    build/use debug binaries (default for --smoke: CI has built the sidecar for the tests)
#
# Environment overrides:
#   CONNECTIONS  client connections per cell (full: "1 8 64", smoke: "8")
#   UPSTREAMS    upstream kinds per cell, "http" and/or "https" (both)
#   ROUNDS, DURATION (s), WARMUP (s), THREADS (wrk threads, 1), UPLOAD_MIB, BURST
#   FLOOR=0|1    measure the floor proxies of bench/floor (full: 1, smoke: 0)
#   SIDECAR_DEFAULT=0  skip the sidecar with read coalescing at its default (on), where it exists
#   SIDECAR_H2=0       skip the sidecar against the TLS listener that offers h2
#   SIDECAR_CPU_AFFINITY  the sidecar's server.cpu_affinity ("on": its two workers kept to the
#                machine's two CPUs, as on a host of its own; "auto", the product default, leaves
#                them to the kernel here, since the process sees all of the machine's CPUs)
#   QUIET_WAIT   seconds to wait before each measurement for other processes' CPU use to drop
#                (full run: 600, smoke: 0)
#   RETRIES      how often a measurement disturbed by other processes (> 0.25 cores) is repeated
#                (full run: 3, smoke: 0)
#   LAYOUT=plain  a release run measures `cargo build --release` as it comes, not the image's
#                 profile-optimized build (LAYOUT=bolt, the default)
#   BENCH_BIN    use this sidecar binary instead of building one
#   COMPARE_BIN  also measure this other sidecar build (coalescing off, as the main row), as the
#                "cma-auth-proxy, compared build" row: an A/B of two builds in one run
#   KEEP_TMP=1   keep the temp dir (configs, logs, raw wrk output) for inspection
set -euo pipefail

MODE=full
PROFILE=
for arg in "$@"; do
  case $arg in
    --smoke) MODE=smoke ;;
    --release) PROFILE=release ;;
    --debug) PROFILE=debug ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument: $arg (try --help)" >&2; exit 64 ;;
  esac
done
if [[ $MODE == smoke ]]; then
  : "${ROUNDS:=1}" "${DURATION:=1}" "${WARMUP:=0}" "${UPLOAD_MIB:=64}" "${BURST:=200}" "${PROFILE:=debug}"
  : "${CONNECTIONS:=8}" "${FLOOR:=0}" "${QUIET_WAIT:=0}" "${RETRIES:=0}"
else
  : "${ROUNDS:=3}" "${DURATION:=10}" "${WARMUP:=2}" "${UPLOAD_MIB:=1024}" "${BURST:=1000}" "${PROFILE:=release}"
  : "${CONNECTIONS:=1 8 64}" "${FLOOR:=1}" "${QUIET_WAIT:=600}" "${RETRIES:=3}"
fi
# One wrk thread in every cell: wrk -t2 cannot drive one connection, would split 8 into 4 + 4, and
# adds a seventh busy thread on a machine whose two cores the proxy and the upstream already
# share; one event loop also measures every connection's latency the same way.
: "${UPSTREAMS:=http https}" "${THREADS:=1}"
((ROUNDS >= 1 && DURATION >= 1 && UPLOAD_MIB >= 1 && BURST >= 1 && THREADS >= 1)) \
  || { echo "run.sh: ROUNDS, DURATION, THREADS, UPLOAD_MIB and BURST must be >= 1" >&2; exit 64; }
for c in $CONNECTIONS; do [[ $c =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: CONNECTIONS: not a count: $c" >&2; exit 64; }; done
for u in $UPSTREAMS; do [[ $u == http || $u == https ]] || { echo "run.sh: UPSTREAMS: http or https, not $u" >&2; exit 64; }; done

# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

start_all

sleep 1
idle_json=
for up in $UPSTREAMS; do
  for t in $(targets_of "$up"); do
    [[ $t == direct@* ]] && continue
    kib=$(python3 "$LIB" rss "${TPIDS[$t]}")
    idle_json+="${idle_json:+, }\"$t\": $kib"
  done
done
log "idle RSS (KiB): $idle_json"

# --- throughput and latency: the sweep ----------------------------------------------------------
max_conns=0
for c in $CONNECTIONS; do ((c > max_conns)) && max_conns=$c; done
if ((WARMUP > 0)); then # fills every proxy's upstream pool and TLS session cache
  for up in $UPSTREAMS; do
    for t in $(targets_of "$up"); do
      wrk_cmd "$t" "$max_conns" "$WARMUP"
      "${WRK[@]}" >"$DIR/warmup-$t.txt" 2>&1 || { cat "$DIR/warmup-$t.txt" >&2; fail "wrk against $t"; }
    done
  done
fi
# One measurement: wrk under benchlib's `measure`, which also records the target's RSS and the CPU
# time of target, upstream, wrk and everything else. A run during which other processes took more
# than 0.25 cores is repeated (up to RETRIES times) after waiting for quiet again. Each round runs
# every cell; within a cell the targets run in an order shuffled per round and cell (seeded, so the
# same run repeats it). A rotation would keep each target behind the same other one, and the row
# measured right after haproxy was measured worse than the same binary elsewhere in the order
# (BENCHMARKS.md, "Order of the targets").
order_of() { # round cell target... — the targets, shuffled (Fisher-Yates, seeded by round and cell)
  local -a l=("${@:3}")
  local i j swap
  RANDOM=$((1000 * $1 + $2 + 1))
  for ((i = ${#l[@]} - 1; i > 0; i--)); do
    j=$((RANDOM % (i + 1)))
    swap=${l[i]} l[i]=${l[j]} l[j]=$swap
  done
  echo "${l[@]}"
}
: >"$DIR/results.txt"
cells=()
for up in $UPSTREAMS; do for c in $CONNECTIONS; do cells+=("$c:$up"); done; done
for ((r = 0; r < ROUNDS; r++)); do
  for ((ci = 0; ci < ${#cells[@]}; ci++)); do
    conns=${cells[$ci]%:*}
    up=${cells[$ci]#*:}
    read -ra list <<<"$(targets_of "$up")"
    read -ra list <<<"$(order_of "$r" "$ci" "${list[@]}")"
    for t in "${list[@]}"; do
      for ((attempt = 0; ; attempt++)); do
        wait_quiet >/dev/null
        out="$DIR/wrk-$conns-$t-$r.txt"
        wrk_cmd "$t" "$conns" "$DURATION"
        wrk_rc=
        read -r rss cpu_t cpu_u cpu_w foreign wrk_rc cpu_s < <(python3 "$LIB" measure "$DIR/measure-$conns-$t-$r.json" \
          "${TPIDS[$t]}" "$UP_PID" "$out" "${WRK[@]}") || true
        [[ -n ${wrk_rc:-} ]] || fail "measuring $t failed"
        ((wrk_rc == 0)) || { cat "$out" >&2; fail "wrk against $t exited $wrk_rc"; }
        errors=
        read -r rps p50 p99 total errors < <(python3 "$LIB" wrk "$out") || true
        [[ -n $errors ]] || { cat "$out" >&2; fail "cannot read wrk's output for $t"; }
        log "round $((r + 1))/$ROUNDS, $conns connections, $t: $rps req/s, p50 $p50 ms, p99 $p99 ms," \
          "$total requests, $errors errors; RSS max $rss KiB; CPU cores: target $cpu_t, upstream $cpu_u," \
          "wrk $cpu_w, others $foreign"
        ((errors == 0)) || { cat "$out" >&2; fail "$t: $errors failed requests under load"; }
        ((total > 0)) || { cat "$out" >&2; fail "$t: no request completed"; }
        if le "$foreign" 0.25 || ((attempt >= RETRIES)); then break; fi
        log "other processes took $foreign cores during that run; repeating it"
      done
      echo "$conns $up $t $r $rps $p50 $p99 $total $errors $rss $cpu_t $cpu_u $cpu_w $foreign $cpu_s" >>"$DIR/results.txt"
      sleep 0.5
    done
  done
done
check_logins # no sidecar logged in again under load
for up in $UPSTREAMS; do
  for t in $(targets_of "$up"); do if [[ $t == sidecar* ]]; then stop_sidecar "$t"; fi; done
done

# --- cold burst: a fresh sidecar, N concurrent requests while its first login is in flight ---------
new_sidecar fresh "http://127.0.0.1:$UP_PORT" off
logins_before=$(lines "$DIR/up/login.log")
start_sidecar fresh
in_flight=true
[[ $(lines "$DIR/up/login.log") -eq $logins_before ]] || in_flight=false
port=${URL[fresh]#http://127.0.0.1:}
port=${port%%/*}
burst_json=$(python3 "$LIB" burst "$port" "$BURST" /v3/content_types) \
  || { echo "$burst_json" >&2; fail "cold burst: not every request got 200"; }
check_logins
burst_logins=$(($(lines "$DIR/up/login.log") - logins_before))
log "cold burst of $BURST: $burst_json, logins: $burst_logins (login in flight when sent: $in_flight)"
stop_sidecar fresh

# --- streamed upload through a fresh sidecar ---------------------------------------------------------
start_sidecar fresh
wait_http "${ADMIN[fresh]}/readyz" 200 "${TPIDS[fresh]}"
pid=${TPIDS[fresh]}
for _ in $(seq 20); do curl -sS --fail -o /dev/null "${URL[fresh]}" || fail "sidecar request failed"; done
sleep 0.5
before_kib=$(python3 "$LIB" rss "$pid")
echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || true # reset VmHWM (peak RSS)
python3 "$LIB" sample "$DIR/sample-upload.json" "$pid" &
SAMPLER=$!
PIDS+=("$SAMPLER")
for _ in $(seq 100); do [[ -e $DIR/sample-upload.json.ready ]] && break; sleep 0.02; done
[[ -e $DIR/sample-upload.json.ready ]] || fail "sampler did not start"
log "uploading $UPLOAD_MIB MiB through the sidecar (chunked)"
upload=$(head -c "$((UPLOAD_MIB * 1024 * 1024))" /dev/zero \
  | curl -sS -T - -X POST -H 'content-type: application/octet-stream' -o "$DIR/upload-response" \
    -w '%{http_code} %{size_upload} %{time_total}' "${URL[fresh]%/v3/*}/v3/_upload") \
  || fail "upload: curl failed"
kill -TERM "$SAMPLER"
wait "$SAMPLER" || true
forget_pid "$SAMPLER"
read -r up_code up_bytes up_secs <<<"$upload"
hwm_kib=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")
sampled_kib=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["max_rss_kib"])' "$DIR/sample-upload.json")
peak_kib=$((hwm_kib > sampled_kib ? hwm_kib : sampled_kib))
[[ $up_code == 200 ]] || fail "upload: status $up_code ($(head -c 300 "$DIR/upload-response"))"
for _ in $(seq 50); do [[ $(lines "$DIR/up/upload.log") -gt 0 ]] && break; sleep 0.1; done
up_len=0
read -r _ _ up_status up_len _ < <(tail -n 1 "$DIR/up/upload.log" 2>/dev/null) || true
((up_len >= UPLOAD_MIB * 1024 * 1024)) \
  || fail "upload: the upstream read only $up_len bytes (status $up_status), expected $((UPLOAD_MIB * 1024 * 1024))"
log "upload: $up_code, curl sent ${up_bytes%.*} B in ${up_secs}s, upstream read $up_len B; RSS $before_kib → peak $peak_kib KiB"
check_logins
stop_sidecar fresh

# --- report ----------------------------------------------------------------------------------------
cat >"$DIR/extra.json" <<EOF
{"threads": $THREADS, "duration": $DURATION, "body_bytes": ${#BODY}, "mode": "$MODE",
 "coalesce_key": $HAS_COALESCE, "floor": $FLOOR,
 "idle_rss_kib": {$idle_json},
 "upload": {"mib": $UPLOAD_MIB, "before_kib": $before_kib, "peak_kib": $peak_kib, "seconds": $up_secs},
 "burst": {"n": $BURST, "logins": $burst_logins, "login_in_flight": $in_flight,
           "ok": $(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["ok"])' "$burst_json"),
           "seconds": $(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["seconds"])' "$burst_json")}}
EOF
echo
echo "## cma-auth-proxy benchmark ($MODE, $(date -u +%Y-%m-%dT%H:%MZ))"
echo
echo "Machine: $(nproc) CPUs, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), Linux $(uname -r);" \
  "$(nginx -v 2>&1 | sed 's/.*: //'), HAProxy $(haproxy -v | sed -n '1s/HAProxy version \([^ ]*\).*/\1/p')," \
  "$(wrk -v 2>&1 | head -1 | awk '{print $1, $2}'), $(openssl version | awk '{print $1, $2}');" \
  "sidecar $("$BIN" --version | awk '{print $2}') ($BIN_LABEL)"
echo
python3 "$LIB" table "$DIR/results.txt" "$DIR/extra.json"
