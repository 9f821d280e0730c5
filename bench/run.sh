#!/usr/bin/env bash
# Benchmark: cma-auth-proxy vs nginx and haproxy as static-token proxies, same machine, same run.
# See BENCHMARKS.md. Usage: bench/run.sh [--smoke] [--release|--debug]
#
#   --smoke    CI variant: 1 round x 2 s per target, 64 MiB upload, burst of 200; exits non-zero
#              only when something is broken (failed request, wrong login count, bad exit), never
#              because something is slow.
#   --release  build/use the release binary (default for the full run)
#   --debug    build/use the debug binary (default for --smoke: CI has built it for the tests)
#
# Environment overrides: ROUNDS, DURATION (s), WARMUP (s), CONNECTIONS, THREADS, UPLOAD_MIB, BURST;
#   QUIET_WAIT  seconds to wait before each measurement for other processes' CPU use to drop
#               (full run: 600, smoke: 0)
#   RETRIES     how often a measurement disturbed by other processes (> 0.25 cores) is repeated
#               (full run: 3, smoke: 0)
#   BENCH_BIN   use this sidecar binary instead of building one
#   KEEP_TMP=1  keep the temp dir (configs, logs, raw wrk output) for inspection
#   FLOOR=1     also measure two minimal hyper proxies (bench/floor) as reference points
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
LIB="$HERE/benchlib.py"
TOKEN=bench-token-0123456789

MODE=full
PROFILE=
for arg in "$@"; do
  case $arg in
    --smoke) MODE=smoke ;;
    --release) PROFILE=release ;;
    --debug) PROFILE=debug ;;
    -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument: $arg (try --help)" >&2; exit 64 ;;
  esac
done
if [[ $MODE == smoke ]]; then
  : "${ROUNDS:=1}" "${DURATION:=2}" "${WARMUP:=0}" "${UPLOAD_MIB:=64}" "${BURST:=200}" "${PROFILE:=debug}"
else
  : "${ROUNDS:=3}" "${DURATION:=10}" "${WARMUP:=2}" "${UPLOAD_MIB:=1024}" "${BURST:=1000}" "${PROFILE:=release}"
fi
: "${CONNECTIONS:=64}" "${THREADS:=2}"
((ROUNDS >= 1 && DURATION >= 1 && UPLOAD_MIB >= 1 && BURST >= 1)) || { echo "run.sh: ROUNDS, DURATION, UPLOAD_MIB and BURST must be >= 1" >&2; exit 64; }
if [[ $MODE == smoke ]]; then : "${QUIET_WAIT:=0}" "${RETRIES:=0}"; else : "${QUIET_WAIT:=600}" "${RETRIES:=3}"; fi

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
fail() {
  log "FAILED: $*"
  if ((${SIDECAR_RUNS:-0} > 0)); then
    log "sidecar log (run $SIDECAR_RUNS):"
    tail -n 20 "$DIR/sidecar-$SIDECAR_RUNS.log" >&2 || true
  fi
  exit 1
}

# --- tools -------------------------------------------------------------------------------------
export PATH="$PATH:/usr/sbin:/sbin"
missing=()
command -v nginx >/dev/null || missing+=(nginx-light)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  SUDO=
  ((EUID == 0)) || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- the sidecar binary ----------------------------------------------------------------------
if [[ -n ${BENCH_BIN:-} ]]; then
  BIN=$BENCH_BIN
  BIN_LABEL="prebuilt $BIN"
else
  BIN_LABEL="$PROFILE build of $(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo '?')"
  log "cargo build ($PROFILE)"
  if [[ $PROFILE == release ]]; then
    (cd "$ROOT" && cargo build --release --quiet --bin cma-auth-proxy)
  else
    (cd "$ROOT" && cargo build --quiet --bin cma-auth-proxy)
  fi
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE/cma-auth-proxy
fi
[[ -x $BIN ]] || fail "no sidecar binary at $BIN"
if [[ ${FLOOR:-0} == 1 ]]; then
  log "cargo build bench/floor (release)"
  FLOOR_TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
  cargo build --release --quiet --manifest-path "$HERE/floor/Cargo.toml" --target-dir "$FLOOR_TARGET"
