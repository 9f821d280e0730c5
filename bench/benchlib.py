#!/usr/bin/env python3
"""Helpers for bench/run.sh (standard library only).

Subcommands:
  ports N                          print N free 127.0.0.1 TCP ports
  body BYTES                       print a JSON document of exactly BYTES bytes (no ' or $)
  busy SECONDS                     print how many CPU cores were busy (anything) over SECONDS
  rss PID...                       print the summed VmRSS (KiB) of the PIDs and their children
  sample OUT PID...                until SIGTERM: max summed VmRSS of the PIDs (+children), CPU time
  measure OUT TPIDS UPIDS WRKOUT CMD...  run CMD (wrk), sample RSS/CPU of target, upstream, CMD;
                                   print rss cores(target upstream cmd others) rc target_cpu_s
  wrk FILE                         parse wrk --latency output: rps p50_ms p99_ms total errors
  burst PORT N PATH                N concurrent cold requests (connect all, then send all)
  table RESULTS EXTRA              print the result tables (markdown) from run.sh's files
  threads OUT PID...               snapshot per-thread CPU, run-queue wait and context switches
  profile OUT NAME BEFORE AFTER WRKOUT PERF STRACE STRACE_WRKOUT LOG
                                   one target's profile (profile.sh) as JSON, from those files
  profile-report JSON...           print profile.sh's tables (markdown)
  count OUT NAME CONNS UPSTREAM REQUESTS CALLGRIND PERF STRACE
                                   one target's counts (count.sh) as JSON, from those files
  count-report JSON...             print count.sh's table (markdown)
"""

import asyncio
import json
import os
import re
import signal
import socket
import statistics
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cmd_ports(n):
    socks = []
    for _ in range(int(n)):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in socks))
    for s in socks:
        s.close()


def cmd_body(size):
    size = int(size)
    fields = [
        ("Title", "title", "text", True),
        ("URL", "url", "text", True),
        ("Body", "body", "json", False),
        ("Author", "author", "reference", False),
        ("Published", "published_at", "isodate", False),
    ]
    doc = {
        "content_types": [
            {
                "title": "Bench Page",
                "uid": "bench_page",
                "created_at": "2024-01-01T00:00:00.000Z",
                "updated_at": "2024-01-01T00:00:00.000Z",
                "schema": [
                    {"display_name": d, "uid": u, "data_type": t, "mandatory": m, "unique": False}
                    for d, u, t, m in fields
                ],
                "description": "",
            }
        ],
        "count": 1,
    }
    base = len(json.dumps(doc, separators=(",", ":")))
    doc["content_types"][0]["description"] = "x" * max(0, size - base)
    out = json.dumps(doc, separators=(",", ":"))
    assert "'" not in out and "$" not in out
    sys.stdout.write(out)


def children_of(pids):
    """pids plus their direct children (nginx master -> workers)."""
    pids = set(int(p) for p in pids)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid in pids:
            pids.add(int(entry))
    return sorted(pids)


def status_kib(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except (OSError, IndexError, ValueError):
        return 0


def busy_jiffies():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields[:8]) - idle


def cmd_busy(seconds):
    """CPU cores kept busy (by anything) over the next SECONDS."""
    before = busy_jiffies()
    time.sleep(float(seconds))
    print(f"{(busy_jiffies() - before) / CLK_TCK / float(seconds):.2f}")


def cmd_rss(*pids):
    print(sum(status_kib(p, "VmRSS") for p in children_of(pids)))


