# Sourced by bench/run.sh and bench/profile.sh: tools, binaries, a private CA, the upstream
# stand-in and every proxy under test, each started on 127.0.0.1 and stopped on exit. See
# BENCHMARKS.md "What it runs". Expects PROFILE (release|debug), FLOOR (0|1) and UPSTREAMS (a list
# of http and/or https) to be set by the caller.
#
# Targets are named NAME@UPSTREAM (nginx@https, sidecar@http, ...); URL[t] is what wrk loads,
# TPIDS[t] the process whose CPU and RSS are the target's, TARGETS_http / TARGETS_https list them.

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
LIB="$HERE/benchlib.py"
TOKEN=bench-token-0123456789
# The leaf certificate's name; it also carries IP:127.0.0.1, which is what the sidecar and wrk
# connect to (no DNS involved).
TLS_NAME=cma.bench.test

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
fail() {
  log "FAILED: $*"
  local f
  for f in "${SIDECAR_LOGS[@]:-}"; do
    [[ -n $f && -s $f ]] || continue
    log "$(basename "$f"):"
    tail -n 20 "$f" >&2 || true
  done
  exit 1
}
# Python's float comparison, for the shell: le A B
le() { python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) <= float(sys.argv[2]) else 1)' "$1" "$2"; }

# --- tools -------------------------------------------------------------------------------------
export PATH="$PATH:/usr/sbin:/sbin"
install_missing() { # tool:package...
  local missing=() pair
  for pair in "$@"; do command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}"); done
  ((${#missing[@]})) || return 0
  log "installing ${missing[*]}"
  local sudo=
  ((EUID == 0)) || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}
install_missing nginx:nginx-light wrk:wrk curl:curl python3:python3 openssl:openssl
# HAPROXY=0: a caller that starts no haproxy (bolt.sh's training) does not need it installed.
[[ ${HAPROXY:-1} == 0 ]] || install_missing haproxy:haproxy

# --- binaries ----------------------------------------------------------------------------------
# A release run measures what the image ships (LAYOUT=bolt, the default): the production build
# compiled and laid out from a profile by bench/bolt.sh (PGO, BOLT). LAYOUT=plain measures
# `cargo build --release` as it comes.
[[ $PROFILE == release ]] && : "${LAYOUT:=bolt}"
[[ ${LAYOUT:-plain} == bolt || ${LAYOUT:-plain} == plain ]] || fail "LAYOUT: bolt or plain, not $LAYOUT"
[[ ${LAYOUT:-plain} == plain || $PROFILE == release ]] || fail "LAYOUT=bolt lays out a release build, not a $PROFILE one"
if [[ -n ${BENCH_BIN:-} ]]; then
  BIN=$BENCH_BIN
  BIN_LABEL="prebuilt $BIN"
elif [[ ${LAYOUT:-plain} == bolt ]]; then
  log "the image's build, compiled and laid out from a profile (bench/bolt.sh --production)"
  BIN=$("$HERE/bolt.sh" --production) || fail "bench/bolt.sh"
  BIN_LABEL="production build of $(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo '?'), compiled and laid out from a profile (PGO, BOLT)"
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
if [[ $FLOOR == 1 ]]; then
  log "cargo build bench/floor ($PROFILE)"
  FLOOR_DIR=${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE
  floor_args=(--quiet --manifest-path "$HERE/floor/Cargo.toml" --target-dir "${CARGO_TARGET_DIR:-$ROOT/target}")
  [[ $PROFILE == release ]] && floor_args+=(--release)
  cargo build "${floor_args[@]}"
fi

# --- temp dir, processes, cleanup --------------------------------------------------------------
DIR=$(mktemp -d "${TMPDIR:-/tmp}/cma-bench.XXXXXX")
chmod 755 "$DIR" # nginx workers may run as another user when started by root
PIDS=()
SIDECAR_LOGS=()
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

# Every port the bench listens on, taken at once so that none is handed out twice.
read -r UP_PORT UP_TLS_PORT UP_H2_PORT NGINX_PORT NGINX_TLS_PORT HAPROXY_PORT HAPROXY_TLS_PORT \
  POOLED_PORT TPC_PORT TPC_TLS_PORT SIDECAR_PORT0 < <(python3 "$LIB" ports 11)
next_sidecar_port=$SIDECAR_PORT0 # sidecars ask for two fresh ports each (see new_sidecar)

wait_http() { # wait_http URL [status [pid]] — until the URL answers (with that status), 20 s at most
  local want=${2:-} pid=${3:-} code
  for _ in $(seq 200); do
    if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then fail "process $pid exited while waiting for $1"; fi
    code=$(curl -s --cacert "$DIR/tls/ca.pem" -o /dev/null -w '%{http_code}' -H "authtoken: $TOKEN" "$1" || true)
    if [[ $code != 000 && (-z $want || $code == "$want") ]]; then return 0; fi
    sleep 0.1
  done
  fail "$1 did not answer${want:+ $want} (last: $code)"
}
lines() { if [[ -f $1 ]]; then wc -l <"$1"; else echo 0; fi; }

# --- a private CA and the stand-in's certificate -------------------------------------------------
# P-256 keys: the handshake is not what is measured (connections are kept alive), and ECDSA is what
# an edge like Contentstack's serves to modern clients.
make_certs() {
  local d=$DIR/tls
  mkdir -p "$d"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -keyout "$d/ca.key" -out "$d/ca.pem" -subj "/CN=cma-auth-proxy bench CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2>"$d/openssl.log" || { cat "$d/openssl.log" >&2; fail "openssl: CA"; }
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$d/leaf.key" -out "$d/leaf.csr" -subj "/CN=$TLS_NAME" 2>>"$d/openssl.log" \
    || { cat "$d/openssl.log" >&2; fail "openssl: leaf key"; }
  printf '%s\n' "subjectAltName=DNS:$TLS_NAME,IP:127.0.0.1" "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >"$d/leaf.ext"
  openssl x509 -req -in "$d/leaf.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial -days 2 \
    -extfile "$d/leaf.ext" -out "$d/leaf.pem" 2>>"$d/openssl.log" \
    || { cat "$d/openssl.log" >&2; fail "openssl: leaf certificate"; }
  chmod 644 "$d"/*.key # nginx reads the key before it drops privileges; nothing secret here
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
# WRAP: a command the proxy under test is started under (bench/count.sh: valgrind); empty for the
# stand-in and everywhere else. A wrapped nginx runs as one process (no master), so that what is
# counted is the one worker that serves.
WRAP=()
start_nginx() { # name — nginx with $DIR/name/nginx.conf; sets NAME_PID
  nginx -q -t -p "$DIR/$1/" -e "$DIR/$1/error.log" -c "$DIR/$1/nginx.conf" 2>"$DIR/$1/stderr" \
    || { cat "$DIR/$1/stderr" >&2; fail "nginx config $1"; }
  local global='daemon off;'
  ((${#WRAP[@]})) && global+=' master_process off;'
  "${WRAP[@]}" nginx -p "$DIR/$1/" -e "$DIR/$1/error.log" -c "$DIR/$1/nginx.conf" -g "$global" \
    2>>"$DIR/$1/stderr" &
  PIDS+=($!)
  eval "${1^^}_PID=$!"
}

# Three listeners, one server: plain HTTP; TLS offering only http/1.1 by ALPN (what every proxy is
# compared on); TLS offering h2 and http/1.1, as Contentstack's edge does (what the sidecar meets
# in production: it then speaks HTTP/2 upstream; nginx and haproxy never do). /v3/_proto says which
# protocol and whether TLS a request arrived with, so the bench can check what it measures.
# One worker process: with two, how a proxy's upstream connections happened to fall on them was the
# largest factor found in a run's rate (all on one: fast runs; split: slow ones), which is noise
# from the stand-in, not a property of the proxy (BENCHMARKS.md, "The stand-in's processes").
start_upstream() {
  mkdir -p "$DIR/up"
  cat >"$DIR/up/nginx.conf" <<EOF
worker_processes 1;
pid $DIR/up/nginx.pid;
error_log $DIR/up/error.log warn;
events { worker_connections 8192; }
http {
  $(nginx_temp_paths "$DIR/up")
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  default_type application/json;
  ssl_certificate $DIR/tls/leaf.pem;
  ssl_certificate_key $DIR/tls/leaf.key;
  ssl_session_cache shared:bench:1m;
  ssl_session_timeout 1h;
  log_format bench '\$request_method \$uri \$status \$request_length \$request_time';
  map \$request_method \$is_post   { POST 1;   default 0; }
  map \$request_method \$is_delete { DELETE 1; default 0; }
  # Slow the login response down (~1-2 s) so the cold burst lands while the login is in flight.
  map \$request_method \$login_rate { POST 100; default 0; }
  server {
    listen 127.0.0.1:$UP_PORT backlog=4096;
    listen 127.0.0.1:$UP_TLS_PORT ssl backlog=4096;
    listen 127.0.0.1:$UP_H2_PORT ssl http2 backlog=4096;
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
    location = /v3/_proto {
      if (\$http_authtoken != "$TOKEN") { return 401 '${DENY_BODY//\'/\\\'}'; }
      return 200 '\$server_protocol \$https';
    }
    location / {
      if (\$http_authtoken != "$TOKEN") { return 401 '${DENY_BODY//\'/\\\'}'; }
      return 200 '$BODY';
    }
  }
}
EOF
  start_nginx up
  wait_http "http://127.0.0.1:$UP_PORT/v3/content_types" 200
}

# --- nginx as a static-token proxy: one server per upstream kind ---------------------------------
start_nginx_proxy() {
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
  upstream cma_tls { server 127.0.0.1:$UP_TLS_PORT; keepalive 64; }
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
  server {
    listen 127.0.0.1:$NGINX_TLS_PORT backlog=4096;
    client_max_body_size 0;
    location / {
      proxy_pass https://cma_tls;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header authtoken $TOKEN;
      proxy_ssl_session_reuse on;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate $DIR/tls/ca.pem;
      proxy_ssl_name $TLS_NAME;
      proxy_ssl_server_name on;
    }
  }
}
EOF
  start_nginx nginx
}

# --- haproxy as a static-token proxy -------------------------------------------------------------
# `ssl verify none`: haproxy does not check the stand-in's certificate. Verification costs only at
# a handshake, and connections are kept alive, so it does not change what is measured.
start_haproxy() {
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
frontend fe_tls
  bind 127.0.0.1:$HAPROXY_TLS_PORT
  http-request set-header authtoken $TOKEN
  default_backend cma_tls
backend cma
  server up 127.0.0.1:$UP_PORT
backend cma_tls
  server up 127.0.0.1:$UP_TLS_PORT ssl verify none
EOF
  haproxy -c -q -f "$DIR/haproxy/haproxy.cfg" || fail "haproxy config"
  haproxy -db -f "$DIR/haproxy/haproxy.cfg" >"$DIR/haproxy/stderr" 2>&1 &
  PIDS+=($!)
  HAPROXY_PID=$!
}

# --- the reference proxies of bench/floor ----------------------------------------------------------
start_floor() { # name port args...
  local name=$1 port=$2
  shift 2
  "${WRAP[@]}" "$FLOOR_DIR/${name%@*}" "127.0.0.1:$port" "$@" >"$DIR/$name.log" 2>&1 &
  PIDS+=($!)
  TPIDS[$name]=$!
  URL[$name]="http://127.0.0.1:$port/v3/content_types"
}

# --- the sidecar ---------------------------------------------------------------------------------
echo bench-password >"$DIR/password"
chmod 600 "$DIR/password"
# Whether this build knows profiles.NAME.coalesce_reads (read coalescing, on by default where it
# exists): `check` refuses unknown keys, so a config with the key passes only if the build has it.
SERVER_EXTRA= # more [server] keys (see probe_affinity)
sidecar_config() { # file upstream_url extra_profile_lines — the product's defaults plus what the bench needs
  local ca=
  [[ $2 == https://* ]] && ca="ca_file = \"$DIR/tls/ca.pem\""
  cat >"$1" <<EOF
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
$SERVER_EXTRA
[upstream]
url = "$2"
$ca
[profiles.default]
email = "bench@example.com"
password_file = "$DIR/password"
validate_interval = "0s"
$3
[log]
level = "${SIDECAR_LOG_LEVEL:-warn}"
EOF
  chmod 600 "$1" # the sidecar warns about a config others can read
}
probe_coalesce() {
  sidecar_config "$DIR/probe.toml" "http://127.0.0.1:$UP_PORT" ""
  "$BIN" check --config "$DIR/probe.toml" >"$DIR/probe.log" 2>&1 \
    || { cat "$DIR/probe.log" >&2; fail "the bench's sidecar config does not pass check"; }
  sidecar_config "$DIR/probe.toml" "http://127.0.0.1:$UP_PORT" "coalesce_reads = false"
  if "$BIN" check --config "$DIR/probe.toml" >>"$DIR/probe.log" 2>&1; then HAS_COALESCE=1; else HAS_COALESCE=0; fi
}
# server.cpu_affinity, where the builds measured know it: "on" (SIDECAR_CPU_AFFINITY), the setting
# for a host of its own, since the bench's machine is one whose CPUs the process does not see as
# set apart for it (BENCHMARKS.md "Choices made for the sweep"). Sets SERVER_EXTRA.
probe_affinity() {
  local affinity="cpu_affinity = \"${SIDECAR_CPU_AFFINITY:-on}\"" bin
  SERVER_EXTRA=$affinity
  sidecar_config "$DIR/probe.toml" "http://127.0.0.1:$UP_PORT" ""
  for bin in "$BIN" ${COMPARE_BIN:+"$COMPARE_BIN"}; do
    "$bin" check --config "$DIR/probe.toml" >>"$DIR/probe.log" 2>&1 || SERVER_EXTRA=
  done
  if [[ -n $SERVER_EXTRA ]]; then
    log "sidecar: $affinity"
  else
    log "sidecar: the kernel places the workers (a build does not know server.cpu_affinity)"
  fi
}

# new_sidecar name upstream_url coalesce(off|default) — writes $DIR/name.toml on two fresh ports.
# The sidecar's address goes in URL[name]; its admin address in ADMIN[name].
new_sidecar() {
  local name=$1 url=$2 extra=
  [[ $3 == off && $HAS_COALESCE == 1 ]] && extra="coalesce_reads = false"
  local ports
  ports=$(python3 "$LIB" ports 2)
  sidecar_config "$DIR/$name.toml" "$url" "$extra"
  sed -i "s/^listen = .*/listen = \"127.0.0.1:${ports% *}\"/; s/^admin_listen = .*/admin_listen = \"127.0.0.1:${ports#* }\"/" "$DIR/$name.toml"
  URL[$name]="http://127.0.0.1:${ports% *}/v3/content_types"
  ADMIN[$name]="http://127.0.0.1:${ports#* }"
}
SIDECAR_STARTS=0 # every start must cause exactly one login, and nothing else may
start_sidecar() { # name — returns once the listener is up (not necessarily logged in)
  SIDECAR_STARTS=$((SIDECAR_STARTS + 1))
  local logf="$DIR/$1-$SIDECAR_STARTS.log"
  SIDECAR_LOGS+=("$logf")
  SIDECAR_LOG[$1]=$logf
  local bin=$BIN
  [[ $1 == sidecar-compare@* ]] && bin=$COMPARE_BIN
  "${WRAP[@]}" "$bin" run --config "$DIR/$1.toml" >"$logf" 2>&1 &
  TPIDS[$1]=$!
  PIDS+=($!)
  wait_http "${ADMIN[$1]}/livez" 200 "$!"
}
check_logins() { # every sidecar start so far logged in exactly once
  local n=0
  for _ in $(seq 50); do # the stand-in logs a login as it finishes sending it
    n=$(lines "$DIR/up/login.log")
    ((n >= SIDECAR_STARTS)) && break
    sleep 0.1
  done
  ((n == SIDECAR_STARTS)) || fail "$SIDECAR_STARTS sidecar starts caused $n logins (expected one each)"
}
stop_sidecar() { # name — SIGTERM, expect exit 0 and one logout
  local rc=0 logouts pid=${TPIDS[$1]}
  logouts=$(lines "$DIR/up/logout.log")
  kill -TERM "$pid"
  wait "$pid" || rc=$?
  forget_pid "$pid"
  ((rc == 0)) || fail "sidecar $1 exited $rc after SIGTERM"
  (($(lines "$DIR/up/logout.log") - logouts == 1)) || log "warning: sidecar $1 did not log out"
}

# --- everything, and the check that each target gives what it should --------------------------------
declare -gA URL TPIDS ADMIN EXPECT_PROTO SIDECAR_LOG
TARGETS_http=()
TARGETS_https=()
start_all() {
  make_certs
  start_upstream
  start_nginx_proxy
  start_haproxy
  probe_coalesce
  probe_affinity
  local up
  for up in $UPSTREAMS; do
    local upurl="http://127.0.0.1:$UP_PORT" proxy_port=$NGINX_PORT haproxy_port=$HAPROXY_PORT
    if [[ $up == https ]]; then
      upurl="https://127.0.0.1:$UP_TLS_PORT"
      proxy_port=$NGINX_TLS_PORT
      haproxy_port=$HAPROXY_TLS_PORT
    fi
    URL[direct@$up]="${upurl}/v3/content_types"
    TPIDS[direct@$up]=$UP_PID
    URL[nginx@$up]="http://127.0.0.1:$proxy_port/v3/content_types"
    TPIDS[nginx@$up]=$NGINX_PID
    URL[haproxy@$up]="http://127.0.0.1:$haproxy_port/v3/content_types"
    TPIDS[haproxy@$up]=$HAPROXY_PID
    local list=(direct@$up nginx@$up haproxy@$up sidecar@$up)
    new_sidecar "sidecar@$up" "$upurl" off
    if [[ $HAS_COALESCE == 1 && ${SIDECAR_DEFAULT:-1} == 1 ]]; then
      new_sidecar "sidecar-default@$up" "$upurl" default
      list+=("sidecar-default@$up")
    fi
    if [[ -n ${COMPARE_BIN:-} ]]; then
      [[ -x $COMPARE_BIN ]] || fail "no sidecar binary at COMPARE_BIN=$COMPARE_BIN"
      new_sidecar "sidecar-compare@$up" "$upurl" off
      list+=("sidecar-compare@$up")
    fi
    if [[ $up == https && ${SIDECAR_H2:-1} == 1 ]]; then
      new_sidecar "sidecar-h2@$up" "https://127.0.0.1:$UP_H2_PORT" off
      list+=("sidecar-h2@$up")
    fi
    if [[ $FLOOR == 1 ]]; then
      if [[ $up == http ]]; then
        start_floor floor-pooled@http "$POOLED_PORT" "http://127.0.0.1:$UP_PORT"
        start_floor floor-tpc@http "$TPC_PORT" "127.0.0.1:$UP_PORT" 2
        list+=(floor-pooled@http floor-tpc@http)
      else
        start_floor floor-tpc@https "$TPC_TLS_PORT" "127.0.0.1:$UP_TLS_PORT" 2 "$DIR/tls/ca.pem" "$TLS_NAME"
        list+=(floor-tpc@https)
      fi
    fi
    local t
    for t in "${list[@]}"; do
      EXPECT_PROTO[$t]="HTTP/1.1 "
      [[ $up == https ]] && EXPECT_PROTO[$t]="HTTP/1.1 on"
      if [[ $t == sidecar* ]]; then
        start_sidecar "$t"
        wait_http "${ADMIN[$t]}/readyz" 200 "${TPIDS[$t]}"
      fi
    done
    [[ $up == https ]] && EXPECT_PROTO[sidecar-h2@https]="HTTP/2.0 on"
    eval "TARGETS_$up=(\"\${list[@]}\")"
  done
  check_logins
  check_targets
}

targets_of() { eval "echo \"\${TARGETS_$1[@]}\""; } # upstream kind -> its targets

# Correctness before speed: every target answers the credential-free request with the upstream's
# body, and reaches the upstream the way the cell says (TLS or not, HTTP/1.1 or HTTP/2).
check_targets() {
  local up t got hdr
  for up in $UPSTREAMS; do
    for t in $(targets_of "$up"); do
      wait_http "${URL[$t]}" 200 "${TPIDS[$t]}"
      hdr=()
      [[ $t == direct@* ]] && hdr=(-H "authtoken: $TOKEN")
      for _ in $(seq 20); do # a few requests before the idle RSS reading
        got=$(curl -sS --fail --cacert "$DIR/tls/ca.pem" "${hdr[@]}" "${URL[$t]}") || fail "$t: request failed"
      done
      [[ $got == "$BODY" ]] || fail "$t: unexpected body: ${got:0:200}"
      got=$(curl -sS --fail --cacert "$DIR/tls/ca.pem" "${hdr[@]}" "${URL[$t]%/v3/*}/v3/_proto") \
        || fail "$t: request for the upstream protocol failed"
      [[ $got == "${EXPECT_PROTO[$t]}" ]] || fail "$t: the upstream saw '$got', expected '${EXPECT_PROTO[$t]}'"
    done
  done
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$UP_PORT/v3/content_types")
  [[ $code == 401 ]] || fail "upstream stand-in answers $code without a token (expected 401)"
}

# Nothing of ours runs between measurements, so CPU use then is someone else's (a compiler, say).
# Wait up to QUIET_WAIT seconds for it to drop below 0.25 cores; print the last reading.
wait_quiet() {
  local busy waited=0
  while :; do
    busy=$(python3 "$LIB" busy 0.5)
    if le "$busy" 0.25 || ((waited >= QUIET_WAIT)); then
      echo "$busy"
      return
    fi
    ((waited % 30 == 0)) && log "machine busy ($busy cores used by other processes); waiting up to ${QUIET_WAIT}s"
    sleep 2
    waited=$((waited + 3))
  done
}

wrk_cmd() { # target connections seconds — sets WRK to the wrk command line
  local threads=$THREADS
  ((threads > $2)) && threads=$2
  WRK=(wrk -t"$threads" -c"$2" -d"$3"s --latency)
  [[ $1 == direct@* ]] && WRK+=(-H "authtoken: $TOKEN")
  WRK+=("${URL[$1]}")
}