fi

# --- temp dir, processes, cleanup ------------------------------------------------------------
DIR=$(mktemp -d "${TMPDIR:-/tmp}/cma-bench.XXXXXX")
chmod 755 "$DIR" # nginx workers may run as another user when started by root
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  if [[ ${KEEP_TMP:-0} == 1 ]]; then log "kept $DIR"; else rm -rf "$DIR"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

forget_pid() { # drop a pid we already stopped from the cleanup list
  local keep=() p
  for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

read -r UP_PORT NGINX_PORT HAPROXY_PORT SIDECAR_PORT ADMIN_PORT POOLED_PORT TPC_PORT < <(python3 "$LIB" ports 7)

wait_http() { # wait_http URL [status [pid]] — until the URL answers (with that status), 20 s at most
  local want=${2:-} pid=${3:-} code
  for _ in $(seq 200); do
    if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then fail "process $pid exited while waiting for $1"; fi
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "authtoken: $TOKEN" "$1" || true)
    if [[ $code != 000 && ( -z $want || $code == "$want" ) ]]; then return 0; fi
    sleep 0.1
  done
  fail "$1 did not answer${want:+ $want} (last: $code)"
}

# --- upstream stand-in: nginx ------------------------------------------------------------------
BODY=$(python3 "$LIB" body 1024)
LOGIN_BODY='{"notice":"Login Successful.","user":{"uid":"blt1","email":"bench@example.com","authtoken":"'$TOKEN'"}}'
LOGOUT_BODY='{"notice":"You'"'"'ve logged out successfully!"}'
DENY_BODY='{"error_message":"You'"'"'re not allowed in here unless you'"'"'re logged in.","error_code":105,"errors":{"authtoken":["is not valid."]}}'
nginx_temp_paths() { # $1: prefix dir
  local d
  for d in client_body proxy fastcgi uwsgi scgi; do echo "${d}_temp_path $1/${d}_temp;"; done
}
mkdir -p "$DIR/up"
cat >"$DIR/up/nginx.conf" <<EOF
worker_processes 2;
pid $DIR/up/nginx.pid;
error_log $DIR/up/error.log warn;
events { worker_connections 8192; }
http {
  $(nginx_temp_paths "$DIR/up")
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  default_type application/json;
  log_format bench '\$request_method \$uri \$status \$request_length \$request_time';
  map \$request_method \$is_post   { POST 1;   default 0; }
  map \$request_method \$is_delete { DELETE 1; default 0; }
  # Slow the login response down (~1-2 s) so the cold burst lands while the login is in flight.
  map \$request_method \$login_rate { POST 100; default 0; }
  server {
    listen 127.0.0.1:$UP_PORT backlog=4096;
    location = /v3/user-session {
      access_log $DIR/up/login.log bench if=\$is_post;
      access_log $DIR/up/logout.log bench if=\$is_delete;
      limit_rate \$login_rate;
      if (\$request_method = DELETE) { return 200 '${LOGOUT_BODY//\'/\\\'}'; }
      return 200 '$LOGIN_BODY';
    }
    # Bodies are read completely (buffered to a temp file) before the answer: proxy_pass with
    # request buffering on, to a sink location on this same server.
    location = /v3/_upload {
      if (\$http_authtoken != "$TOKEN") { return 401 '${DENY_BODY//\'/\\\'}'; }
      client_max_body_size 0;
      access_log $DIR/up/upload.log bench;
      proxy_pass http://127.0.0.1:$UP_PORT/_sink;
      proxy_http_version 1.1;
    }
    location = /_sink { client_max_body_size 0; return 200 '{"ok":true}'; }
    location / {
      if (\$http_authtoken != "$TOKEN") { return 401 '${DENY_BODY//\'/\\\'}'; }
      return 200 '$BODY';
    }
  }
}
EOF
start_nginx() { # name
  nginx -q -t -p "$DIR/$1/" -e "$DIR/$1/error.log" -c "$DIR/$1/nginx.conf" 2>"$DIR/$1/stderr" \
    || { cat "$DIR/$1/stderr" >&2; fail "nginx config $1"; }
  nginx -p "$DIR/$1/" -e "$DIR/$1/error.log" -c "$DIR/$1/nginx.conf" -g 'daemon off;' \
    2>>"$DIR/$1/stderr" &
  PIDS+=($!)
  eval "${1^^}_PID=$!"
}
start_nginx up
wait_http "http://127.0.0.1:$UP_PORT/v3/content_types" 200

