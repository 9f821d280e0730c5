#!/usr/bin/env bash
# Where the microseconds go, for one cell of bench/run.sh's sweep: per proxy, per request, the
# syscalls, context switches, CPU migrations and run-queue wait, and the sidecar's connections per
# worker. Same stand-in, proxies and configs as run.sh (bench/common.sh). See BENCHMARKS.md
# "Profiling one cell". Usage: bench/profile.sh [--smoke] [--release|--debug] [CONNECTIONS [UPSTREAM]]
#
#   CONNECTIONS  client connections (default 8); UPSTREAM http or https (default http)
#   --smoke      1 s per measurement, debug build, no floor proxy: checks that the script works
#
# Environment overrides:
#   TARGETS      which proxies (default "nginx haproxy sidecar floor-tpc"; also direct,
#                floor-pooled (http only), sidecar-h2 (https only), sidecar-default)
#   DURATION     seconds per measurement (8; smoke 1)
#   STRACE=0     skip the second, strace -c pass (syscalls by name; strace slows the target down)
#   SCHED=1      add a pass under `perf sched record -a` (SCHED_DURATION s, default 3): each CPU's
#                time by process, where the target's threads ran, and who held their CPU while
#                they were runnable but waiting (the scheduler's events slow every switch a little)
#   FLOOR, QUIET_WAIT (600; smoke 0), BENCH_BIN, LAYOUT, KEEP_TMP as for run.sh
#
# For each target: one wrk run with `perf stat` (task-clock, context switches, CPU migrations,
# syscalls) attached to the target's processes, while its threads' /proc schedstat and context
# switch counters are read before and after (run-queue wait: how long the threads were runnable
# but not running); then, unless STRACE=0, one wrk run under `strace -c -f` for syscalls by name.
# The sidecar runs with `cma_auth_proxy::server=debug`, which logs one line per accepted
# connection (the worker it went to and that worker's open connections); nothing per request.
# Without perf, the perf columns are empty; hardware counters are not used (a VM may lack them).
set -euo pipefail

MODE=full
PROFILE=
CONNS=
UP=
for arg in "$@"; do
  case $arg in
    --smoke) MODE=smoke ;;
    --release) PROFILE=release ;;
    --debug) PROFILE=debug ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    http | https) UP=$arg ;;
    [1-9]*) CONNS=$arg ;;
    *) echo "profile.sh: unknown argument: $arg (try --help)" >&2; exit 64 ;;
  esac
done
: "${CONNS:=8}" "${UP:=http}" "${STRACE:=1}" "${SCHED:=0}" "${SCHED_DURATION:=3}" "${TARGETS:=nginx haproxy sidecar floor-tpc}"
if [[ $MODE == smoke ]]; then
  : "${DURATION:=1}" "${PROFILE:=debug}" "${FLOOR:=0}" "${QUIET_WAIT:=0}"
else
  : "${DURATION:=8}" "${PROFILE:=release}" "${FLOOR:=1}" "${QUIET_WAIT:=600}"
fi
UPSTREAMS=$UP
THREADS=1
[[ " $TARGETS " == *" sidecar-default "* ]] || SIDECAR_DEFAULT=0
[[ " $TARGETS " == *" sidecar-h2 "* ]] || SIDECAR_H2=0
SIDECAR_LOG_LEVEL="warn,cma_auth_proxy::server=debug"

# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

HAVE_PERF=0
if command -v perf >/dev/null && perf stat -e task-clock,raw_syscalls:sys_enter true >/dev/null 2>&1; then
  HAVE_PERF=1
else
  log "perf stat with the syscall tracepoint does not work here; perf columns stay empty"
fi
if [[ $STRACE == 1 ]] && ! command -v strace >/dev/null; then
  install_missing strace:strace
fi

start_all