def cmd_sample(out, *pids):
    pids = children_of(pids)
    start_ticks = {p: cpu_ticks(p) for p in pids}
    start = time.monotonic()
    peak = 0
    stop = False

    def on_term(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    open(out + ".ready", "w").close()
    while not stop:
        peak = max(peak, sum(status_kib(p, "VmRSS") for p in pids))
        time.sleep(0.05)
    wall = time.monotonic() - start
    cpu = sum(cpu_ticks(p) - start_ticks[p] for p in pids) / CLK_TCK
    with open(out, "w") as f:
        json.dump({"max_rss_kib": peak, "cpu_s": cpu, "wall_s": wall}, f)


def tree_cpu_ticks(pids):
    return sum(cpu_ticks(p) for p in pids)


def cmd_measure(out, target_pids, upstream_pids, wrk_out, *command):
    """Run COMMAND (wrk) with stdout to WRK_OUT while sampling; write a JSON summary to OUT.

    Records the target's max summed VmRSS (pids + children), the CPU time of the target, of the
    upstream, of the command itself and of the whole machine, so the CPU that *other* processes
    took during the measurement is known (foreign = machine - target - upstream - command - self).
    """
    import resource
    import subprocess

    target = children_of(target_pids.split())
    upstream = [p for p in children_of(upstream_pids.split()) if p not in target]
    t0, u0, m0 = tree_cpu_ticks(target), tree_cpu_ticks(upstream), busy_jiffies()
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.monotonic()
    with open(wrk_out, "w") as f:
        proc = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, sum(status_kib(p, "VmRSS") for p in target))
            time.sleep(0.05)
    wall = time.monotonic() - start
    t1, u1, m1 = tree_cpu_ticks(target), tree_cpu_ticks(upstream), busy_jiffies()
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    child = resource.getrusage(resource.RUSAGE_CHILDREN)
    cmd_cpu = child.ru_utime + child.ru_stime
    self_cpu = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
    target_cpu = (t1 - t0) / CLK_TCK
    upstream_cpu = (u1 - u0) / CLK_TCK
    machine = (m1 - m0) / CLK_TCK
    result = {
        "returncode": proc.returncode,
        "wall_s": wall,
        "max_rss_kib": peak,
        "target_cores": target_cpu / wall,
        "upstream_cores": upstream_cpu / wall,
        "client_cores": cmd_cpu / wall,
        "machine_cores": machine / wall,
        "foreign_cores": max(0.0, machine - target_cpu - upstream_cpu - cmd_cpu - self_cpu) / wall,
    }
    with open(out, "w") as f:
        json.dump(result, f)
    print(
        f"{peak} {result['target_cores']:.2f} {result['upstream_cores']:.2f} "
        f"{result['client_cores']:.2f} {result['foreign_cores']:.2f} {proc.returncode} {target_cpu:.3f}"
    )


UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def to_ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(m.group(1)) * UNITS[m.group(2)]


def parse_wrk(path):
    text = open(path).read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    p50 = to_ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1))
    p99 = to_ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))
    total = int(re.search(r"(\d+) requests in", text).group(1))
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        errors += int(m.group(1))
    return rps, p50, p99, total, errors


def cmd_wrk(path):
    rps, p50, p99, total, errors = parse_wrk(path)
    print(f"{rps:.1f} {p50:.4f} {p99:.4f} {total} {errors}")


async def one_request(port, path, ready, go):
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
    except Exception as e:  # noqa: BLE001 - report every failure kind
        ready.set_result(None) if not ready.done() else None
        return f"connect: {type(e).__name__}"
    ready.set_result(None)
    await go.wait()
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 60)
        writer.close()
        status = data.split(b"\r\n", 1)[0].split()
        return status[1].decode() if len(status) > 1 else "no-response"
    except Exception as e:  # noqa: BLE001
        return f"io: {type(e).__name__}"


async def burst(port, n, path):
    loop = asyncio.get_running_loop()
    go = asyncio.Event()
    readies = [loop.create_future() for _ in range(n)]
    tasks = [asyncio.create_task(one_request(port, path, r, go)) for r in readies]
    await asyncio.gather(*readies)
    t0 = time.monotonic()
    go.set()
    results = await asyncio.gather(*tasks)
    return results, time.monotonic() - t0


def cmd_burst(port, n, path):
    results, elapsed = asyncio.run(burst(int(port), int(n), path))
    counts = {}
    for r in results:
        counts[r] = counts.get(r, 0) + 1
    ok = counts.get("200", 0)
    print(json.dumps({"ok": ok, "total": len(results), "statuses": counts, "seconds": round(elapsed, 3)}))
    sys.exit(0 if ok == len(results) else 1)


def mib(kib):
    return kib / 1024.0


def fmt_ms(ms):
    return f"{ms * 1000:.0f} µs" if ms < 1 else f"{ms:.2f} ms"


LABELS = {
    "direct": "direct (no proxy)",
    "nginx": "nginx",
    "haproxy": "haproxy",
    "sidecar": "**cma-auth-proxy**",
    "sidecar-default": "cma-auth-proxy, coalesce_reads on (default)",
    "sidecar-h2": "cma-auth-proxy, h2 offered (HTTP/2 upstream)",
    "sidecar-compare": "cma-auth-proxy, compared build (COMPARE_BIN)",
    "floor-pooled": "floor, pooled (bench/floor)",
    "floor-tpc": "floor, thread-per-core (bench/floor)",
}
KEYS = ("rps", "p50", "p99", "total", "errors", "rss", "cpu_t", "cpu_u", "cpu_w", "foreign", "cpu_s")