# --- nginx as a static-token proxy -------------------------------------------------------------
mkdir -p "$DIR/nginx"
cat >"$DIR/nginx/nginx.conf" <<EOF
worker_processes auto;
pid $DIR/nginx/nginx.pid;
error_log $DIR/nginx/error.log warn;
events { worker_connections 8192; }
http {
  $(nginx_temp_paths "$DIR/nginx")
  access_log off;
  keepalive_requests 1000000;
  upstream cma { server 127.0.0.1:$UP_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX_PORT backlog=4096;
    client_max_body_size 0;
    location / {
      proxy_pass http://cma;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header authtoken $TOKEN;
    }
  }
}
EOF
start_nginx nginx

# --- haproxy as a static-token proxy -------------------------------------------------------------
mkdir -p "$DIR/haproxy"
cat >"$DIR/haproxy/haproxy.cfg" <<EOF
global
  nbthread 2
  maxconn 4096
defaults
  mode http
  option http-keep-alive
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 75s
frontend fe
  bind 127.0.0.1:$HAPROXY_PORT
  http-request set-header authtoken $TOKEN
  default_backend cma
backend cma
  server up 127.0.0.1:$UP_PORT
EOF
haproxy -c -q -f "$DIR/haproxy/haproxy.cfg" || fail "haproxy config"
haproxy -db -f "$DIR/haproxy/haproxy.cfg" >"$DIR/haproxy/stderr" 2>&1 &
PIDS+=($!)
HAPROXY_PID=$!

# --- optional reference points: minimal hyper proxies (bench/floor) ---------------------------------
if [[ ${FLOOR:-0} == 1 ]]; then
  "$FLOOR_TARGET/release/floor-pooled" "127.0.0.1:$POOLED_PORT" "http://127.0.0.1:$UP_PORT" >"$DIR/floor-pooled.log" 2>&1 &
  PIDS+=($!)
  POOLED_PID=$!
  "$FLOOR_TARGET/release/floor-tpc" "127.0.0.1:$TPC_PORT" "127.0.0.1:$UP_PORT" 2 >"$DIR/floor-tpc.log" 2>&1 &
  PIDS+=($!)
  TPC_PID=$!
fi

