#!/usr/bin/python3
"""bench/routing/report.py - Markdown report of bench/routing/run.sh.

    report.py RAW.tsv HEADER.md CHECKS.md CLASSIFY.json ADMIN.txt

RAW lines (run.sh run_pgbench): variant clients mode target round tps
latency_ms transactions cpu_pgshift cpu_all steady_tps cpu_pgshift_steady
cpu_all_steady log. tps and latency are "fail" for a failed run; CPU fields
(us per transaction) are "-" where they do not apply; log names the pgbench
log of a failed run.
"""
import json
import statistics
import sys

TARGETS = ["direct", "one", "two"]
TARGET_DOC = {
    "direct": "pgbench straight into cluster a",
    "one": "pgshift, one store (a): pass-through",
    "two": "pgshift, two stores: tenants 0,2,4,.. on a, 1,3,5,.. on b",
}
VARIANT_DOC = {
    "agg": "tenant only in the INSERT; the version probe routes by the learned "
    "aggregate -> tenant map",
    "session": "each client sets pgshift.tenant once (set_config), one tenant per client",
}
TARGET_RATIO = 0.9


def fmt_tps(x):
    return "%.0f" % x


def main():
    raw, header, checks, classify, admin = sys.argv[1:6]
    runs = []

    def num(x):
        return None if x in ("-", "fail") else float(x)

    with open(raw) as f:
        for line in f:
            p = line.split()
            if len(p) < 14:
                continue
            runs.append({
                "variant": p[0], "clients": int(p[1]), "mode": p[2], "target": p[3],
                "round": int(p[4]), "ok": p[5] != "fail", "tps": num(p[5]), "lat": num(p[6]),
                "txns": p[7], "cpu": num(p[8]), "stack": num(p[9]), "steady": num(p[10]),
                "cpu_s": num(p[11]), "stack_s": num(p[12]), "log": p[13],
            })

    cells = []
    for r in runs:
        key = (r["variant"], r["clients"], r["mode"])
        if key not in cells:
            cells.append(key)

    out = ["## bench/routing", ""]
    out.append(open(header).read().rstrip())
    out.append("")
    out.append("Targets: " + "; ".join("`%s` = %s" % (t, TARGET_DOC[t]) for t in TARGETS) + ".")
    out.append("Variants: " + "; ".join("`%s` = %s" % (v, d) for v, d in VARIANT_DOC.items()
                                         if any(c[0] == v for c in cells)) + ".")
    out.append("")
    out.append("### Append TPS and latency (mean of rounds)")
    out.append("")
    out.append("TPS = pgbench's (without its connection time); steady = mean of pgbench's "
               "per-second progress after the first second, i.e. once pgshift has logged its "
               "server connections in (it opens them at a client's first statement for each "
               "store, inside the timed window, so the two-store pgshift does twice as many "
               "logins per client there).")
    out.append("")
    out.append("| variant | clients | mode | direct TPS | one TPS | two TPS | **two/one** "
               "| two/one per round: median (min..max) | steady direct / one / two | "
               "**steady two/one** | latency direct / one / two ms |")
    out.append("|---|---:|---|---:|---:|---:|---:|---|---|---:|---|")
    cpu_rows = []
    summary = {"tps": [], "steady": [], "cpu": []}
    below = []
    failures = [r for r in runs if not r["ok"]]

    def mean_of(rs, k):
        xs = [r[k] for r in rs if r[k] is not None]
        return statistics.mean(xs) if xs else None

    def f0(x):
        return "%.0f" % x if x is not None else "-"

    def ratio(x, y):
        return x / y if x is not None and y else None

    def f2(x):
        return "%.2f" % x if x is not None else "n/a"

    for cell in cells:
        sel = {t: [r for r in runs if (r["variant"], r["clients"], r["mode"]) == cell
                   and r["target"] == t] for t in TARGETS}
        ok = {t: [r for r in sel[t] if r["ok"]] for t in TARGETS}
        tps = {t: mean_of(ok[t], "tps") for t in TARGETS}
        steady = {t: mean_of(ok[t], "steady") for t in TARGETS}
        lat = {t: mean_of(ok[t], "lat") for t in TARGETS}
        cpu = {t: mean_of(ok[t], "cpu") for t in TARGETS}
        stack = {t: mean_of(ok[t], "stack") for t in TARGETS}
        cpu_s = {t: mean_of(ok[t], "cpu_s") for t in TARGETS}
        stack_s = {t: mean_of(ok[t], "stack_s") for t in TARGETS}
        per_round = []
        for rnd in sorted({r["round"] for r in ok["two"]}):
            x = [r["tps"] for r in ok["two"] if r["round"] == rnd]
            y = [r["tps"] for r in ok["one"] if r["round"] == rnd]
            if x and y:
                per_round.append(x[0] / y[0])
        r_tps = ratio(tps["two"], tps["one"])
        r_steady = ratio(steady["two"], steady["one"])
        r_cpu = ratio(stack_s["one"], stack_s["two"])
        for k, v in (("tps", r_tps), ("steady", r_steady), ("cpu", r_cpu)):
            if v is not None:
                summary[k].append(v)
        if r_tps is not None and r_tps < TARGET_RATIO:
            below.append((cell, r_tps))
        nfail = sum(len(sel[t]) - len(ok[t]) for t in TARGETS)
        out.append("| %s | %d | %s | %s | %s | %s | **%s** | %s | %s | **%s** | %s%s |" % (
            cell[0], cell[1], cell[2], f0(tps["direct"]), f0(tps["one"]), f0(tps["two"]),
            f2(r_tps),
            "%.2f (%.2f..%.2f)" % (statistics.median(per_round), min(per_round), max(per_round))
            if per_round else "n/a",
            " / ".join(f0(steady[t]) for t in TARGETS), f2(r_steady),
            " / ".join("%.2f" % lat[t] if lat[t] is not None else "-" for t in TARGETS),
            " (%d failed runs)" % nfail if nfail else ""))
        cpu_rows.append("| %s | %d | %s | %s / %s | %s / %s / %s | **%s** | %s / %s | %s / %s / %s |"
                        % (cell[0], cell[1], cell[2], f0(cpu_s["one"]), f0(cpu_s["two"]),
                           f0(stack_s["direct"]), f0(stack_s["one"]), f0(stack_s["two"]),
                           f2(r_cpu), f0(cpu["one"]), f0(cpu["two"]), f0(stack["direct"]),
                           f0(stack["one"]), f0(stack["two"])))
    out.append("")
    for k, doc in (("tps", "pgbench TPS"), ("steady", "steady TPS"),
                   ("cpu", "CPU-bound estimate (steady all-CPU one / two)")):
        xs = summary[k]
        if xs:
            out.append("- two/one by %s: geometric mean %.2f over %d cells, lowest %.2f, "
                       "highest %.2f" % (doc, statistics.geometric_mean(xs), len(xs), min(xs),
                                         max(xs)))
    out.append("- target: two/one >= %.1f. %s" % (
        TARGET_RATIO, "Every cell meets it by pgbench TPS." if not below else
        "Below it by pgbench TPS: " + ", ".join("%s c=%d %s (%.2f)" % (c[0], c[1], c[2], x)
                                               for c, x in below) + "."))
    out.append("")
    out.append("### CPU per transaction")
    out.append("")
    out.append("User + system CPU time (/proc/PID/stat, 10 ms ticks) divided by the "
               "transactions pgbench completed, mean of rounds; *steady* counts from pgbench's "
               "first progress line (1 s into the run) to its end, *run* the whole run with "
               "the logins. pgshift = the target's pgshift process; all = both PostgreSQL "
               "clusters (postmaster, its children, reaped backends) + the target's pgshift + "
               "pgbench. Where these processes are alone and CPU-bound, TPS is about cores / "
               "all-CPU per transaction, so steady all(one) / all(two) estimates two/one "
               "without depending much on what else the machine runs (contention still "
               "inflates CPU time: lock spinning, cache misses).")
    out.append("")
    out.append("| variant | clients | mode | steady pgshift us/txn one / two | steady all us/txn "
               "direct / one / two | **estimate two/one** | run pgshift one / two | run all "
               "direct / one / two |")
    out.append("|---|---:|---|---|---|---:|---|---|")
    out += cpu_rows
    out.append("")
    if failures:
        out.append("Failed runs (pgbench exit status, client aborts or ERROR lines):")
        out.append("")
        for r in failures:
            out.append("- %s c=%d %s %s round %d: log %s" % (r["variant"], r["clients"], r["mode"],
                                                          r["target"], r["round"], r["log"]))
        out.append("")

    out.append("### Placement and proxy checks")
    out.append("")
    out.append("```")
    out.append(open(checks).read().rstrip())
    out.append("```")
    out.append("")

    out.append("### Classifier cost per statement (build/bench/classify_bench)")
    out.append("")
    cj = json.load(open(classify))
    out.append("%d iterations per shape; miss = libpg_query parse + extraction (no cache), "
               "hit = cache lookup of the same text, decide = one route decision with Bind "
               "values (aggregate map and route table lookups)." % cj["iterations"])
    out.append("")
    out.append("| statement shape | miss ns | hit ns | decide ns |")
    out.append("|---|---:|---:|---:|")
    for name, v in cj["shapes"].items():
        out.append("| %s | %.0f | %.0f | %.0f |" % (name, v["miss_ns"], v["hit_ns"], v["decide_ns"]))
    m = cj["mean"]
    out.append("| **mean** | **%.0f** | **%.0f** | **%.0f** |" % (m["miss_ns"], m["hit_ns"],
                                                              m["decide_ns"]))
    out.append("")
    s = cj["shapes"]
    if all(k in s for k in ("begin", "version_probe", "append")):
        hit = sum(s[k]["hit_ns"] + s[k]["decide_ns"] for k in ("begin", "version_probe", "append"))
        hit += s["begin"]["hit_ns"] + s["begin"]["decide_ns"]  # COMMIT ~ BEGIN
        miss = sum(s[k]["miss_ns"] + s[k]["decide_ns"] for k in ("begin", "version_probe", "append"))
        miss += s["begin"]["miss_ns"] + s["begin"]["decide_ns"]
        out.append("Per append transaction (BEGIN, probe, INSERT, COMMIT counted as BEGIN): "
                   "%.1f us of routing work with cache hits, %.1f us if every text were parsed." % (
                       hit / 1000.0, miss / 1000.0))
        out.append("")

    out.append("### Admin console of the two-store pgshift")
    out.append("")
    out.append("```")
    out.append(open(admin).read().rstrip())
    out.append("```")
    out.append("")

    out.append("### Raw rounds (TPS)")
    out.append("")
    out.append("| variant | clients | mode | round | direct | one | two |")
    out.append("|---|---:|---|---:|---:|---:|---:|")
    for cell in cells:
        for rnd in sorted({r["round"] for r in runs if (r["variant"], r["clients"], r["mode"]) == cell}):
            row = []
            for t in TARGETS:
                x = [r for r in runs if (r["variant"], r["clients"], r["mode"]) == cell
                     and r["round"] == rnd and r["target"] == t]
                row.append(fmt_tps(x[0]["tps"]) if x and x[0]["ok"] else ("failed" if x else "-"))
            out.append("| %s | %d | %s | %d | %s |" % (cell[0], cell[1], cell[2], rnd, " | ".join(row)))
    print("\n".join(out))


if __name__ == "__main__":
    main()