def load_results(path):
    """{(connections, upstream): {target: {key: [value per round]}}} from run.sh's results file."""
    cells = {}
    for line in open(path):
        conns, up, target, rnd, *values = line.split()
        per = cells.setdefault((int(conns), up), {})
        r = per.setdefault(target.split("@")[0], {k: [] for k in KEYS + ("us_per_req", "round")})
        r["round"].append(int(rnd))
        for k, v in zip(KEYS, values):
            r[k].append(float(v))
        r["us_per_req"].append(r["cpu_s"][-1] / r["total"][-1] * 1e6 if r["total"][-1] else 0.0)
    return cells


def medians(rounds):
    m = {k: statistics.median(v) for k, v in rounds.items() if k != "round"}
    m["rss"] = max(rounds["rss"])  # the peak under load, over all rounds
    return m


def paired(cell, key, target, reference):
    """Per round, target's value of `key` ÷ reference's, for the rounds that measured both."""
    of = {t: dict(zip(cell[t]["round"], cell[t][key])) for t in (target, reference) if t in cell}
    if len(of) < 2:
        return []
    return [of[target][r] / of[reference][r] for r in sorted(of[target]) if r in of[reference] and of[reference][r]]


def judged(ratios, ok):
    """A target judged on the rounds' paired ratios: (met, detail). Met when the median of the
    ratios meets it; the detail gives the median, the rounds' range and how many rounds met it."""
    med = statistics.median(ratios)
    detail = f"{med:.2f}×"
    if len(ratios) > 1:
        met = sum(1 for x in ratios if ok(x))
        detail += f", rounds {min(ratios):.2f}–{max(ratios):.2f}×, met in {met} of {len(ratios)}"
    return ok(med), detail


def yes_no(ok):
    return "yes" if ok else "**no**"


def cell_name(cell):
    return f"{cell[0]} × {cell[1]}"


# The sidecar's targets: (name, key, reference, whether a ratio sidecar ÷ reference meets it).
TARGETS = (
    ("p99 ≤ nginx", "p99", "nginx", lambda x: x <= 1),
    ("req/s ≥ haproxy", "rps", "haproxy", lambda x: x >= 1),
    ("req/s ≥ 0.95× floor", "rps", "floor-tpc", lambda x: x >= 0.95),
)


def verdicts(cell):
    """The cell's targets for the sidecar: [(name, ok or None if not measured, detail)].

    Each is judged on the ratio of the sidecar to its reference within each round (the two ran
    in the same round of the same cell, minutes apart), not on the ratio of the two medians, which
    can pair one's fast round with the other's slow one (BENCHMARKS.md, "Choices made for the
    sweep")."""
    out = []
    if "sidecar" not in cell:
        return out
    for name, key, reference, ok in TARGETS:
        ratios = paired(cell, key, "sidecar", reference)
        if ratios:
            out.append((name, *judged(ratios, ok)))
        elif reference == "floor-tpc":
            out.append((name, None, "floor not measured"))
    return out