# --- the sidecar ---------------------------------------------------------------------------------
echo bench-password >"$DIR/password"
cat >"$DIR/sidecar.toml" <<EOF
[server]
listen = "127.0.0.1:$SIDECAR_PORT"
admin_listen = "127.0.0.1:$ADMIN_PORT"
[upstream]
url = "http://127.0.0.1:$UP_PORT"
[profiles.default]
email = "bench@example.com"
password_file = "$DIR/password"
validate_interval = "0s"
[log]
level = "warn"
EOF
lines() { if [[ -f $1 ]]; then wc -l <"$1"; else echo 0; fi; }
SIDECAR_RUNS=0
start_sidecar() { # sets SIDECAR_PID; returns once the listener is up (not necessarily logged in)
  SIDECAR_RUNS=$((SIDECAR_RUNS + 1))
  SIDECAR_LOGINS_BEFORE=$(lines "$DIR/up/login.log")
  "$BIN" run --config "$DIR/sidecar.toml" >"$DIR/sidecar-$SIDECAR_RUNS.log" 2>&1 &
  SIDECAR_PID=$!
  PIDS+=("$SIDECAR_PID")
  wait_http "http://127.0.0.1:$ADMIN_PORT/livez" 200 "$SIDECAR_PID"
}
stop_sidecar() { # SIGTERM, expect exit 0 and one logout; checks one login for this run
  local rc=0 logouts
  logouts=$(lines "$DIR/up/logout.log")
  kill -TERM "$SIDECAR_PID"
  wait "$SIDECAR_PID" || rc=$?
  forget_pid "$SIDECAR_PID"
  ((rc == 0)) || fail "sidecar exited $rc after SIGTERM"
  local logins=$(($(lines "$DIR/up/login.log") - SIDECAR_LOGINS_BEFORE))
  ((logins == 1)) || fail "sidecar run $SIDECAR_RUNS caused $logins logins (expected 1)"
  (($(lines "$DIR/up/logout.log") - logouts == 1)) || log "warning: sidecar run $SIDECAR_RUNS did not log out"
}

start_sidecar
wait_http "http://127.0.0.1:$ADMIN_PORT/readyz" 200 "$SIDECAR_PID"
wait_http "http://127.0.0.1:$NGINX_PORT/v3/content_types" 200
wait_http "http://127.0.0.1:$HAPROXY_PORT/v3/content_types" 200

# Correctness first: every target answers the credential-free request with the upstream's body.
declare -A URL=(
  [direct]="http://127.0.0.1:$UP_PORT/v3/content_types"
  [nginx]="http://127.0.0.1:$NGINX_PORT/v3/content_types"
  [haproxy]="http://127.0.0.1:$HAPROXY_PORT/v3/content_types"
  [sidecar]="http://127.0.0.1:$SIDECAR_PORT/v3/content_types"
)
declare -A TPIDS=([direct]="$UP_PID" [nginx]="$NGINX_PID" [haproxy]="$HAPROXY_PID" [sidecar]="$SIDECAR_PID")
TARGETS=(direct nginx haproxy sidecar)
if [[ ${FLOOR:-0} == 1 ]]; then
  URL[floor-pooled]="http://127.0.0.1:$POOLED_PORT/v3/content_types"
  URL[floor-tpc]="http://127.0.0.1:$TPC_PORT/v3/content_types"
  TPIDS[floor-pooled]=$POOLED_PID
  TPIDS[floor-tpc]=$TPC_PID
  TARGETS+=(floor-pooled floor-tpc)
  wait_http "${URL[floor-pooled]}" 200 "$POOLED_PID"
  wait_http "${URL[floor-tpc]}" 200 "$TPC_PID"
fi
for t in "${TARGETS[@]}"; do
  hdr=()
  [[ $t == direct ]] && hdr=(-H "authtoken: $TOKEN")
  for _ in $(seq 20); do # "a few requests" before the idle RSS reading
    got=$(curl -sS --fail "${hdr[@]}" "${URL[$t]}") || fail "$t: request failed"
  done
  [[ $got == "$BODY" ]] || fail "$t: unexpected body: ${got:0:200}"
done
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$UP_PORT/v3/content_types")
[[ $code == 401 ]] || fail "upstream stand-in answers $code without a token (expected 401)"

sleep 1
declare -A IDLE_RSS
idle_json=
for t in "${TARGETS[@]}"; do
  [[ $t == direct ]] && continue
  IDLE_RSS[$t]=$(python3 "$LIB" rss "${TPIDS[$t]}")
  idle_json+="${idle_json:+, }\"$t\": ${IDLE_RSS[$t]}"
done
log "idle RSS (KiB): nginx ${IDLE_RSS[nginx]}, haproxy ${IDLE_RSS[haproxy]}, cma-auth-proxy ${IDLE_RSS[sidecar]}"

