#!/usr/bin/env python3
"""BENCHMARKS.md's "The run below" and "Results" tables from a `bench/suite.py --json` file.

    python3 bench/results_md.py RUN.json [BEFORE.json] > section.md

Prints, for every scenario the run has, warren's rows and each peer's (median, p90, min,
max, n), warren's median over each peer's, and BEFORE's median beside each row when
given; then the load before each scenario and the goals the suite printed. Python 3
standard library only. The prose around the tables is written by hand.
"""
import json
import sys


def f(v):
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:.0f}"
    if abs(v) >= 100:
        return f"{v:.1f}"
    return f"{v:.2f}"


def rows_of(run, key):
    return run.get("scenarios", {}).get(key, {}).get("rows", {})


def before_of(before, key, row, field="median"):
    if not before:
        return None
    r = rows_of(before, key).get(row)
    return r.get(field) if isinstance(r, dict) else None


def table(run, before, key, title, warren_first=True):
    rows = rows_of(run, key)
    if not rows:
        return []
    ws = [k for k, r in rows.items() if r.get("warren") or k.startswith("warren")]
    peers = [k for k in rows if k not in ws]
    cols = ["", "median", "p90", "min", "max", "n"] + [f"{w}/peer" for w in ws]
    if before:
        cols.append("before")
    out = [f"### {title}", "", "| " + " | ".join(cols) + " |",
           "| " + " | ".join(["---"] + ["---:"] * (len(cols) - 1)) + " |"]
    order = (ws + peers) if warren_first else (peers + ws)
    for k in order:
        r = rows[k]
        name = f"**{k}**" if k in ws else k
        cells = [name] + [f(r.get(c)) for c in ("median", "p90", "min", "max")] + [str(r.get("n", "-"))]
        for w in ws:
            ratio = r.get("ratios", {}).get(w)
            cells.append(f(ratio) if ratio is not None else "")
        if before:
            cells.append(f(before_of(before, key, k)))
        out.append("| " + " | ".join(cells) + " |")
    return out + [""]