profiles=()
scheds=()
for name in $TARGETS; do
  t=$name@$UP
  if [[ -z ${URL[$t]:-} ]]; then
    log "skipping $t: not running in this cell (FLOOR=$FLOOR)"
    continue
  fi
  pids=$(python3 -c 'import sys; sys.path.insert(0, sys.argv[1]); import benchlib; print(",".join(map(str, benchlib.children_of(sys.argv[2:]))))' \
    "$HERE" "${TPIDS[$t]}")
  logf=-
  if [[ $name == sidecar* ]]; then
    logf="$DIR/$t.profile.log"
    log_lines_before=$(lines "${SIDECAR_LOG[$t]}")
  fi
  wait_quiet >/dev/null
  wrk_cmd "$t" "$CONNS" "$DURATION"
  python3 "$LIB" threads "$DIR/$t.before.json" "${TPIDS[$t]}"
  perf_pid=
  if ((HAVE_PERF)); then
    perf stat -x, -o "$DIR/$t.perf" -e task-clock,context-switches,cpu-migrations,raw_syscalls:sys_enter \
      -p "$pids" 2>/dev/null &
    perf_pid=$!
    PIDS+=("$perf_pid")
    sleep 0.2 # perf attaches to every thread before counting
  fi
  "${WRK[@]}" >"$DIR/$t.wrk" 2>&1 || { cat "$DIR/$t.wrk" >&2; fail "wrk against $t"; }
  if [[ -n $perf_pid ]]; then
    kill -INT "$perf_pid"
    wait "$perf_pid" || true
    forget_pid "$perf_pid"
  fi
  python3 "$LIB" threads "$DIR/$t.after.json" "${TPIDS[$t]}"
  if [[ $name == sidecar* ]]; then
    tail -n +"$((log_lines_before + 1))" "${SIDECAR_LOG[$t]}" >"$logf"
  fi
  if [[ $SCHED == 1 ]] && ((HAVE_PERF)); then
    wrk_cmd "$t" "$CONNS" "$SCHED_DURATION"
    perf sched record -a -o "$DIR/$t.sched.data" -- "${WRK[@]}" >"$DIR/$t.sched.wrk" 2>"$DIR/$t.sched.err" \
      || { cat "$DIR/$t.sched.err" >&2; fail "wrk against $t under perf sched"; }
    perf sched timehist --state -i "$DIR/$t.sched.data" >"$DIR/$t.sched.txt" 2>/dev/null
    rm -f "$DIR/$t.sched.data"
    python3 "$LIB" sched "$DIR/$t.sched.json" "$t" "$DIR/$t.sched.txt" "$pids" "$UP_PID" "$DIR/$t.sched.wrk"
    scheds+=("$DIR/$t.sched.json")
    wrk_cmd "$t" "$CONNS" "$DURATION"
  fi
  if [[ $STRACE == 1 ]]; then
    strace_args=()
    IFS=, read -ra plist <<<"$pids"
    for p in "${plist[@]}"; do strace_args+=(-p "$p"); done
    strace -c -f -q -o "$DIR/$t.strace" "${strace_args[@]}" &
    strace_pid=$!
    PIDS+=("$strace_pid")
    sleep 0.5 # strace attaches to every thread
    "${WRK[@]}" >"$DIR/$t.strace.wrk" 2>&1 || { cat "$DIR/$t.strace.wrk" >&2; fail "wrk against $t under strace"; }
    kill -INT "$strace_pid"
    wait "$strace_pid" || true
    forget_pid "$strace_pid"
  fi
  python3 "$LIB" profile "$DIR/$t.profile.json" "$t" "$DIR/$t.before.json" "$DIR/$t.after.json" \
    "$DIR/$t.wrk" "$DIR/$t.perf" "$DIR/$t.strace" "$DIR/$t.strace.wrk" "$logf"
  profiles+=("$DIR/$t.profile.json")
  log "profiled $t"
done
check_logins

echo
echo "## cma-auth-proxy profile: $CONNS connections, $UP upstream ($MODE, $(date -u +%Y-%m-%dT%H:%MZ))"
echo
echo "Machine: $(nproc) CPUs, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), Linux $(uname -r);" \
  "sidecar $("$BIN" --version | awk '{print $2}') ($BIN_LABEL). wrk -t1 -c$CONNS -d${DURATION}s per target." \
  "CPU and run-queue wait from the targets' threads' /proc schedstat; syscalls, context switches and" \
  "migrations from \`perf stat\`$( ((HAVE_PERF)) || echo ' (not available here)')."
echo
python3 "$LIB" profile-report "${profiles[@]}"
if ((${#scheds[@]})); then
  echo "Who ran where (\`perf sched record -a\`, a separate ${SCHED_DURATION} s run per target; the recording"
  echo "itself costs each switch a little). Runnable, not running: a thread's time between being woken or"
  echo "preempted and running again."
  echo
  python3 "$LIB" sched-report "${scheds[@]}"
fi
