#!/usr/bin/env python3
"""Helpers for bench/run.sh (standard library only).

Subcommands:
  ports N                          print N free 127.0.0.1 TCP ports
  body BYTES                       print a JSON document of exactly BYTES bytes (no ' or $)
  busy SECONDS                     print how many CPU cores were busy (anything) over SECONDS
  rss PID...                       print the summed VmRSS (KiB) of the PIDs and their children
  sample OUT PID...                until SIGTERM: max summed VmRSS of the PIDs (+children), CPU time
  measure OUT TPIDS UPIDS WRKOUT CMD...  run CMD (wrk), sample RSS/CPU of target, upstream, CMD
  wrk FILE                         parse wrk --latency output: rps p50_ms p99_ms errors
  burst PORT N PATH                N concurrent cold requests (connect all, then send all)
  table RESULTS EXTRA              print the result tables (markdown) from run.sh's files
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
        f"{result['client_cores']:.2f} {result['foreign_cores']:.2f} {proc.returncode}"
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


def cmd_table(results_path, extra_path):
    extra = json.load(open(extra_path))
    rows = {}
    keys = ("rps", "p50", "p99", "total", "errors", "rss", "cpu_t", "cpu_u", "cpu_w", "foreign")
    for line in open(results_path):
        name, _round, *values = line.split()
        r = rows.setdefault(name, {k: [] for k in keys})
        for k, v in zip(keys, values):
            r[k].append(float(v))
    labels = {
        "direct": "direct (no proxy)",
        "nginx": "nginx proxy",
        "haproxy": "haproxy proxy",
        "sidecar": "cma-auth-proxy",
        "floor-pooled": "minimal hyper proxy, pooled (bench/floor)",
        "floor-tpc": "minimal hyper proxy, thread-per-core (bench/floor)",
    }
    order = [t for t in labels if t in rows]
    med = {t: {k: statistics.median(rows[t][k]) for k in keys} for t in order}
    for t in order:
        med[t]["rss"] = max(rows[t]["rss"])
    ng = med.get("nginx")
    rounds = len(rows[order[0]]["rps"])
    foreign = max(max(rows[t]["foreign"]) for t in order)
    print(
        f"wrk -t{extra['threads']} -c{extra['connections']} -d{extra['duration']}s, {rounds} "
        f"round{'' if rounds == 1 else 's'} "
        f"in rotating order, median per target (RSS under load: max over rounds); "
        f"{extra['body_bytes']} B JSON response. CPU taken by other processes during the "
        f"measurements: at most {foreign:.2f} cores."
    )
    if foreign > 0.25:
        print()
        print("**Warning: other processes used the CPU during a measurement; not representative.**")
    print()
    print(
        "| target | req/s | p50 | p99 | req/s ÷ nginx | p99 ÷ nginx "
        "| CPU cores: proxy / upstream / wrk | req/s per proxy core | proxy RSS idle | proxy RSS under load |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in order:
        m = med[t]
        ratio_rps = f"{m['rps'] / ng['rps']:.2f}×" if ng else "-"
        ratio_p99 = f"{m['p99'] / ng['p99']:.2f}×" if ng else "-"
        idle = extra["idle_rss_kib"].get(t)
        is_proxy = t != "direct"
        idle_txt = f"{mib(idle):.1f} MiB" if is_proxy and idle else "-"
        load_txt = f"{mib(m['rss']):.1f} MiB" if is_proxy else "-"
        if is_proxy:
            cpu_txt = f"{m['cpu_t']:.2f} / {m['cpu_u']:.2f} / {m['cpu_w']:.2f}"
            per_core = f"{m['rps'] / m['cpu_t']:,.0f}" if m["cpu_t"] > 0 else "-"
        else:
            cpu_txt = f"- / {m['cpu_t']:.2f} / {m['cpu_w']:.2f}"
            per_core = "-"
        print(
            f"| {labels[t]} | {m['rps']:,.0f} | {fmt_ms(m['p50'])} | {fmt_ms(m['p99'])} "
            f"| {ratio_rps} | {ratio_p99} | {cpu_txt} | {per_core} | {idle_txt} | {load_txt} |"
        )
    print()
    print("Per round, req/s (p99):")
    for t in order:
        print(
            f"- {labels[t]}: "
            + ", ".join(f"{x:,.0f} ({fmt_ms(p)})" for x, p in zip(rows[t]["rps"], rows[t]["p99"]))
        )
    print()

    checks = []
    if "sidecar" in med and ng:
        s = med["sidecar"]
        checks.append(
            ("req/s ≥ 1.2 × nginx", f"{s['rps']:,.0f} vs {1.2 * ng['rps']:,.0f} ({s['rps'] / ng['rps']:.2f}×)",
             s["rps"] >= 1.2 * ng["rps"])
        )
        checks.append(
            ("req/s ≥ nginx (spec minimum)", f"{s['rps'] / ng['rps']:.2f}×", s["rps"] >= ng["rps"])
        )
        checks.append(("p99 ≤ nginx", f"{fmt_ms(s['p99'])} vs {fmt_ms(ng['p99'])}", s["p99"] <= ng["p99"]))
    idle = extra["idle_rss_kib"].get("sidecar")
    if idle is not None:
        checks.append(("RSS idle ≤ 15 MiB", f"{mib(idle):.1f} MiB", mib(idle) <= 15))
    if "sidecar" in med:
        load = med["sidecar"]["rss"]
        checks.append(("RSS under load ≤ 40 MiB", f"{mib(load):.1f} MiB", mib(load) <= 40))
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
    print("| cma-auth-proxy target (SPEC §11) | measured | met |")
    print("|---|---|---|")
    for name, measured, ok in checks:
        print(f"| {name} | {measured} | {'yes' if ok else '**no**'} |")


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
    }[cmd](*args)


if __name__ == "__main__":
    main()