start_sampler() { # outfile pid... — max RSS and CPU time of the pids (and children) until stopped
  local out=$1
  shift
  python3 "$LIB" sample "$out" "$@" &
  SAMPLER=$!
  PIDS+=("$SAMPLER")
  for _ in $(seq 100); do [[ -e $out.ready ]] && return 0; sleep 0.02; done
  fail "sampler did not start"
}
stop_sampler() {
  kill -TERM "$SAMPLER"
  wait "$SAMPLER" || true
  forget_pid "$SAMPLER"
}

# Nothing of ours runs between measurements, so CPU use then is someone else's (a compiler, say).
# Wait up to QUIET_WAIT seconds for it to drop below 0.25 cores; print the last reading.
wait_quiet() {
  local busy waited=0
  while :; do
    busy=$(python3 "$LIB" busy 0.5)
    if python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) <= 0.25 else 1)' "$busy" \
      || ((waited >= QUIET_WAIT)); then
      echo "$busy"
      return
    fi
    ((waited % 30 == 0)) && log "machine busy ($busy cores used by other processes); waiting up to ${QUIET_WAIT}s"
    sleep 2
    waited=$((waited + 3))
  done
}

# --- throughput and latency -------------------------------------------------------------------------
wrk_cmd() { # target seconds — sets WRK to the wrk command line for a target
  WRK=(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$2"s --latency)
  [[ $1 == direct ]] && WRK+=(-H "authtoken: $TOKEN")
  WRK+=("${URL[$1]}")
}
if ((WARMUP > 0)); then
  for t in "${TARGETS[@]}"; do
    wrk_cmd "$t" "$WARMUP"
    "${WRK[@]}" >"$DIR/warmup-$t.txt" 2>&1 || { cat "$DIR/warmup-$t.txt" >&2; fail "wrk against $t"; }
  done
fi
# One measurement: wrk under benchlib's `measure`, which also records the target's RSS and the CPU
# time of target, upstream, wrk and everything else. A run during which other processes took more
# than 0.25 cores is repeated (up to RETRIES times) after waiting for quiet again.
: >"$DIR/results.txt"
for ((r = 0; r < ROUNDS; r++)); do
  for ((i = 0; i < ${#TARGETS[@]}; i++)); do # rotate the order each round
    t=${TARGETS[$(((i + r) % ${#TARGETS[@]}))]}
    for ((attempt = 0; ; attempt++)); do
      wait_quiet >/dev/null
      out="$DIR/wrk-$t-$r.txt"
      wrk_cmd "$t" "$DURATION"
      wrk_rc=
      read -r rss cpu_t cpu_u cpu_w foreign wrk_rc < <(python3 "$LIB" measure "$DIR/measure-$t-$r.json" \
        "${TPIDS[$t]}" "$UP_PID" "$out" "${WRK[@]}") || true
      [[ -n ${wrk_rc:-} ]] || fail "measuring $t failed"
      ((wrk_rc == 0)) || { cat "$out" >&2; fail "wrk against $t exited $wrk_rc"; }
      errors=
      read -r rps p50 p99 total errors < <(python3 "$LIB" wrk "$out") || true
      [[ -n $errors ]] || { cat "$out" >&2; fail "cannot read wrk's output for $t"; }
      log "round $((r + 1))/$ROUNDS $t: $rps req/s, p50 $p50 ms, p99 $p99 ms, $total requests," \
        "$errors errors; RSS max $rss KiB; CPU cores: target $cpu_t, upstream $cpu_u, wrk $cpu_w, others $foreign"
      ((errors == 0)) || { cat "$out" >&2; fail "$t: $errors failed requests under load"; }
      if python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) <= 0.25 else 1)' "$foreign" \
        || ((attempt >= RETRIES)); then
        break
      fi
      log "other processes took $foreign cores during that run; repeating it"
    done
    echo "$t $r $rps $p50 $p99 $total $errors $rss $cpu_t $cpu_u $cpu_w $foreign" >>"$DIR/results.txt"
    sleep 0.5
  done
done
stop_sidecar

# --- cold burst: a fresh sidecar, N concurrent requests while its first login is in flight ---------
start_sidecar
in_flight=true
[[ $(lines "$DIR/up/login.log") -eq $SIDECAR_LOGINS_BEFORE ]] || in_flight=false
burst_json=$(python3 "$LIB" burst "$SIDECAR_PORT" "$BURST" /v3/content_types) \
  || { echo "$burst_json" >&2; fail "cold burst: not every request got 200"; }
burst_logins=$(($(lines "$DIR/up/login.log") - SIDECAR_LOGINS_BEFORE))
log "cold burst of $BURST: $burst_json, logins: $burst_logins (login in flight when sent: $in_flight)"
stop_sidecar

# --- streamed upload through a fresh sidecar ---------------------------------------------------------
start_sidecar
wait_http "http://127.0.0.1:$ADMIN_PORT/readyz" 200 "$SIDECAR_PID"
for _ in $(seq 20); do curl -sS --fail -o /dev/null "${URL[sidecar]}" || fail "sidecar request failed"; done
sleep 0.5
before_kib=$(python3 "$LIB" rss "$SIDECAR_PID")
echo 5 >"/proc/$SIDECAR_PID/clear_refs" 2>/dev/null || true # reset VmHWM (peak RSS)
start_sampler "$DIR/sample-upload.json" "$SIDECAR_PID"
log "uploading $UPLOAD_MIB MiB through the sidecar (chunked)"
upload=$(head -c "$((UPLOAD_MIB * 1024 * 1024))" /dev/zero \
  | curl -sS -T - -X POST -H 'content-type: application/octet-stream' -o "$DIR/upload-response" \
    -w '%{http_code} %{size_upload} %{time_total}' "http://127.0.0.1:$SIDECAR_PORT/v3/_upload") \
  || fail "upload: curl failed"
stop_sampler
read -r up_code up_bytes up_secs <<<"$upload"
hwm_kib=$(awk '/^VmHWM:/ {print $2}' "/proc/$SIDECAR_PID/status")
sampled_kib=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["max_rss_kib"])' "$DIR/sample-upload.json")
peak_kib=$((hwm_kib > sampled_kib ? hwm_kib : sampled_kib))
[[ $up_code == 200 ]] || fail "upload: status $up_code ($(head -c 300 "$DIR/upload-response"))"
for _ in $(seq 50); do [[ $(lines "$DIR/up/upload.log") -gt 0 ]] && break; sleep 0.1; done
up_len=0
read -r _ _ up_status up_len _ < <(tail -n 1 "$DIR/up/upload.log" 2>/dev/null) || true
((up_len >= UPLOAD_MIB * 1024 * 1024)) \
  || fail "upload: the upstream read only $up_len bytes (status $up_status), expected $((UPLOAD_MIB * 1024 * 1024))"
log "upload: $up_code, curl sent ${up_bytes%.*} B in ${up_secs}s, upstream read $up_len B; RSS $before_kib → peak $peak_kib KiB"
stop_sidecar

# --- report ----------------------------------------------------------------------------------------
cat >"$DIR/extra.json" <<EOF
{"threads": $THREADS, "connections": $CONNECTIONS, "duration": $DURATION, "body_bytes": ${#BODY},
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
  "$(wrk -v 2>&1 | head -1 | awk '{print $1, $2}'); sidecar $("$BIN" --version | awk '{print $2}')" \
  "($BIN_LABEL)"

echo
python3 "$LIB" table "$DIR/results.txt" "$DIR/extra.json"
if [[ $burst_logins -ne 1 ]]; then fail "cold burst caused $burst_logins logins (expected 1)"; fi