def density(run, before):
    levels = run.get("scenarios", {}).get("density", {}).get("levels", {})
    if not levels:
        return []
    mib = 1 << 20
    out = ["### Density: N idle sandboxes (8 concurrent API clients)", "",
           "| N | start all | creates/s | remove all | removes/s | user side (PSS) | kernel side | cgroup usage | MemAvailable drop | before: start all, user + kernel |",
           "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    blevels = (before or {}).get("scenarios", {}).get("density", {}).get("levels", {})
    for n, lv in levels.items():
        k = lv.get("kernel_delta_per_sb", {})
        kernel = (k.get("Slab", 0) + k.get("KernelStack", 0) + k.get("PageTables", 0)) / mib
        pss = lv.get("pss_per_sb", 0) / mib
        b = blevels.get(n)
        bcell = "-"
        if b:
            bk = b.get("kernel_delta_per_sb", {})
            bkern = (bk.get("Slab", 0) + bk.get("KernelStack", 0) + bk.get("PageTables", 0)) / mib
            bcell = f"{b.get('start_s', 0):.2f} s, {b.get('pss_per_sb', 0) / mib + bkern:.2f} MiB"
        out.append(f"| {n} | {lv.get('start_s', 0):.2f} s | {lv.get('start_per_s', 0):.0f} | "
                   f"{lv.get('remove_s', 0):.2f} s | {lv.get('remove_per_s', 0):.0f} | {pss:.2f} MiB | "
                   f"{kernel:.2f} MiB | {lv.get('cgroup_usage_per_sb', 0) / mib:.2f} MiB | "
                   f"{lv.get('memavailable_delta_per_sb', 0) / mib:.2f} MiB | {bcell} |")
    return out + [""]


def scaling(run, before):
    rows = rows_of(run, "scaling")
    if not rows:
        return []
    out = ["### Scaling: create latency with N sandboxes already running", "",
           "| running | create median | p90 | min | max | n | create + first exec | before: create, create + exec |",
           "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for k, r in rows.items():
        ce = r.get("create+exec", {}).get("median")
        b = rows_of(before, "scaling").get(k) if before else None
        bcell = f"{f(b.get('median'))}, {f(b.get('create+exec', {}).get('median'))}" if b else "-"
        out.append(f"| {k.split()[0]} | {f(r['median'])} | {f(r['p90'])} | {f(r['min'])} | "
                   f"{f(r['max'])} | {r['n']} | {f(ce)} | {bcell} |")
    return out + [""]


def throughput(run, before):
    out = []
    keys = [k for k in run.get("scenarios", {}) if k.startswith("throughput_")]
    if not keys:
        return out
    peers = [p for p in rows_of(run, keys[0]) if p != "warren-api"]
    out += ["### Throughput: sandboxes created and removed per second (higher is better)", "",
            "| clients | warren API | " + " | ".join(peers) + " | " +
            " | ".join(f"w/{p}" for p in peers) + " | before: warren |",
            "| " + " | ".join(["---:"] * (3 + 2 * len(peers))) + " |"]
    for k in keys:
        rows = rows_of(run, k)
        w = rows.get("warren-api", {}).get("median")
        cells = [k.split("_")[1], f(w)] + [f(rows.get(p, {}).get("median")) for p in peers]
        cells += [f(w / rows[p]["median"]) if w and rows.get(p, {}).get("median") else "-" for p in peers]
        cells.append(f(before_of(before, k, "warren-api")))
        out.append("| " + " | ".join(cells) + " |")
    return out + [""]


def main():
    run = json.load(open(sys.argv[1]))
    before = json.load(open(sys.argv[2])) if len(sys.argv) > 2 else None
    m = run.get("machine", {})
    load = {k: v.get("load_before", [None])[0] for k, v in run.get("scenarios", {}).items()
            if isinstance(v, dict) and v.get("load_before")}
    out = ["## The run below", "", "| | |", "| --- | --- |",
           f"| commit | `{run.get('commit', '')[:7]}`{' (dirty tree)' if run.get('dirty') else ''}"
           + (f"; *before* is `{before.get('commit', '')[:7]}`" if before else "") + " |",
           f"| machine | {m.get('nproc')} CPUs {m.get('cpu', '')}, kernel {m.get('kernel')}, Debian {m.get('debian')} |",
           "| peers | " + ", ".join(v for k, v in run.get("versions", {}).items() if k != "warren") + " |",
           f"| date | {run.get('date', '')[:16]} UTC, {run.get('elapsed_s', 0):.0f} s, "
           f"waited {run.get('config', {}).get('waited_for_load_s', 0):.0f} s for the load |",
           "| load | 1-minute load before each scenario: " +
           ", ".join(f"{k} {v:.2f}" for k, v in load.items() if v is not None) + " |", "",
           "## Results", "",
           "Times in ms (lower is better) unless marked; *w/peer* is warren's median over the "
           "peer's (for MB/s and ops/s, above 1 is better).", ""]
    out += table(run, before, "cold", "Cold start: make a sandbox, run `true`, remove it")
    out += table(run, before, "create", "API create-to-first-exec (warren only)")
    out += table(run, before, "exec", "Exec round trip of `true` in a running sandbox")
    out += table(run, before, "stream", "100 MB of stdout read by the harness (MB/s, higher is better)")
    out += table(run, before, "pause", "Pause + resume of a running sandbox")
    out += density(run, before)
    out += scaling(run, before)
    out += throughput(run, before)
    goals = run.get("goals", {})
    if goals:
        out += ["### Goals as the suite prints them", "", "| goal | | |", "| --- | --- | --- |"]
        for g in goals.values():
            out.append(f"| {g.get('goal')} | {'met' if g.get('met') else 'missed'} | {g.get('text')} |")
        out.append("")
    print("\n".join(out))


if __name__ == "__main__":
    main()
