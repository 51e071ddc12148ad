#!/usr/bin/env python3
"""Writes docs/benchmarks.md (and its latency plot) from the JSON results of
scripts/bench.sh. Standard library only; the plot is SVG written by hand.

    python3 bench/report.py --results DIR --machine machine.json \\
        --command "scripts/bench.sh" --elapsed SECONDS \\
        --out docs/benchmarks.md --svg docs/benchmarks-latency.svg
"""

import argparse
import csv
import json
import math
import os
import re

# The targets of issue 9.
SATURATION_TARGET = 100_000      # msg/s, cross-node, 64 B
P99_TARGET_MS = 1.0              # game load, 6,000 msg/s
P999_TARGET_MS = 5.0
CPU_VS_FLOOR = 2.0               # relay CPU per message <= 2 x the floor's
SWEEP_P99_MS = 2.0               # highest rate with p99 within 2 ms
KIB_PER_CONNECTION = 6.0         # idle joined connection
JOINS_PER_S = 2_000              # lobbies formed per second
PYTHON_FACTOR = 10.0             # messages per CPU-second vs Python


def load(results, name):
    path = os.path.join(results, name + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        run = json.load(f)
    redis_path = os.path.join(results, name + ".redis.json")
    if os.path.exists(redis_path):
        with open(redis_path) as f:
            r = json.load(f)
        run["redis_info_cpu_s"] = r["after"] - r["before"]
    return run


def num(v, digits=0):
    if v is None:
        return "–"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def ms(v):
    if v is None:
        return "–"
    return f"{v:.3f} ms" if v < 10 else f"{v:.1f} ms"


def verdict(ok):
    if ok is None:
        return "–"
    return "**yes**" if ok else "**NO**"


def procs(run, prefix):
    return [p for p in run["processes"] if p["name"].startswith(prefix)]


def cpu_share(run, prefix):
    return sum(p["cpu_share"] for p in procs(run, prefix))


def cpu_per_msg(run, prefix):
    """CPU µs per delivered message, summed over the processes named prefix*."""
    if not run or run["delivered_per_s"] <= 0:
        return None
    return cpu_share(run, prefix) * 1e6 / run["delivered_per_s"]


def msgs_per_cpu_s(run, prefixes):
    if not run:
        return None
    share = sum(cpu_share(run, p) for p in prefixes)
    return run["delivered_per_s"] / share if share > 0 else None


def gen(run):
    return f"{run['generator']['cpu_share'] * 100:.0f}%" if run else "–"


def correctness(run):
    m = run["messages"]
    return (f"{sum(m['lost'])} / {m['duplicates']} / {m['reordered']}")


def is_clean(run):
    m = run["messages"]
    return (run["ok"] and sum(m["lost"]) == 0 and m["duplicates"] == 0
            and m["reordered"] == 0)


def problems(run):
    if not run or run["ok"]:
        return ""
    return "; ".join(run["problems"])


def per_connection(run, prefix):
    ps = procs(run, prefix)
    if not ps or not run["connections"]:
        return None
    return sum(p["rss_delta_kib"] for p in ps) / run["connections"]


def sweep_runs(results, kind):
    out = []
    for name in os.listdir(results):
        m = re.fullmatch(rf"sweep-{kind}-(\d+)\.json", name)
        if m:
            out.append((int(m.group(1)), load(results, name[:-5])))
    return sorted(out)


def redis_ceiling(results):
    path = os.path.join(results, "redis-ceiling.csv")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        for row in csv.reader(f):
            if row and row[0].upper().startswith("PUBLISH"):
                try:
                    return float(row[1])
                except (IndexError, ValueError):
                    return None
    return None


# --- the plot ---------------------------------------------------------------

def svg_plot(series, path):
    """Latency by percentile: x = log10(1 / (1 - p)), the max at the right."""
    width, height = 760, 420
    left, right, top, bottom = 70, 170, 30, 60
    pw, ph = width - left - right, height - top - bottom
    xmax = 5.5  # 99.999 % is x = 5; the max sits at 5.5

    def xpos(p):
        x = xmax if p >= 100 else min(math.log10(1 / (1 - p / 100)), 5.0)
        return left + pw * x / xmax

    values = [v for _, pts in series for _, v in pts if v and v > 0]
    if not values:
        return False
    lo = 10 ** math.floor(math.log10(max(min(values), 0.001)))
    hi = 10 ** math.ceil(math.log10(max(values)))
    if hi <= lo:
        hi = lo * 10

    def ypos(v):
        v = max(v, lo)
        return top + ph * (1 - (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)))

    colors = ["#1f77b4", "#7f7f7f", "#d62728", "#2ca02c", "#9467bd"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="18" font-size="14">One-way latency by percentile '
           f'(from the scheduled send time; log scales)</text>']
    decade = lo
    while decade <= hi * 1.0001:
        y = ypos(decade)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#ddd"/>')
        label = f"{decade:g} ms"
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
        decade *= 10
    for p, label in [(0, "0%"), (90, "90%"), (99, "99%"), (99.9, "99.9%"),
                     (99.99, "99.99%"), (99.999, "99.999%"), (100, "max")]:
        x = xpos(p)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" stroke="#ddd"/>')
        out.append(f'<text x="{x:.1f}" y="{top + ph + 18}" text-anchor="middle">{label}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 15}" text-anchor="middle">percentile</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    for i, (name, pts) in enumerate(series):
        color = colors[i % len(colors)]
        coords = " ".join(f"{xpos(p):.1f},{ypos(v):.1f}" for p, v in pts if v is not None)
        out.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="2"/>')
        for p, v in pts:
            out.append(f'<circle cx="{xpos(p):.1f}" cy="{ypos(v):.1f}" r="2.5" fill="{color}"/>')
        ly = top + 16 + 18 * i
        out.append(f'<line x1="{left + pw + 12}" y1="{ly - 4}" x2="{left + pw + 30}" y2="{ly - 4}" '
                   f'stroke="{color}" stroke-width="2"/>')
        out.append(f'<text x="{left + pw + 34}" y="{ly}">{name}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    return True


# --- the report -------------------------------------------------------------

def headline(results):
    """The figures an A/B comparison looks at (scripts/bench-ab.sh), of the
    runs there are: saturation msg/s, the game load's p99 and both relay
    nodes' CPU per delivered message, idle memory per connection."""
    out = {}
    sat, game, memory = (load(results, n) for n in ("saturation", "game", "memory"))
    if sat:
        out["saturation_msg_s"] = round(sat["delivered_per_s"])
    if game:
        out["game_cpu_us_per_msg"] = round(cpu_per_msg(game, "relay-"), 2)
        out["game_p99_ms"] = game["latency_ms"]["p99"]
    if memory:
        out["memory_kib_per_conn"] = round(per_connection(memory, "relay-"), 2)
    for run in (sat, game, memory):
        if run and not is_clean(run):
            out.setdefault("problems", []).append(run["label"] if "label" in run else "?")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--headline", action="store_true",
                    help="print the headline figures of the runs there are as one JSON line")
    ap.add_argument("--machine")
    ap.add_argument("--command")
    ap.add_argument("--elapsed", type=int, default=0)
    ap.add_argument("--out")
    ap.add_argument("--svg")
    ap.add_argument("--notes", default=os.path.join(os.path.dirname(__file__), "notes.md"))
    a = ap.parse_args()
    if a.headline:
        print(json.dumps(headline(a.results)))
        return
    for name in ("machine", "command", "out", "svg"):
        if getattr(a, name) is None:
            ap.error(f"--{name} is required (or --headline)")

    with open(a.machine) as f:
        machine = json.load(f)
    R = lambda name: load(a.results, name)  # noqa: E731
    sat, game, floor = R("saturation"), R("game"), R("floor-game")
    joins, memory = R("joins"), R("memory")
    py_sat, py_game, py_mem = R("python-saturation"), R("python-game"), R("python-memory")
    relay_sweep = sweep_runs(a.results, "relay")
    floor_sweep = dict(sweep_runs(a.results, "floor"))
    ceiling = redis_ceiling(a.results)

    L = []
    w = L.append
    w("# Benchmarks")
    w("")
    w("*Generated by `scripts/bench.sh` (tables by `bench/report.py`); do not edit by hand: "
      "notes belong in `bench/notes.md`, which is copied at the end.*")
    w("")
    if machine.get("quick"):
        w("> **QUICK RUN** (`BENCH_QUICK=1`: every duration divided by 5). It checks that the "
          "script works; its figures are noise. Run `scripts/bench.sh` on a quiet machine for "
          "real figures.")
        w("")
    w(f"Command: `{a.command}` (took {a.elapsed} s after the build), on "
      f"{machine.get('date', '?')}, commit `{machine.get('commit', '?')}`"
      f"{' with uncommitted changes' if machine.get('dirty') else ''}.")
    w("")
    w("## Machine")
    w("")
    w("| | |")
    w("| --- | --- |")
    w(f"| CPU | {machine.get('cpu_model')}, {machine.get('cores')} cores"
      f"{', virtual machine (' + machine['hypervisor'] + ')' if machine.get('hypervisor') else ''} |")
    w(f"| memory | {machine.get('memory_gib')} GiB |")
    w(f"| system | {machine.get('os')}, Linux {machine.get('kernel')} |")
    w(f"| toolchain | {machine.get('rustc')}; {machine.get('redis')}; Python {machine.get('python')} |")
    w(f"| load average before the run | {' '.join(machine.get('loadavg_before', []))} |")
    w("")
    w("Everything runs on this one machine: Redis, the two relay nodes (or the floor, or the "
      "Python relay) and the load generator share its cores, so every figure includes their "
      "contention. The generator's own CPU share (of one core) is given beside every figure.")
    w("")

    # --- summary against the targets
    w("## Against the targets of issue 9")
    w("")
    w("| target | measured | met |")
    w("| --- | --- | --- |")
    if sat:
        ok = sat["delivered_per_s"] >= SATURATION_TARGET and is_clean(sat)
        w(f"| saturation, cross-node, 64 B: ≥ {SATURATION_TARGET:,} msg/s, zero loss, "
          f"duplicates, reordering | {num(sat['delivered_per_s'])} msg/s; lost/dup/reordered "
          f"{correctness(sat)} (generator {gen(sat)}) | {verdict(ok)} |")
    if game:
        fl = floor["latency_ms"] if floor else {}
        lat = game["latency_ms"]
        w(f"| game load 6,000 msg/s, cross-node: p99 ≤ {P99_TARGET_MS:g} ms | {ms(lat['p99'])} "
          f"(floor {ms(fl.get('p99'))}; generator {gen(game)}) | "
          f"{verdict(lat['p99'] <= P99_TARGET_MS and is_clean(game))} |")
        w(f"| game load: p99.9 ≤ {P999_TARGET_MS:g} ms | {ms(lat['p99_9'])} (floor "
          f"{ms(fl.get('p99_9'))}) | {verdict(lat['p99_9'] <= P999_TARGET_MS and is_clean(game))} |")
        relay_cpu, floor_cpu = cpu_per_msg(game, "relay-"), cpu_per_msg(floor, "floor")
        ratio = relay_cpu / floor_cpu if relay_cpu and floor_cpu else None
        w(f"| game load: both nodes' CPU per message ≤ {CPU_VS_FLOOR:g} × the floor's | "
          f"{num(relay_cpu, 1)} µs vs {num(floor_cpu, 1)} µs: × {num(ratio, 2)} (Redis: "
          f"{num(cpu_per_msg(game, 'redis'), 1)} µs more) | "
          f"{verdict(ratio <= CPU_VS_FLOOR if ratio else None)} |")
    if relay_sweep:
        best = max((t for t, r in relay_sweep if r and r["latency_ms"]["p99"] <= SWEEP_P99_MS
                    and is_clean(r)), default=None)
        best_floor = max((t for t, r in floor_sweep.items() if r and
                          r["latency_ms"]["p99"] <= SWEEP_P99_MS and is_clean(r)), default=None)
        top = relay_sweep[-1][0]
        more = " (the highest rate tried)" if best == top else ""
        w(f"| highest rate with p99 ≤ {SWEEP_P99_MS:g} ms (report) | "
          f"{num(best) if best else 'none of the rates tried'} msg/s{more}; floor: "
          f"{num(best_floor) if best_floor else 'none'} msg/s | – |")
    if memory:
        kib = per_connection(memory, "relay-")
        w(f"| memory: ≤ {KIB_PER_CONNECTION:g} KiB of relay RSS per idle joined connection | "
          f"{num(kib, 2)} KiB ({memory['connections']:,} connections) | "
          f"{verdict(kib <= KIB_PER_CONNECTION and memory['ok'] if kib is not None else None)} |")
    if joins:
        j = joins["joins"]
        w(f"| joins: ≥ {JOINS_PER_S:,} lobbies formed per second across nodes | "
          f"{num(j['lobbies_per_s'])} lobbies/s; join-to-ready p50 {ms(j['join_to_ready_ms']['p50'])}, "
          f"p99 {ms(j['join_to_ready_ms']['p99'])} ({j['formed']:,} lobbies; generator "
          f"{j.get('generator_cpu_s', 0) / max(j['wall_s'], 1e-9) * 100:.0f}%) | {verdict(j['lobbies_per_s'] >= JOINS_PER_S and j['failed'] == 0)} |")
    if sat:
        redis_us = cpu_per_msg(sat, "redis")
        frac = sat["delivered_per_s"] / ceiling if ceiling else None
        w(f"| Redis: its CPU per relayed message as low as the design allows; near its own "
          f"ceiling | {num(redis_us, 2)} µs of Redis CPU per message at saturation; the relay "
          f"delivered {num(sat['delivered_per_s'])} msg/s = {num(frac * 100 if frac else None, 0)}% of "
          f"Redis's pipelined-PUBLISH ceiling ({num(ceiling)}/s) | – |")
    if sat and py_sat:
        ours = msgs_per_cpu_s(sat, ["relay-"])
        theirs = msgs_per_cpu_s(py_sat, ["python-"])
        factor = ours / theirs if ours and theirs else None
        w(f"| ≥ {PYTHON_FACTOR:g} × the Python relay's messages per CPU-second (saturation) | "
          f"{num(ours)} vs {num(theirs)} msg per CPU-second: × {num(factor, 1)} | "
          f"{verdict(factor >= PYTHON_FACTOR if factor else None)} |")
    w("")

    # --- method
    w("## How it is measured")
    w("")
    w("`lobby-relay-bench` (src/bin/bench/) forms the lobbies (player A of each on node 1, "
      "player B on node 2, so every message crosses Redis), waits for both `ready`s, then each "
      "player sends text game messages `{\"type\":\"b\",\"s\":sender,\"n\":seq,\"t\":ns,\"p\":\"xx…\"}` "
      "padded to 64 bytes. At a rate, each player sends on a fixed schedule spread evenly over "
      "time and over the players (scheduled times on a 250 µs grid; a precise timer thread wakes "
      "the generator), and `t` is the *scheduled* send time, so a stall anywhere shows in the "
      "latency (no coordinated omission); the generator's own lateness is reported as sender "
      "lag. At saturation, each player keeps up to 32 messages in flight. The receiver checks "
      "every message: sender, sequence (duplicates, reordering), and, after a drain at the end, "
      "loss. Latency is one-way on one clock, in an HDR histogram (µs), over the messages "
      "scheduled in the measured interval (after a warm-up). CPU seconds are utime+stime of "
      "`/proc/PID/stat` over the measured interval; RSS is `VmRSS`/`VmHWM` of `/proc/PID/status`. "
      "The generator runs on one tokio runtime thread.")
    w("")
    w("The nodes run with the limits for real players lifted (the generator is one address "
      "opening thousands of connections): `--max-connections-per-address 100000 --join-rate "
      "100000000 --message-rate 10000000`, and `--log-format json` to files. The floor is "
      "`lobby-relay-bench floor`: one process that answers joins and forwards frames between "
      "the two players of a lobby (one reader and one batching writer task per connection), "
      "with no check, no limit and no Redis, on one node. The Python relay is "
      "`bench/python_relay.py` (asyncio + websockets + redis.asyncio with hiredis; a Lua script "
      "for joins, one pub/sub channel per lobby, one pub/sub connection per process), two "
      "processes on the same Redis.")
    w("")

    # --- scenario tables
    def run_row(label, run, prefix, floor_run=None):
        if not run:
            return f"| {label} | (not run) |" + " |" * 8
        lat = run["latency_ms"]
        fl = floor_run["latency_ms"] if floor_run else None
        both = lambda k: ms(lat[k]) + (f" ({ms(fl[k])})" if fl else "")  # noqa: E731
        return (f"| {label} | {num(run['delivered_per_s'])} | {both('p50')} | {both('p90')} | "
                f"{both('p99')} | {both('p99_9')} | {both('max')} | "
                f"{num(cpu_per_msg(run, prefix), 1)} | {gen(run)} |")

    w("## a) Saturation")
    w("")
    if sat:
        w(f"{sat['lobbies_requested']} lobbies, 64-byte messages, {sat['window']} in flight per "
          f"player, {sat['warmup_s']:g} s warm-up then {sat['measured_s']:g} s measured.")
        w("")
        w(process_table(sat, ceiling))
        w(f"Delivered **{num(sat['delivered_per_s'])} msg/s**; lost / duplicated / reordered: "
          f"{correctness(sat)}; latency p50 {ms(sat['latency_ms']['p50'])}, p99 "
          f"{ms(sat['latency_ms']['p99'])} (queueing behind the window); generator {gen(sat)} "
          f"of a core. {problems(sat)}")
        w("")
        w(f"Redis: {num(cpu_per_msg(sat, 'redis'), 2)} µs of its CPU per relayed message over "
          f"the measured interval ({num(sat.get('redis_info_cpu_s'), 2)} CPU s by `INFO cpu` "
          f"over the whole run, joins included); its ceiling here: redis-benchmark "
          f"`PUBLISH` pipelined 32 deep, no subscriber: {num(ceiling)} per second. Each "
          f"relayed message is one PUBLISH that Redis delivers to two subscribers (both nodes "
          f"hold a member of every lobby).")
        w("")

    w("## b) Game load: 100 lobbies × 2 players × 30 Hz = 6,000 msg/s")
    w("")
    w("Latency columns: the relay, and in brackets the floor at the same load in the same "
      "script run. CPU µs/msg: both relay nodes together (the floor: its one process), over "
      "messages delivered; Redis's is in the next table.")
    w("")
    w("| run | delivered/s | p50 | p90 | p99 | p99.9 | max | CPU µs/msg | generator CPU |")
    w("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    w(run_row("lobby-relay (floor)", game, "relay-", floor))
    w(run_row("floor alone", floor, "floor"))
    w(run_row("Python relay", py_game, "python-"))
    w("")
    if game:
        w(process_table(game, None))
        w(f"Sender lag (the generator behind its own schedule): p99 "
          f"{ms(game['sender_lag_ms']['p99'])}, max {ms(game['sender_lag_ms']['max'])}; "
          f"floor run: p99 {ms(floor['sender_lag_ms']['p99']) if floor else '–'}, max "
          f"{ms(floor['sender_lag_ms']['max']) if floor else '–'}. Lost / duplicated / "
          f"reordered: {correctness(game)}. {problems(game)} {problems(floor)}")
        w("")
    if relay_sweep:
        w("### Rate sweep")
        w("")
        w(f"100 lobbies, 64 B, {relay_sweep[0][1]['measured_s']:g} s measured per rate; it stops "
          f"at the first rate where the relay's p99 passes {SWEEP_P99_MS:g} ms. Floor in brackets.")
        w("")
        w("| offered msg/s | delivered/s | p50 | p90 | p99 | p99.9 | max | CPU µs/msg | generator CPU |")
        w("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for total, run in relay_sweep:
            w(run_row(f"{total:,}", run, "relay-", floor_sweep.get(total)))
        w("")
        w("| offered msg/s | relay nodes CPU (of a core) | Redis CPU | floor CPU | relay sender lag max | floor sender lag max | problems |")
        w("| --- | --- | --- | --- | --- | --- | --- |")
        for total, run in relay_sweep:
            fr = floor_sweep.get(total)
            floor_cpu = f"{cpu_share(fr, 'floor') * 100:.0f}%" if fr else "–"
            floor_lag = ms(fr["sender_lag_ms"]["max"]) if fr else "–"
            w(f"| {total:,} | {cpu_share(run, 'relay-') * 100:.0f}% | "
              f"{cpu_share(run, 'redis') * 100:.0f}% | {floor_cpu} | "
              f"{ms(run['sender_lag_ms']['max'])} | {floor_lag} | "
              f"{problems(run)} {problems(fr)} |")
        w("")
    series = []
    for name, run in [("lobby-relay", game), ("floor", floor), ("Python relay", py_game)]:
        if run and run["latency_ms"]["distribution"]:
            series.append((f"{name} (6k/s)", run["latency_ms"]["distribution"]))
    if series and svg_plot(series, a.svg):
        w(f"![latency by percentile at 6,000 msg/s]({os.path.basename(a.svg)})")
        w("")

    w("## c) Joins")
    w("")
    if joins:
        j = joins["joins"]
        w(f"{j['formed']:,} lobbies formed ({j['failed']} failed) in {j['wall_s']:.2f} s with up "
          f"to 256 being formed at once: **{num(j['lobbies_per_s'])} lobbies/s** (each: two "
          f"WebSocket handshakes, two joins, `ready` to both, across the two nodes). "
          f"Join-to-ready p50 {ms(j['join_to_ready_ms']['p50'])}, p99 "
          f"{ms(j['join_to_ready_ms']['p99'])}, max {ms(j['join_to_ready_ms']['max'])}. "
          f"{join_cpu(joins)} {problems(joins)}")
        w("")
        if memory:
            mj = memory["joins"]
            w(f"The memory scenario formed {mj['formed']:,} lobbies at {num(mj['lobbies_per_s'])} "
              f"lobbies/s (p50 {ms(mj['join_to_ready_ms']['p50'])}, p99 "
              f"{ms(mj['join_to_ready_ms']['p99'])}); the Python relay "
              f"{num(py_mem['joins']['lobbies_per_s']) if py_mem else '–'} lobbies/s.")
            w("")

    w("## d) Memory per idle joined connection")
    w("")
    w("| relay | connections | RSS before (KiB) | RSS with them (KiB) | peak (KiB) | KiB per connection |")
    w("| --- | --- | --- | --- | --- | --- |")
    for label, run, prefix in [("lobby-relay", memory, "relay-"), ("Python relay", py_mem, "python-")]:
        if not run:
            continue
        ps = procs(run, prefix)
        w(f"| {label} ({len(ps)} processes) | {run['connections']:,} | "
          f"{' + '.join(str(p['rss_before_kib']) for p in ps)} | "
          f"{' + '.join(str(p['rss_end_kib']) for p in ps)} | "
          f"{' + '.join(str(p['peak_rss_kib']) for p in ps)} | "
          f"**{num(per_connection(run, prefix), 2)}** |")
    w("")
    w("KiB per connection = (sum of the processes' RSS with the connections − before them) / "
      "connections, after holding them idle; Redis's memory is not counted.")
    w("")

    w("## e) The Python relay")
    w("")
    w("| scenario | relay | delivered/s | relay CPU (of a core) | msg per relay CPU-second | "
      "msg per CPU-second incl. Redis | p99 | generator CPU |")
    w("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, ours, theirs in [("saturation", sat, py_sat), ("game load 6k/s", game, py_game)]:
        for name, run, prefix in [("lobby-relay", ours, "relay-"), ("Python", theirs, "python-")]:
            if not run:
                continue
            w(f"| {label} | {name} | {num(run['delivered_per_s'])} | "
              f"{cpu_share(run, prefix) * 100:.0f}% | {num(msgs_per_cpu_s(run, [prefix]))} | "
              f"{num(msgs_per_cpu_s(run, [prefix, 'redis']))} | {ms(run['latency_ms']['p99'])} | "
              f"{gen(run)} |")
    w("")
    for run in [py_sat, py_game, py_mem]:
        if run and not run["ok"]:
            w(f"Problems in {run['label']}: {problems(run)}")
            w("")

    # The Redis Cluster section is written by scripts/bench-cluster.sh
    # (bench/cluster_report.py), the soak's by scripts/soak.sh, quick
    # match's by scripts/bench-quickmatch.sh, TLS's by scripts/bench-tls.sh;
    # all are kept here as they are.
    for kept in (kept_section(a.out, "bench-cluster"), kept_section(a.out, "soak"),
                 kept_section(a.out, "bench-quickmatch"), kept_section(a.out, "bench-tls")):
        if kept:
            w(kept)
            w("")
    w("## Every run")
    w("")
    w("| run | mode | lobbies | delivered/s | lost | dup | reordered | p99 | generator CPU | result |")
    w("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    names = sorted(n[:-5] for n in os.listdir(a.results)
                   if n.endswith(".json") and not n.endswith(".redis.json"))
    for name in names:
        run = load(a.results, name)
        m = run["messages"]
        w(f"| {name} | {run['mode']} | {run['joins']['formed']:,} | {num(run['delivered_per_s'])} | "
          f"{sum(m['lost'])} | {m['duplicates']} | {m['reordered']} | "
          f"{ms(run['latency_ms']['p99']) if run['mode'] != 'idle' else '–'} | {gen(run)} | "
          f"{'ok' if run['ok'] else 'PROBLEM: ' + '; '.join(run['problems'])} |")
    w("")
    w("The JSON summaries (`lobby-relay-bench --json`) and the nodes' logs are in "
      "`target/bench-state/` after a run.")
    w("")
    if os.path.exists(a.notes):
        with open(a.notes) as f:
            notes = f.read().strip()
        if notes:
            w(notes)
            w("")
    with open(a.out, "w") as f:
        f.write("\n".join(L).rstrip() + "\n")


def kept_section(path, name):
    """The section another script (scripts/NAME.sh) wrote into the current
    report (from its begin comment to its end comment), or None."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        text = f.read()
    m = re.search(rf"^<!-- begin {name}[ :].*?^<!-- end {name} -->$", text, re.M | re.S)
    return m.group(0) if m else None


def join_cpu(run):
    """CPU seconds spent while the lobbies formed, per process and per lobby."""
    j = run["joins"]
    parts = [f"{p['name']} {cpu:.2f} s" for p, cpu in zip(run["processes"], j.get("processes_cpu_s", []))]
    relay = sum(cpu for p, cpu in zip(run["processes"], j.get("processes_cpu_s", []))
                if not p["name"].startswith("redis"))
    per_lobby = f" ({relay * 1e6 / j['formed']:.0f} µs of relay CPU per lobby)" if j["formed"] else ""
    return (f"CPU while forming: {', '.join(parts)}{per_lobby}; the generator "
            f"{j.get('generator_cpu_s', 0):.2f} s ({j.get('generator_cpu_s', 0) / max(j['wall_s'], 1e-9) * 100:.0f}% of a core).")


def process_table(run, ceiling):
    rows = ["| process | CPU s | of a core | CPU µs per message | RSS start → end (KiB) | peak RSS (KiB) |",
            "| --- | --- | --- | --- | --- | --- |"]
    for p in run["processes"]:
        rows.append(f"| {p['name']} | {p['cpu_s']:.2f} | {p['cpu_share'] * 100:.0f}% | "
                    f"{num(p['cpu_us_per_msg'], 2)} | {p['rss_start_kib']:,} → {p['rss_end_kib']:,} | "
                    f"{p['peak_rss_kib']:,} |")
    rows.append(f"| load generator | {run['generator']['cpu_s']:.2f} | "
                f"{run['generator']['cpu_share'] * 100:.0f}% | – | – | – |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
