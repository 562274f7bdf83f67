#!/usr/bin/python3
"""bench/routing/report.py - Markdown report of bench/routing/run.sh.

    report.py RAW.tsv HEADER.md CHECKS.md CLASSIFY.json ADMIN.txt

RAW lines: variant clients mode target round tps latency_ms transactions
pgshift_cpu_us_per_txn log (tps and latency are "fail" for a failed run, the
CPU "-" for direct; log names the pgbench log of a failed run).
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
    with open(raw) as f:
        for line in f:
            p = line.split()
            if len(p) < 8:
                continue
            runs.append({
                "variant": p[0], "clients": int(p[1]), "mode": p[2], "target": p[3],
                "round": int(p[4]), "ok": p[5] != "fail",
                "tps": float(p[5]) if p[5] != "fail" else None,
                "lat": float(p[6]) if p[6] != "fail" else None,
                "txns": p[7], "cpu": float(p[8]) if len(p) > 8 and p[8] != "-" else None,
                "log": p[9] if len(p) > 9 else "-",
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
    out.append("### Append TPS (mean of rounds) and mean latency")
    out.append("")
    out.append("| variant | clients | mode | direct TPS | one TPS | two TPS | **two/one** "
               "| two/one per round: median (min..max) | one/direct "
               "| latency direct / one / two ms | pgshift CPU us/txn one / two |")
    out.append("|---|---:|---|---:|---:|---:|---:|---|---:|---|---|")
    ratios = []
    below = []
    failures = [r for r in runs if not r["ok"]]
    for cell in cells:
        sel = {t: [r for r in runs if (r["variant"], r["clients"], r["mode"]) == cell
                   and r["target"] == t] for t in TARGETS}
        ok = {t: [r for r in sel[t] if r["ok"]] for t in TARGETS}
        tps = {t: statistics.mean(r["tps"] for r in ok[t]) if ok[t] else None for t in TARGETS}
        lat = {t: statistics.mean(r["lat"] for r in ok[t]) if ok[t] else None for t in TARGETS}
        cpu = {}
        for t in ("one", "two"):
            xs = [r["cpu"] for r in ok[t] if r["cpu"] is not None]
            cpu[t] = "%.0f" % statistics.mean(xs) if xs else "-"
        per_round = []
        for rnd in sorted({r["round"] for r in ok["two"]}):
            a = [r["tps"] for r in ok["two"] if r["round"] == rnd]
            b = [r["tps"] for r in ok["one"] if r["round"] == rnd]
            if a and b:
                per_round.append(a[0] / b[0])
        ratio = tps["two"] / tps["one"] if tps["two"] and tps["one"] else None
        if ratio is not None:
            ratios.append(ratio)
            if ratio < TARGET_RATIO:
                below.append((cell, ratio))
        nfail = sum(len(sel[t]) - len(ok[t]) for t in TARGETS)

        def f(t):
            return fmt_tps(tps[t]) if tps[t] is not None else "failed"

        out.append("| %s | %d | %s | %s | %s | %s | **%s**%s | %s | %s | %s | %s |" % (
            cell[0], cell[1], cell[2], f("direct"), f("one"), f("two"),
            "%.2f" % ratio if ratio is not None else "n/a",
            " (below %.1f)" % TARGET_RATIO if ratio is not None and ratio < TARGET_RATIO else "",
            "%.2f (%.2f..%.2f)" % (statistics.median(per_round), min(per_round), max(per_round))
            if per_round else "n/a",
            "%.2f" % (tps["one"] / tps["direct"]) if tps["one"] and tps["direct"] else "n/a",
            " / ".join("%.2f" % lat[t] if lat[t] is not None else "-" for t in TARGETS)
            + (" (%d failed runs)" % nfail if nfail else ""),
            "%s / %s" % (cpu["one"], cpu["two"])))
    out.append("")
    out.append("pgshift CPU us/txn: user + system CPU time of the pgshift process during the "
               "run (/proc/PID/stat) divided by the transactions pgbench completed (10 ms clock ticks); it varies "
               "less with the machine's other load than TPS does, but not nothing.")
    out.append("")
    if ratios:
        gm = statistics.geometric_mean(ratios)
        out.append("Routed two-store TPS / one-store pass-through TPS: geometric mean %.2f over "
                   "%d cells, lowest %.2f, highest %.2f (target >= %.1f). %s" % (
                       gm, len(ratios), min(ratios), max(ratios), TARGET_RATIO,
                       "Every cell meets it." if not below else
                       "Below the target: " + ", ".join("%s c=%d %s (%.2f)" % (c[0], c[1], c[2], x)
                                                        for c, x in below) + "."))
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
