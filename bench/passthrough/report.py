#!/usr/bin/python3
"""Turn the raw measurements of bench/passthrough/run.sh into a Markdown
report.

    report.py TPS_TSV MEM_JSONL [HEADER_FILE]

TPS_TSV lines: workload clients mode target round tps latency_ms
MEM_JSONL lines: {"target": ..., ...idle_clients.py output...}
HEADER_FILE: free text (machine, versions, command) copied to the top.

For each (workload, clients, mode) the rounds are averaged per target; the
ratios are pgshift/direct and pgshift/pgbouncer of the averaged TPS. Rows
where pgshift's TPS is below PgBouncer's, or its memory per idle client is
above PgBouncer's, are listed at the end, as measured.
"""

import collections
import json
import statistics
import sys

TARGETS = ("direct", "pgshift", "pgbouncer")
WORKLOAD_ORDER = {"select-only": 0, "append": 1}
MODE_ORDER = {"simple": 0, "extended": 1, "prepared": 2}


def load_tps(path):
    runs = collections.defaultdict(lambda: collections.defaultdict(list))
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            workload, clients, mode, target, rnd, tps, lat = line.split()
            runs[(workload, int(clients), mode)][target].append((int(rnd), float(tps),
                                                                float(lat)))
    return runs


def load_mem(path):
    out = []
    try:
        with open(path) as f:
            for line in f:
                if line.strip():
                    out.append(json.loads(line))
    except FileNotFoundError:
        pass
    return out


def fmt_tps(v):
    return "%.0f" % v if v is not None else "-"


def fmt_ratio(a, b):
    if a is None or not b:
        return "-"
    return "%.2f" % (a / b)


def spread(vals):
    """Largest deviation of one round from the mean, in percent."""
    if len(vals) < 2:
        return None
    m = statistics.mean(vals)
    return max(abs(v - m) for v in vals) / m * 100 if m else None


def main():
    tps_path, mem_path = sys.argv[1], sys.argv[2]
    header = open(sys.argv[3]).read().rstrip() if len(sys.argv) > 3 else ""
    runs = load_tps(tps_path)
    mem = load_mem(mem_path)
    out = []
    if header:
        out += [header, ""]

    keys = sorted(runs, key=lambda k: (WORKLOAD_ORDER.get(k[0], 9), k[1],
                                      MODE_ORDER.get(k[2], 9)))
    if keys:
        out += ["### Throughput and latency (pgbench, persistent connections)", "",
                "TPS = mean over rounds of pgbench's tps (without initial connection time); "
                "latency = mean of pgbench's latency average, ms.", "",
                "| workload | clients | mode | direct TPS | pgshift TPS | PgBouncer TPS "
                "| direct ms | pgshift ms | PgBouncer ms | pgshift/direct | pgshift/PgBouncer |",
                "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    slower = []
    spreads = []
    for k in keys:
        row = runs[k]
        tps = {}
        lat = {}
        for t in TARGETS:
            if row.get(t):
                tps[t] = statistics.mean(r[1] for r in row[t])
                lat[t] = statistics.mean(r[2] for r in row[t])
                s = spread([r[1] for r in row[t]])
                if s is not None:
                    spreads.append(s)
            else:
                tps[t] = lat[t] = None
        out.append("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            k[0], k[1], k[2], fmt_tps(tps["direct"]), fmt_tps(tps["pgshift"]),
            fmt_tps(tps["pgbouncer"]),
            *("%.3f" % lat[t] if lat[t] is not None else "-" for t in TARGETS),
            fmt_ratio(tps["pgshift"], tps["direct"]),
            fmt_ratio(tps["pgshift"], tps["pgbouncer"])))
        if tps["pgshift"] is not None and tps["pgbouncer"] and tps["pgshift"] < tps["pgbouncer"]:
            slower.append((k, (1 - tps["pgshift"] / tps["pgbouncer"]) * 100))
    if spreads:
        out += ["", "Round-to-round noise: median %.1f%%, max %.1f%% (largest deviation of a "
                "round's TPS from its cell's mean)." % (statistics.median(spreads),
                                                         max(spreads))]

    if mem:
        out += ["", "### Memory per idle client connection", "",
                "Clients log in (same auth) and stay idle without a query; proxy VmRSS "
                "before and after; (after - before) / N. Server backends of the bench user "
                "on PostgreSQL before/after show that no server connection was taken.", "",
                "| proxy | idle clients | RSS before (KiB) | RSS after (KiB) | bytes / client "
                "| server conns before/after | connect time (s) |",
                "|---|--:|--:|--:|--:|--:|--:|"]
        by_n = collections.defaultdict(dict)
        for m in sorted(mem, key=lambda m: (m["requested"], m["target"] != "pgshift")):
            by_n[m["requested"]][m["target"]] = m
            note = ""
            if m.get("failed"):
                note = " (%d failed)" % m["failed"]
            out.append("| %s | %d%s | %d | %d | %s | %s/%s | %.1f |" % (
                m["target"], m["clients"], note, m["rss_before_kb"], m["rss_after_kb"],
                m["bytes_per_client"], m["backends_before"], m["backends_after"],
                m["connect_s"]))
        memworse = []
        for n, d in sorted(by_n.items()):
            if "pgshift" in d and "pgbouncer" in d:
                a, b = d["pgshift"]["bytes_per_client"], d["pgbouncer"]["bytes_per_client"]
                if a is not None and b is not None and a > b:
                    memworse.append("%d idle clients: pgshift %d B/client vs PgBouncer %d "
                                    "B/client (%.1fx)" % (n, a, b, a / b if b > 0 else 0))
    else:
        memworse = []

    out += ["", "### Where pgshift is behind PgBouncer", ""]
    if not slower and not memworse:
        out.append("Nowhere in this run.")
    for k, pct in slower:
        out.append("- TPS: %s, %d clients, -M %s: pgshift %.1f%% below PgBouncer" % (
            k[0], k[1], k[2], pct))
    for line in memworse:
        out.append("- Memory: " + line)

    if keys:
        out += ["", "<details><summary>Raw rounds (TPS / latency ms)</summary>", "",
                "| workload | clients | mode | target | rounds |", "|---|--:|---|---|---|"]
        for k in keys:
            for t in TARGETS:
                rs = sorted(runs[k].get(t, []))
                out.append("| %s | %d | %s | %s | %s |" % (
                    k[0], k[1], k[2], t,
                    ", ".join("%.0f / %.3f" % (r[1], r[2]) for r in rs)))
        out += ["", "</details>"]
    print("\n".join(out))


if __name__ == "__main__":
    main()