def cmd_table(results_path, extra_path):
    extra = json.load(open(extra_path))
    cells = load_results(results_path)
    order = sorted(cells, key=lambda c: (c[1] != "http", c[0]))
    med = {c: {t: medians(r) for t, r in cells[c].items()} for c in order}
    rounds = max(len(r["rps"]) for c in order for r in cells[c].values())
    foreign = max(max(r["foreign"]) for c in order for r in cells[c].values())

    threads = extra["threads"]
    print(
        f"wrk -t{threads} (fewer when there are fewer connections) -d{extra['duration']}s per cell "
        f"and target, {rounds} round{'' if rounds == 1 else 's'} (each round runs every cell, the "
        f"order of targets shuffled); median per cell and target, RSS under load the maximum over "
        f"the rounds; the targets are judged on the median of the rounds' ratios (the sidecar ÷ the "
        f"reference measured in the same round), with the rounds' range; {extra['body_bytes']} B JSON response. Upstream `http`: plain HTTP/1.1; "
        f"`https`: TLS to a listener that offers only http/1.1, so every proxy speaks HTTP/1.1 over "
        f"TLS; the `h2 offered` row is the sidecar against the same stand-in's listener that offers "
        f"h2 and http/1.1, as Contentstack's edge does (the sidecar then speaks HTTP/2 upstream). "
        f"CPU per request: the proxy's CPU time (all its processes and threads) ÷ requests."
    )
    print()
    if extra.get("coalesce_key"):
        print(
            "Read coalescing: the **cma-auth-proxy** rows run with `profiles.default.coalesce_reads "
            "= false`, so that every request goes upstream as it does through nginx and haproxy; "
            "the `coalesce_reads on (default)` row keeps the product default, under which wrk's "
            "identical concurrent GETs may share upstream requests (not comparable, shown apart)."
        )
    else:
        print(
            "Read coalescing: this build has no `profiles.NAME.coalesce_reads`; the cma-auth-proxy "
            "rows run the product defaults (plus `log.level = \"warn\"`, `validate_interval = \"0s\"`)."
        )
    print()
    print(f"CPU taken by other processes during the measurements: at most {foreign:.2f} cores.")
    if foreign > 0.25:
        print()
        print("**Warning: other processes used the CPU during a measurement; not representative.**")
    print()

    # One row per cell: the issue's comparison and the verdict against its targets.
    print(
        "| connections | upstream | nginx req/s | haproxy req/s | floor-tpc req/s | cma-auth-proxy req/s "
        "| req/s ÷ nginx | nginx p99 | cma-auth-proxy p99 | p99 ÷ nginx | CPU/request nginx / cma-auth-proxy "
        "| cma-auth-proxy RSS | targets met |"
    )
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")

    def rps(m):
        return f"{m['rps']:,.0f}" if m else "-"

    for c in order:
        m = med[c]
        s, ng = m.get("sidecar"), m.get("nginx")
        ratio = f"{s['rps'] / ng['rps']:.2f}×" if s and ng else "-"
        p99r = f"{s['p99'] / ng['p99']:.2f}×" if s and ng else "-"
        cpu = (
            f"{ng['us_per_req']:.1f} / {s['us_per_req']:.1f} µs" if s and ng else "-"
        )
        rss = f"{mib(s['rss']):.1f} MiB" if s else "-"
        verdict = "; ".join(
            f"{name}: {'-' if ok is None else yes_no(ok)} ({detail})" for name, ok, detail in verdicts(cells[c])
        )
        print(
            f"| {c[0]} | {c[1]} | {rps(ng)} | {rps(m.get('haproxy'))} | {rps(m.get('floor-tpc'))} "
            f"| {rps(s)} | {ratio} | {fmt_ms(ng['p99']) if ng else '-'} "
            f"| {fmt_ms(s['p99']) if s else '-'} | {p99r} | {cpu} "
            f"| {rss} | {verdict} |"
        )
    print()

    # Every target of every cell.
    print(
        "| connections | upstream | target | req/s | p50 | p99 | req/s ÷ nginx | p99 ÷ nginx "
        "| CPU per request | CPU cores: proxy / upstream / wrk | RSS under load |"
    )
    print("| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for c in order:
        ng = med[c].get("nginx")
        for t in (t for t in LABELS if t in med[c]):
            m = med[c][t]
            ratio_rps = f"{m['rps'] / ng['rps']:.2f}×" if ng else "-"
            ratio_p99 = f"{m['p99'] / ng['p99']:.2f}×" if ng else "-"
            if t == "direct":  # the measured process is the upstream itself
                cpu_txt, per_req, rss = f"- / {m['cpu_t']:.2f} / {m['cpu_w']:.2f}", "-", "-"
            else:
                cpu_txt = f"{m['cpu_t']:.2f} / {m['cpu_u']:.2f} / {m['cpu_w']:.2f}"
                per_req = f"{m['us_per_req']:.1f} µs"
                rss = f"{mib(m['rss']):.1f} MiB"
            print(
                f"| {c[0]} | {c[1]} | {LABELS[t]} | {m['rps']:,.0f} | {fmt_ms(m['p50'])} | {fmt_ms(m['p99'])} "
                f"| {ratio_rps} | {ratio_p99} | {per_req} | {cpu_txt} | {rss} |"
            )
    print()

    idle = extra["idle_rss_kib"]
    short = {"sidecar": "cma-auth-proxy", "sidecar-default": "cma-auth-proxy (coalesce_reads on)",
             "sidecar-h2": "cma-auth-proxy (h2 offered)", "sidecar-compare": "cma-auth-proxy (compared build)"}
    by_name = {}
    for key, kib in idle.items():
        name, up = key.split("@")
        by_name.setdefault(name, {})[up] = kib
    shown = []
    for name, ups in by_name.items():
        if name in ("nginx", "haproxy"):  # one process serves both upstream kinds
            shown.append(f"{name} {mib(next(iter(ups.values()))):.1f} MiB")
        else:
            shown.append(
                f"{short.get(name, name)} " + " / ".join(f"{mib(k):.1f} MiB ({up})" for up, k in ups.items())
            )
    print("Idle RSS (after start-up and 20 requests): " + ", ".join(shown) + ".")
    print()

    if rounds > 1:
        print("Per round, req/s (p99):")
        for c in order:
            for t in (t for t in LABELS if t in cells[c]):
                r = cells[c][t]
                print(
                    f"- {cell_name(c)}, {LABELS[t].strip('*')}: "
                    + ", ".join(f"{x:,.0f} ({fmt_ms(p)})" for x, p in zip(r["rps"], r["p99"]))
                )
        print()

    checks = []
    for name, *_ in TARGETS:
        results = [(c, ok, d) for c in order for n, ok, d in verdicts(cells[c]) if n == name]
        measured = [(c, ok, d) for c, ok, d in results if ok is not None]
        if not measured:
            checks.append((f"{name}, every cell", "not measured", None))
            continue
        missed = [f"{cell_name(c)} ({d})" for c, ok, d in measured if not ok]
        text = f"{len(measured) - len(missed)} of {len(measured)} cells"
        if missed:
            text += "; missed in " + ", ".join(missed)
        if len(measured) < len(results):
            text += f"; {len(results) - len(measured)} cells without the reference"
        checks.append((f"{name}, every cell", text, not missed))
    side = [(c, med[c]["sidecar"]) for c in order if "sidecar" in med[c]]
    if side:
        c, m = max(side, key=lambda x: x[1]["rss"])
        checks.append(("RSS under load ≤ 20 MiB", f"{mib(m['rss']):.1f} MiB (highest, {cell_name(c)})", mib(m["rss"]) <= 20))
    idle_s = idle.get("sidecar@http", idle.get("sidecar@https"))
    if idle_s is not None:
        checks.append(("RSS idle ≤ 15 MiB", f"{mib(idle_s):.1f} MiB", mib(idle_s) <= 15))
    up = extra.get("upload")
    if up:
        rise = mib(up["peak_kib"] - up["before_kib"])
        checks.append(
            (
                f"{up['mib']} MiB upload raises RSS ≤ 32 MiB",
                f"+{rise:.1f} MiB ({mib(up['before_kib']):.1f} → {mib(up['peak_kib']):.1f} MiB peak), "
                f"{up['mib'] / up['seconds']:.0f} MiB/s",
                rise <= 32,
            )
        )
    b = extra.get("burst")
    if b:
        checks.append(
            (
                f"{b['n']} concurrent cold requests → 1 login",
                f"{b['logins']} login{'' if b['logins'] == 1 else 's'}, {b['ok']}/{b['n']} × 200 in {b['seconds']:.2f} s"
                f"{'' if b['login_in_flight'] else ' (login had already finished when the burst was sent)'}",
                b["logins"] == 1 and b["ok"] == b["n"],
            )
        )
    print("| cma-auth-proxy target | measured | met |")
    print("|---|---|---|")
    for name, measured, ok in checks:
        print(f"| {name} | {measured} | {'-' if ok is None else yes_no(ok)} |")


def thread_stats(tid_dir):
    """CPU ticks, run time and run-queue wait (ns, from schedstat), time slices and context
    switches of one thread (/proc/PID/task/TID)."""
    with open(f"{tid_dir}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    with open(f"{tid_dir}/comm") as f:
        comm = f.read().strip()
    with open(f"{tid_dir}/schedstat") as f:
        run_ns, wait_ns, slices = (int(x) for x in f.read().split())
    st = {"comm": comm, "ticks": int(fields[11]) + int(fields[12]), "run_ns": run_ns,
          "wait_ns": wait_ns, "slices": slices, "vol": 0, "invol": 0}
    with open(f"{tid_dir}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                st["vol"] = int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                st["invol"] = int(line.split()[1])
    return st


def cmd_threads(out, *pids):
    snap = {}
    for pid in children_of(pids):
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                snap[f"{pid}/{tid}"] = thread_stats(f"/proc/{pid}/task/{tid}")
            except (OSError, ValueError, IndexError):
                pass
    with open(out, "w") as f:
        json.dump(snap, f)


def parse_perf_csv(path):
    """perf stat -x, output: {event: count}."""
    counts = {}
    try:
        for line in open(path):
            parts = line.strip().split(",")
            if len(parts) < 3 or line.startswith("#"):
                continue
            try:
                counts[parts[2]] = float(parts[0])
            except ValueError:
                pass  # <not supported> / <not counted>
    except OSError:
        pass
    return counts


def parse_strace(path):
    """strace -c summary: {syscall: calls}."""
    calls = {}
    try:
        for line in open(path):
            parts = line.split()
            # % time, seconds, usecs/call, calls, [errors], syscall
            if len(parts) >= 5 and re.fullmatch(r"[\d.]+", parts[0]) and parts[-1] != "total":
                calls[parts[-1]] = int(parts[3])
    except OSError:
        pass
    return calls


def cmd_profile(out, name, before, after, wrk_out, perf_out, strace_out, strace_wrk_out, log):
    b, a = json.load(open(before)), json.load(open(after))
    rps, p50, p99, total, errors = parse_wrk(wrk_out)
    threads = []
    for key, x in a.items():
        y = b.get(key, {"ticks": 0, "run_ns": 0, "wait_ns": 0, "slices": 0, "vol": 0, "invol": 0})
        d = {k: x[k] - y[k] for k in ("ticks", "run_ns", "wait_ns", "slices", "vol", "invol")}
        if d["run_ns"] or d["vol"] or d["invol"]:
            threads.append({"thread": f"{x['comm']} ({key})", **d})
    threads.sort(key=lambda t: -t["run_ns"])
    result = {"name": name, "rps": rps, "p50": p50, "p99": p99, "requests": total, "errors": errors,
              "threads": threads, "perf": parse_perf_csv(perf_out), "strace": parse_strace(strace_out),
              "strace_requests": 0, "handoffs": {}}
    if os.path.exists(strace_wrk_out):
        try:
            result["strace_requests"] = parse_wrk(strace_wrk_out)[3]
        except (AttributeError, OSError):
            pass
    if log != "-" and os.path.exists(log):
        # The sidecar's acceptor logs each hand-off at debug: count connections per worker, and
        # the most any worker had open when it was given one.
        for line in open(log):
            line = re.sub(r"\x1b\[[0-9;]*m", "", line)  # the text log may be coloured
            if "connection handed to worker" not in line or re.search(r"listener[=:\"]+admin", line):
                continue
            w = re.search(r"worker[=:\"]+(\d+)", line)
            o = re.search(r"open[=:\"]+(\d+)", line)
            if w:
                h = result["handoffs"].setdefault(w.group(1), {"connections": 0, "max_open": 0})
                h["connections"] += 1
                h["max_open"] = max(h["max_open"], int(o.group(1)) if o else 0)
    with open(out, "w") as f:
        json.dump(result, f)


def cmd_profile_report(*paths):
    profiles = [json.load(open(p)) for p in paths]
    print(
        "| target | req/s | p99 | CPU per request | syscalls per request | context switches per request "
        "(voluntary / involuntary) | CPU migrations per request | run-queue wait per request "
        "| run-queue wait per time slice |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for p in profiles:
        n = p["requests"] or 1
        th = p["threads"]
        run = sum(t["run_ns"] for t in th)
        wait = sum(t["wait_ns"] for t in th)
        slices = sum(t["slices"] for t in th) or 1
        vol, invol = sum(t["vol"] for t in th), sum(t["invol"] for t in th)
        perf = p["perf"]
        sysc = perf.get("raw_syscalls:sys_enter")
        migr = perf.get("cpu-migrations")
        print(
            f"| {p['name']} | {p['rps']:,.0f} | {fmt_ms(p['p99'])} | {run / n / 1000:.1f} µs "
            f"| {'-' if sysc is None else f'{sysc / n:.2f}'} "
            f"| {(vol + invol) / n:.3f} ({vol / n:.3f} / {invol / n:.3f}) "
            f"| {'-' if migr is None else f'{migr / n:.3f}'} | {wait / n / 1000:.1f} µs "
            f"| {wait / slices / 1000:.1f} µs |"
        )
    print()
    print("Per thread (threads that ran during the measurement):")
    print()
    print("| target | thread | CPU | share of the target's CPU | run-queue wait | time slices | voluntary / involuntary switches |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for p in profiles:
        run = sum(t["run_ns"] for t in p["threads"]) or 1
        for t in p["threads"]:
            print(
                f"| {p['name']} | {t['thread']} | {t['run_ns'] / 1e9:.2f} s | {100 * t['run_ns'] / run:.0f} % "
                f"| {t['wait_ns'] / 1e9:.2f} s | {t['slices']:,} | {t['vol']:,} / {t['invol']:,} |"
            )
    print()
    for p in profiles:
        if p["handoffs"]:
            parts = [
                f"worker {w}: {h['connections']} handed, at most {h['max_open']} open at once"
                for w, h in sorted(p["handoffs"].items(), key=lambda x: int(x[0]))
            ]
            print(
                f"{p['name']}, client connections per worker (wrk also opens and closes one probe "
                f"connection first): " + "; ".join(parts) + "."
            )
            print()
    if any(p["strace"] for p in profiles):
        print(
            "Syscalls per request by name (`strace -c -f`, a separate run: strace slows every "
            "syscall, so fewer requests complete and batching differs; compare names and proportions):"
        )
        print()
        for p in profiles:
            n = p["strace_requests"]
            if not p["strace"] or not n:
                continue
            top = sorted(p["strace"].items(), key=lambda x: -x[1])[:8]
            total_calls = sum(p["strace"].values())
            print(
                f"- {p['name']} ({n:,} requests, {total_calls / n:.2f} syscalls per request): "
                + ", ".join(f"{k} {v / n:.2f}" for k, v in top)
            )
        print()


SCHED_LINE = re.compile(
    r"^\s*([\d.]+)\s+\[(\d+)\]\s+(.*?)(?:\[(\d+)(?:/(\d+))?\])?\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\S)\s*$"
)


def cmd_sched(out, name, timehist, target_pids, upstream_pids, wrk_out):
    """Who ran where, from `perf sched timehist --state` (one line per switch-out: time, CPU,
    task, wait, scheduling delay, run time, state): each CPU's time by group (the target, the
    upstream stand-in, wrk, others, idle), where the target's threads ran, and how long each of the
    three on a request's way (the target, the stand-in, wrk) was runnable without running, split
    by the group that held its CPU meanwhile."""
    targets = {int(x) for x in target_pids.split(",") if x}
    upstream = set(children_of(upstream_pids.split(",")))
    cpus, placed, stand_in = {}, {}, {}
    queued = {g: {"waits": [], "by": {}} for g in ("target", "upstream", "wrk")}
    recent = {}  # cpu -> the last switch-outs on it: (start, end, group)
    last_state = {}  # tid -> state at its last switch-out
    first = last = None
    for line in open(timehist):
        m = SCHED_LINE.match(line)
        if not m:
            continue
        t, cpu, comm, tid, pid = float(m[1]) * 1e3, int(m[2]), m[3].strip(), m[4], m[5]
        wait, delay, run, state = float(m[6]), float(m[7]), float(m[8]), m[9]
        first = t - run if first is None else first
        last = t
        tid = int(tid) if tid else 0
        pid = int(pid) if pid else tid
        if comm == "<idle>":
            group = "idle"
        elif pid in targets:
            group = "target"
        elif pid in upstream:
            group = "upstream"
        elif comm.startswith("wrk"):
            group = "wrk"
        else:
            group = "other"
        cpus.setdefault(cpu, {}).setdefault(group, 0.0)
        cpus[cpu][group] += run
        start = t - run
        if group == "target":
            placed[cpu] = placed.get(cpu, 0.0) + run
        elif group == "upstream":
            stand_in[pid] = stand_in.get(pid, 0.0) + run
        if group in queued:
            # Runnable but not running: after a wake-up the scheduling delay; after being
            # preempted (state R at its last switch-out) the whole time off the CPU.
            q = wait if last_state.get(tid) == "R" else delay
            if q > 0:
                queued[group]["waits"].append(q)
                by = queued[group]["by"]
                for s, e, g in recent.get(cpu, ()):
                    overlap = min(e, start) - max(s, start - q)
                    if overlap > 0:
                        by[g] = by.get(g, 0.0) + overlap
        last_state[tid] = state
        r = recent.setdefault(cpu, [])
        r.append((start, t, group))
        if len(r) > 64:
            del r[0]
    window = (last - first) if first is not None else 1.0
    rps, _, p99, requests, _ = parse_wrk(wrk_out)
    result = {
        "name": name, "window_ms": window, "requests": requests, "rps": rps, "p99": p99,
        "cpus": {str(c): {g: v / window for g, v in groups.items()} for c, groups in sorted(cpus.items())},
        "target_on": {str(c): v for c, v in sorted(placed.items())},
        "stand_in": sorted(stand_in.values(), reverse=True),
        "queued": {},
    }
    for g, q in queued.items():
        w = sorted(q["waits"])
        result["queued"][g] = {
            "total_ms": sum(w),
            "p99_ms": w[int(0.99 * (len(w) - 1))] if w else 0.0,
            "over_100us": sum(1 for x in w if x >= 0.1),
            "by": q["by"],
        }
    with open(out, "w") as f:
        json.dump(result, f)


def cmd_sched_report(*paths):
    groups = ("target", "upstream", "wrk", "other", "idle")
    print(
        "| target | req/s | p99 | each CPU's time: target / upstream / wrk / others / idle "
        "| target's run time per CPU | the stand-in's run time per process |"
    )
    print("|---|---:|---:|---|---|---|")
    runs = [json.load(open(p)) for p in paths]
    for r in runs:
        per_cpu = "; ".join(
            f"CPU {c}: " + " / ".join(f"{100 * g.get(k, 0):.0f}" for k in groups) + " %"
            for c, g in r["cpus"].items()
        )
        placed_total = sum(r["target_on"].values()) or 1
        placed = ", ".join(f"CPU {c} {100 * v / placed_total:.0f} %" for c, v in r["target_on"].items())
        up_total = sum(r["stand_in"]) or 1
        stand_in = " / ".join(f"{100 * v / up_total:.0f} %" for v in r["stand_in"])
        print(f"| {r['name']} | {r['rps']:,.0f} | {fmt_ms(r['p99'])} | {per_cpu} | {placed} | {stand_in} |")
    print()
    print(
        "Runnable but not running, of the three on a request's way: per request, the 99th percentile "
        "of one wait, waits of 100 µs or more, and what its CPU ran meanwhile (target / upstream / "
        "wrk / others / idle):"
    )
    print()
    print("| target | waiting | per request | p99 of a wait | waits ≥ 100 µs | its CPU ran meanwhile |")
    print("|---|---|---:|---:|---:|---|")
    for r in runs:
        n = r["requests"] or 1
        for g in ("target", "upstream", "wrk"):
            q = r["queued"][g]
            by_total = sum(q["by"].values()) or 1
            by = " / ".join(f"{100 * q['by'].get(k, 0) / by_total:.0f}" for k in groups) + " %"
            print(
                f"| {r['name']} | {g} | {q['total_ms'] * 1000 / n:.1f} µs | {fmt_ms(q['p99_ms'])} "
                f"| {q['over_100us']:,} | {by} |"
            )
    print()


def parse_callgrind(path):
    """A callgrind dump: (instructions, {function: calls to it}), all threads together."""
    total, calls, names, callee = 0, {}, {}, None
    try:
        lines = open(path, errors="replace")
    except OSError:
        return None, {}
    for line in lines:
        if line.startswith(("summary:", "totals:")):
            total = max(total, int(line.split()[1]))
        elif line.startswith("cfn="):
            # "cfn=(7) name" the first time a name appears, "cfn=(7)" after that.
            m = re.match(r"cfn=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
            if m:
                if m.group(2):
                    names[m.group(1)] = m.group(2)
                callee = names.get(m.group(1))
        elif line.startswith("fn="):
            m = re.match(r"fn=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
            if m and m.group(2):
                names[m.group(1)] = m.group(2)
        elif line.startswith("calls=") and callee:
            calls[callee] = calls.get(callee, 0) + int(line.split("=")[1].split()[0])
            callee = None
    return total, calls


ALLOCATORS = ("malloc", "calloc", "realloc", "posix_memalign", "aligned_alloc", "memalign")


def cmd_count(out, name, conns, upstream, requests, callgrind, perf_out, strace_out):
    n = int(requests)
    ir, calls = parse_callgrind(callgrind)
    perf = parse_perf_csv(perf_out)
    strace = parse_strace(strace_out)
    result = {
        "name": name, "connections": int(conns), "upstream": upstream, "requests": n,
        "ir": None if ir is None else ir / n,
        "allocs": None if ir is None else sum(calls.get(a, 0) for a in ALLOCATORS) / n,
        "syscalls": perf["raw_syscalls:sys_enter"] / n if "raw_syscalls:sys_enter" in perf else None,
        "switches": perf["context-switches"] / n if "context-switches" in perf else None,
        "strace": {k: v / n for k, v in strace.items()},
    }
    with open(out, "w") as f:
        json.dump(result, f)


def cmd_count_report(*paths):
    rows = [json.load(open(p)) for p in paths]
    print(
        "| connections | upstream | target | instructions per request | allocations per request "
        "| syscalls per request | context switches per request | syscalls per request by name (strace) |"
    )
    print("|---:|---|---|---:|---:|---:|---:|---|")
    num = lambda v, f: "-" if v is None else format(v, f)
    for r in rows:
        top = sorted(r["strace"].items(), key=lambda x: -x[1])[:6]
        print(
            f"| {r['connections']} | {r['upstream']} | {r['name']} | {num(r['ir'], ',.0f')} "
            f"| {num(r['allocs'], '.1f')} | {num(r['syscalls'], '.2f')} | {num(r['switches'], '.3f')} "
            f"| {', '.join(f'{k} {v:.2f}' for k, v in top) or '-'} |"
        )


def main():
    cmd, *args = sys.argv[1:]
    {
        "ports": cmd_ports,
        "body": cmd_body,
        "rss": cmd_rss,
        "busy": cmd_busy,
        "sample": cmd_sample,
        "measure": cmd_measure,
        "wrk": cmd_wrk,
        "burst": cmd_burst,
        "table": cmd_table,
        "threads": cmd_threads,
        "profile": cmd_profile,
        "profile-report": cmd_profile_report,
        "sched": cmd_sched,
        "sched-report": cmd_sched_report,
        "count": cmd_count,
        "count-report": cmd_count_report,
    }[cmd](*args)


if __name__ == "__main__":
    main()
