#!/usr/bin/env python3
"""Writes the "Redis Cluster" section of docs/benchmarks.md from the results
of scripts/bench-cluster.sh, in place: everything between the section's
begin and end comments is replaced, the rest of the file is left as it is
(scripts/bench.sh writes it; bench/report.py keeps this section when it
does). Standard library only.

    python3 bench/cluster_report.py --results DIR --logs DIR \\
        --machine machine.json --command "scripts/bench-cluster.sh" \\
        --elapsed SECONDS --out docs/benchmarks.md plain cluster1 cluster2 ...
"""

import argparse
import json
import os
import re
import statistics

BEGIN = "<!-- begin bench-cluster: written by scripts/bench-cluster.sh, which rewrites everything down to the end comment -->"
END = "<!-- end bench-cluster -->"
BEGIN_PREFIX = "<!-- begin bench-cluster"

# A two-player match at 30 Hz: each player sends 30 messages a second, each
# delivered once (to the other player).
MSGS_PER_MATCH = 60
# The larger machine of the prediction.
BIG_RELAY_CORES = 16
BIG_SHARDS = 8


def commandstats(path):
    """{command: (calls, usec)} of an INFO commandstats output."""
    out = {}
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            m = re.match(r"cmdstat_([^:]+):calls=(\d+),usec=(\d+)", line.strip())
            if m:
                out[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    return out


def delta(after, before, *names):
    calls = usec = 0
    for n in names:
        a, b = after.get(n, (0, 0)), before.get(n, (0, 0))
        calls += a[0] - b[0]
        usec += a[1] - b[1]
    return calls, usec


def log_problems(logs, name):
    """Counts of WARN and ERROR lines in both nodes' logs of a run, and the
    distinct messages (at most 3)."""
    counts = {"WARN": 0, "ERROR": 0}
    messages = {}
    for node in (1, 2):
        path = os.path.join(logs, f"relay-{node}-{name}.log")
        if not os.path.exists(path):
            continue
        with open(path, errors="replace") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                    level = rec.get("level", "")
                    fields = rec.get("fields", {})
                    msg = fields.get("message", line.strip())
                    if "error" in fields:
                        msg += f" ({fields['error']})"
                except ValueError:
                    level = "ERROR" if "panicked" in line else ""
                    msg = line.strip()
                if level in counts:
                    counts[level] += 1
                    messages[msg[:200]] = messages.get(msg[:200], 0) + 1
    return counts, messages


def rest_of_machine(path):
    """The CPU of everything but this run's processes (other work, interrupts)
    over the run, in cores; None without the snapshots."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        rows = [[float(x) for x in line.split()] for line in f if line.strip()]
    if len(rows) < 2 or len(rows[0]) < 4:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    wall = rows[1][0] - rows[0][0]
    busy = (rows[1][1] - rows[0][1]) / tick
    own = (rows[1][2] - rows[0][2]) / tick + (rows[1][3] - rows[0][3])
    return max(busy - own, 0.0) / wall if wall > 0 else None


def interrupts(path):
    """irq + softirq CPU over the run, in cores (where the kernel does most of
    the loopback traffic's work); None without the snapshots."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        rows = [[float(x) for x in line.split()] for line in f if line.strip()]
    if len(rows) < 2 or len(rows[0]) < 5:
        return None
    wall = rows[1][0] - rows[0][0]
    return (rows[1][4] - rows[0][4]) / os.sysconf("SC_CLK_TCK") / wall if wall > 0 else None


def load(results, logs, name):
    path = os.path.join(results, name + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        run = json.load(f)
    delivered = run["delivered_per_s"] * run["measured_s"]
    procs = {p["name"]: p for p in run["processes"]}
    relay = [p for n, p in procs.items() if n.startswith("relay-")]
    shard_names = sorted((n for n in procs if n.startswith("shard-")), key=lambda n: int(n[6:]))
    keys = []
    kpath = os.path.join(results, name + ".keys")
    if os.path.exists(kpath):
        with open(kpath) as f:
            keys = [int(x) for x in f.read().split()]
    shards = []
    for i, sn in enumerate(shard_names):
        before = commandstats(os.path.join(results, f"{name}.before.{sn}.txt"))
        after = commandstats(os.path.join(results, f"{name}.after.{sn}.txt"))
        ev = delta(after, before, "evalsha", "evalsha_ro", "eval", "eval_ro")
        pub = delta(after, before, "spublish", "publish")
        shards.append({
            "name": sn,
            "cpu_s": procs[sn]["cpu_s"],
            "cpu_share": procs[sn]["cpu_share"],
            "evalsha_calls": ev[0],
            "evalsha_usec": ev[1],
            "publish_calls": pub[0],
            "lobbies": keys[i] if i < len(keys) else 0,
        })
    m = run["messages"]
    sent = sum(m["sent"])
    d = {
        "run": run,
        "delivered": delivered,
        "sent": sent,
        "relay_cpu_s": sum(p["cpu_s"] for p in relay),
        "relay_share": sum(p["cpu_share"] for p in relay),
        "redis_cpu_s": sum(s["cpu_s"] for s in shards),
        "redis_share": sum(s["cpu_share"] for s in shards),
        "generator_share": run["generator"]["cpu_share"],
        "shards": shards,
        "lost": sum(m["lost"]),
        "dup": m["duplicates"],
        "reordered": m["reordered"],
        "logs": log_problems(logs, name),
        "rest": rest_of_machine(os.path.join(results, name + ".machine")),
        "irq": interrupts(os.path.join(results, name + ".machine")),
        "tries": int(open(os.path.join(results, name + ".tries")).read().strip() or 1)
        if os.path.exists(os.path.join(results, name + ".tries")) else 1,
    }
    d["relay_us"] = d["relay_cpu_s"] * 1e6 / delivered if delivered else None
    d["redis_us"] = d["redis_cpu_s"] * 1e6 / delivered if delivered else None
    ev_total = sum(s["evalsha_calls"] for s in shards)
    d["msgs_per_evalsha"] = sent / ev_total if ev_total else None
    d["evalsha_usec_per_msg"] = sum(s["evalsha_usec"] for s in shards) / sent if sent else None
    d["publish_per_msg"] = sum(s["publish_calls"] for s in shards) / sent if sent else None

    def spread(key):
        total = sum(s[key] for s in shards)
        if not total:
            return None
        shares = [s[key] / total for s in shards]
        return min(shares), max(shares)

    d["spread"] = {k: spread(k) for k in ("evalsha_calls", "lobbies", "cpu_s")}
    return d


def num(v, digits=0):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def ms(v):
    return f"{v:.3f} ms" if v < 10 else f"{v:.1f} ms"


def pct(v):
    return "–" if v is None else f"{v * 100:.0f}%"


def share_range(r):
    if r is None:
        return "–"
    lo, hi = r
    if round(lo * 100) == round(hi * 100):
        return pct(lo)
    return f"{pct(lo)}–{pct(hi)}"


def label(config):
    if config == "plain":
        return "plain Redis (baseline)"
    n = int(config[len("cluster"):])
    return f"cluster, {n} shard{'s' if n > 1 else ''}"


def shards_of(config):
    return 1 if config == "plain" else int(config[len("cluster"):])


def section(a, machine, runs):
    L = []
    w = L.append
    configs = [c for c in a.configs if runs.get(c + "-saturation") or runs.get(c + "-game")]
    clusters = [c for c in configs if c != "plain"]
    w(BEGIN)
    w("## Redis Cluster: spread over shards, and a capacity model")
    w("")
    w("*Generated by `scripts/bench-cluster.sh` (tables by `bench/cluster_report.py`); do not edit by "
      "hand: the script rewrites this section in place, `scripts/bench.sh` keeps it.*")
    w("")
    if machine.get("quick"):
        w("> **QUICK RUN** (`BENCH_QUICK=1`: every duration divided by 5). It checks that the script "
          "works; its figures are noise.")
        w("")
    dirty = " with uncommitted changes" if machine.get("dirty") else ""
    w(f"Command: `{a.command}` (took {a.elapsed} s after the build), on {machine['date']}, commit "
      f"`{machine['commit']}`{dirty}. Machine: {machine['cpu_model']}, **{machine['cores']} cores**"
      f"{', virtual machine (' + machine['hypervisor'] + ')' if machine.get('hypervisor') else ''}, "
      f"Linux {machine['kernel']}; {machine['redis'].split(' sha=')[0]}; load average before the run "
      f"{' '.join(machine['loadavg_before'])}.")
    w("")
    w("For each configuration, a private Redis on loopback ports, no persistence: one plain "
      "`redis-server` (`redis://`, the baseline: one `relay.lua` per batch of a node's messages, "
      "`PUBLISH`), or a Redis Cluster of S masters without replicas formed by the script "
      "(`CLUSTER MEET`, then `CLUSTER ADDSLOTSRANGE` giving each master an equal range of the 16,384 "
      "slots) and given to the nodes as `redis+cluster://` seeds (one `relay.lua` per batch *and slot*, "
      "by `EVALSHA` on the lobby's shard, `SPUBLISH` to the lobby's sharded channel). Two release relay "
      "nodes, fresh for each run, with the limits for real players lifted as in scenario a; every "
      "lobby has player A on node 1 and player B on node 2, so every message goes through Redis. "
      "**Saturation**: 200 lobbies, 64-byte messages, 32 in flight per player (scenario a). "
      "**Game load**: 100 lobbies × 2 players × 30 Hz = 6,000 msg/s (scenario b). CPU: utime+stime "
      "of each process over the measured interval; µs per message are over the messages delivered "
      "in it (relay: both nodes together, the cost of one cross-node message; Redis: all shards "
      "together). Spread: each shard's share of the `EVALSHA` calls (whole run, from "
      "`INFO commandstats`), of the lobbies (`lr:lobby:*` keys counted on each master halfway "
      "through the run) and of the Redis CPU; the table gives the smallest and largest share "
      "against the even 1/S. *Interrupts*: the machine's irq and softirq time over the run "
      "(`/proc/stat`; most of the kernel's loopback work is there, charged to no process). "
      "*Other work*: the rest of the machine's busy time over the run less that of the relay "
      "nodes, the shards and the generator: other people's work on a shared machine, a few "
      "percent of a core when it is quiet.")
    w("")

    # --- saturation ---------------------------------------------------------
    base = runs.get("cluster1-saturation")
    w("### Saturation, cross-node, 64 B")
    w("")
    w("| Redis | delivered msg/s | vs 1 shard | lost/dup/reordered | relay CPU µs/msg | "
      "Redis CPU µs/msg (Σ shards) | msgs per `EVALSHA` | `EVALSHA` share per shard | lobbies per shard | "
      "Redis CPU share per shard | CPU (of a core): relay nodes / Redis / generator / interrupts / other work | p99 |")
    w("| --- | ---: | ---: | --- | ---: | ---: | ---: | --- | --- | --- | --- | ---: |")
    for c in configs:
        d = runs.get(c + "-saturation")
        if not d:
            continue
        s = shards_of(c)
        even = "" if s == 1 else f" (even {100 / s:.0f}%)"
        rel = (f"× {d['run']['delivered_per_s'] / base['run']['delivered_per_s']:.2f}"
               if base and base["run"]["delivered_per_s"] and c != "plain" else "–")
        spread = (lambda k: share_range(d["spread"][k]) + even) if s > 1 else (lambda k: "–")
        w(f"| {label(c)} | **{num(d['run']['delivered_per_s'])}** | {rel} | "
          f"{d['lost']}/{d['dup']}/{d['reordered']} | {num(d['relay_us'], 2)} | {num(d['redis_us'], 2)} | "
          f"{num(d['msgs_per_evalsha'], 1)} | {spread('evalsha_calls')} | {spread('lobbies')} | "
          f"{spread('cpu_s')} | {pct(d['relay_share'])} / {pct(d['redis_share'])} / "
          f"{pct(d['generator_share'])} / {pct(d['irq'])} / {pct(d['rest'])} | "
          f"{ms(d['run']['latency_ms']['p99'])} |")
    w("")

    # --- game load ----------------------------------------------------------
    w("### Game load, 100 lobbies × 2 players × 30 Hz (6,000 msg/s)")
    w("")
    w("| Redis | delivered msg/s | lost/dup/reordered | p50 | p99 | p99.9 | relay CPU µs/msg | "
      "Redis CPU µs/msg (Σ shards) | msgs per `EVALSHA` | `EVALSHA` share per shard | lobbies per shard | "
      "Redis CPU share per shard | CPU (of a core): relay nodes / Redis / generator / interrupts / other work |")
    w("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | ---: |")
    for c in configs:
        d = runs.get(c + "-game")
        if not d:
            continue
        s = shards_of(c)
        even = "" if s == 1 else f" (even {100 / s:.0f}%)"
        spread = (lambda k: share_range(d["spread"][k]) + even) if s > 1 else (lambda k: "–")
        lat = d["run"]["latency_ms"]
        w(f"| {label(c)} | {num(d['run']['delivered_per_s'])} | {d['lost']}/{d['dup']}/{d['reordered']} | "
          f"{ms(lat['p50'])} | **{ms(lat['p99'])}** | {ms(lat['p99_9'])} | {num(d['relay_us'], 1)} | "
          f"{num(d['redis_us'], 1)} | {num(d['msgs_per_evalsha'], 1)} | {spread('evalsha_calls')} | "
          f"{spread('lobbies')} | {spread('cpu_s')} | {pct(d['relay_share'])} / {pct(d['redis_share'])} / "
          f"{pct(d['generator_share'])} / {pct(d['irq'])} / {pct(d['rest'])} |")
    w("")

    # --- per shard ----------------------------------------------------------
    w("### Each shard")
    w("")
    w("`EVALSHA` and `SPUBLISH` (`PUBLISH` on the plain Redis) calls over the whole run, commands run "
      "from the script included; lobbies halfway through; CPU over the measured interval.")
    w("")
    w("| Redis | shard | slots | saturation: lobbies | `EVALSHA` | `SPUBLISH` | CPU (of a core) | "
      "game: lobbies | `EVALSHA` | CPU (of a core) |")
    w("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for c in configs:
        sat, game = runs.get(c + "-saturation"), runs.get(c + "-game")
        s = shards_of(c)
        for i in range(s):
            lo, hi = 16384 * i // s, 16384 * (i + 1) // s - 1
            slots = "–" if c == "plain" else f"{lo}-{hi}"

            def cell(d, key, fmt):
                if not d or i >= len(d["shards"]):
                    return "–"
                return fmt(d["shards"][i][key])

            w(f"| {label(c) if i == 0 else ''} | {i + 1} | {slots} | {cell(sat, 'lobbies', num)} | "
              f"{cell(sat, 'evalsha_calls', num)} | {cell(sat, 'publish_calls', num)} | "
              f"{cell(sat, 'cpu_share', pct)} | {cell(game, 'lobbies', num)} | "
              f"{cell(game, 'evalsha_calls', num)} | {cell(game, 'cpu_share', pct)} |")
    w("")

    # --- problems -----------------------------------------------------------
    failed = [f"{name}: {'; '.join(d['run']['problems'])}" for name, d in runs.items()
              if d and not d["run"]["ok"]]
    missing = [name for name, d in runs.items() if not d]
    logged = {}
    for name, d in runs.items():
        for msg, n in (d["logs"][1].items() if d else []):
            logged.setdefault(msg, []).append((name, n))
    disturbed = [f"{name} ({pct(d['rest'])})" for name, d in runs.items()
                 if d and d["rest"] is not None and d["rest"] >= 0.25]
    if disturbed:
        w("**Runs that shared the machine with other work** (a quarter of a core or more of "
          "other work; their figures are lower and noisier): " + ", ".join(disturbed) + ".")
        w("")
    again = [f"{name} ({d['tries']} times)" for name, d in runs.items() if d and d["tries"] > 1]
    if again:
        w("Measured again because other work on the machine disturbed the first attempt (the "
          "last attempt is shown): " + ", ".join(again) + ".")
        w("")
    if failed or missing:
        w("**Runs that failed the generator's checks:** " + "; ".join(failed + [f"{m}: no result" for m in missing]))
    else:
        w("Every run passed the generator's checks: every lobby formed; no loss, duplicate or "
          "reordering.")
    w("")
    if logged:
        w("Warnings and errors in the relay nodes' logs:")
        w("")
        for msg, where in sorted(logged.items(), key=lambda x: -len(x[1])):
            total = sum(n for _, n in where)
            w(f"- “{msg}”: {total} line{'s' if total > 1 else ''} in {len(where)} run"
              f"{'s' if len(where) > 1 else ''} ({', '.join(f'{r} × {n}' for r, n in where)})")
    else:
        w("The relay nodes logged no warning or error.")
    w("")

    # --- what it shows ------------------------------------------------------
    sat = {c: runs.get(c + "-saturation") for c in configs}
    game = {c: runs.get(c + "-game") for c in configs}
    csat = [sat[c] for c in clusters if sat[c]]
    cgame = [game[c] for c in clusters if game[c]]
    w("### What the figures show")
    w("")
    plain_sat = sat.get("plain")
    cores = machine["cores"] or 1
    if csat:
        # Largest distance of a shard's share from the even 1/S, in points.
        worst = 0.0
        for d in csat + cgame:
            n = len(d["shards"])
            if n < 2:
                continue
            for r in d["spread"].values():
                if r:
                    worst = max(worst, abs(r[0] - 1 / n), abs(r[1] - 1 / n))
        sd3 = (200 * (1 / 3) * (2 / 3)) ** 0.5 / 200
        # How far a shard's share of the CPU and of the calls is from its
        # share of the lobbies: the work follows the lobbies.
        follow = 0.0
        for d in csat + cgame:
            lob = sum(x["lobbies"] for x in d["shards"])
            cpu = sum(x["cpu_s"] for x in d["shards"])
            ev = sum(x["evalsha_calls"] for x in d["shards"])
            if len(d["shards"]) < 2 or not (lob and cpu and ev):
                continue
            for x in d["shards"]:
                follow = max(follow, abs(x["cpu_s"] / cpu - x["lobbies"] / lob),
                             abs(x["evalsha_calls"] / ev - x["lobbies"] / lob))
        one = max(x["cpu_share"] for x in csat[0]["shards"])
        one_rate = csat[0]["run"]["delivered_per_s"] or 1

        def expected(c):
            return one * sat[c]["run"]["delivered_per_s"] / one_rate / shards_of(c)

        busiest = ", ".join(
            f"{pct(max(x['cpu_share'] for x in sat[c]['shards']))} with {shards_of(c)}"
            + (f" ({pct(expected(c))})" if shards_of(c) > 1 else "")
            for c in clusters if sat[c])
        w(f"- **Spread.** Each shard's share of the lobbies, of the `EVALSHA` calls and of the Redis "
          f"CPU stays within {worst * 100:.0f} percentage points of the even 1/S in every run. "
          f"That is what hashing gives: a lobby's keys and channel share one hash tag, so one slot, "
          f"and 200 lobbies falling at random on 3 shards are {sd3 * 100:.1f} points off 1/3 at one "
          f"standard deviation (100 lobbies: {sd3 * 2 ** 0.5 * 100:.1f}). The work follows the "
          f"lobbies: a shard's share of the `EVALSHA` calls and of the Redis CPU is within "
          f"{follow * 100:.1f} points of its share of the lobbies. So each shard works for about "
          f"1/S of the traffic (more lobbies even it out further): the busiest "
          f"shard's CPU at saturation, of a core, {busiest} shard(s); in brackets the 1-shard "
          f"figure divided by S and scaled to the run's throughput.")
        last = csat[-1]
        s_last = shards_of(clusters[-1])
        used = last["relay_share"] + last["redis_share"] + last["generator_share"]
        rates = ", ".join(
            f"{num(sat[c]['run']['delivered_per_s'])} ({shards_of(c)})" for c in clusters if sat[c])
        w(f"- **Throughput against S.** Delivered msg/s at saturation (shards): {rates}; Redis CPU per "
          f"message, all shards together: "
          + ", ".join(f"{num(sat[c]['redis_us'], 2)} µs ({shards_of(c)})" for c in clusters if sat[c])
          + ": the work is divided among the shards, not repeated on each (sharded pub/sub delivers a "
          "message on its lobby's shard only).")
        if used >= 0.8 * cores:
            w(f"  On this machine throughput cannot grow with S: with {s_last} shards the processes "
              f"used {used * 100:.0f}% of a core out of {cores} cores ({pct(last['relay_share'])} the "
              f"two relay nodes, {pct(last['redis_share'])} the {s_last} shards together, "
              f"{pct(last['generator_share'])} the generator), so a shard more is a process more, not "
              f"CPU more. Read the differences between the S rows as the run-to-run variation of "
              f"a shared {cores}-core machine, not as a trend with S.")
        top = "the relay nodes" if last["relay_share"] >= last["redis_share"] else "Redis"
        w(f"- **The ceiling here is {top}**: at saturation the two relay nodes use "
          f"{pct(last['relay_share'])} of a core and all of Redis {pct(last['redis_share'])}; per "
          f"message the relay costs {num(last['relay_us'], 2)} µs and Redis {num(last['redis_us'], 2)} µs "
          f"({s_last} shards)."
          + (" No shard is near a full core: more shards could not help here, more relay cores would."
             if top == "the relay nodes" and max(x["cpu_share"] for x in last["shards"]) < 0.7 else ""))
    if plain_sat and csat:
        c1 = csat[0]
        w(f"- **Cluster mode against one plain Redis.** Saturation: {num(plain_sat['run']['delivered_per_s'])} "
          f"msg/s on the plain Redis, {num(c1['run']['delivered_per_s'])} on a 1-shard cluster. Redis "
          f"CPU per message {num(plain_sat['redis_us'], 2)} µs against {num(c1['redis_us'], 2)} µs, "
          f"relay CPU {num(plain_sat['relay_us'], 2)} against {num(c1['relay_us'], 2)} µs: the plain "
          f"Redis takes a node's whole batch in one `EVALSHA` ({num(plain_sat['msgs_per_evalsha'], 1)} "
          f"messages per call here), a cluster one `EVALSHA` per batch and slot "
          f"({num(c1['msgs_per_evalsha'], 1)}), each routed by the cluster client to its shard. At "
          f"game load both make about one call per message.")
    if game.get("plain") and cgame:
        w(f"- **Latency at game load** (p99): {ms(game['plain']['run']['latency_ms']['p99'])} on the plain "
          f"Redis; " + ", ".join(f"{ms(game[c]['run']['latency_ms']['p99'])} with {shards_of(c)} shard"
                                 f"{'s' if shards_of(c) > 1 else ''}" for c in clusters if game[c])
          + ". Relay CPU per message at this load: "
          + f"{num(game['plain']['relay_us'], 1)} µs on the plain Redis, "
          + ", ".join(f"{num(game[c]['relay_us'], 1)}" for c in clusters if game[c])
          + " µs with 1, 2, … shards.")
    w("")

    # --- capacity model -----------------------------------------------------
    if csat and cgame:
        relay_sat = statistics.mean(d["relay_us"] for d in csat)
        redis_sat = statistics.mean(d["redis_us"] for d in csat)
        relay_game = statistics.mean(d["relay_us"] for d in cgame)
        redis_game = statistics.mean(d["redis_us"] for d in cgame)

        def per_core(us):
            return 1e6 / us

        def matches(us):
            return 1e6 / us / MSGS_PER_MATCH

        w("### Capacity model")
        w("")
        w(f"From the cluster runs above (means over 1 to {shards_of(clusters[-1])} shards: the costs per "
          f"message do not depend on S). A 30 Hz two-player match is {MSGS_PER_MATCH} delivered "
          "messages a second; every message here crosses nodes, the costly case. Two bounds: "
          "**saturation** (32 messages in flight per player: deep batching, the cost per message a "
          "loaded node tends to) and **game load** (6,000 msg/s on two mostly idle nodes: every "
          "message wakes its tasks on its own). A busy node sits between the two, nearer the first "
          "as its load grows (scenario b's rate sweep shows the relay's CPU per message falling as "
          "the rate rises).")
        w("")
        w("| | CPU µs per message | messages/s per core | 30 Hz matches per core |")
        w("| --- | ---: | ---: | ---: |")
        w(f"| relay, saturation | {relay_sat:.2f} | {num(per_core(relay_sat))} | **{num(matches(relay_sat))}** |")
        w(f"| relay, game load | {relay_game:.1f} | {num(per_core(relay_game))} | {num(matches(relay_game))} |")
        w(f"| Redis shard, saturation | {redis_sat:.2f} | {num(per_core(redis_sat))} | **{num(matches(redis_sat))}** |")
        w(f"| Redis shard, game load | {redis_game:.1f} | {num(per_core(redis_game))} | {num(matches(redis_game))} |")
        if plain_sat and game.get("plain"):
            w(f"| one plain Redis, saturation | {plain_sat['redis_us']:.2f} | "
              f"{num(per_core(plain_sat['redis_us']))} | {num(matches(plain_sat['redis_us']))} |")
            w(f"| one plain Redis, game load | {game['plain']['redis_us']:.1f} | "
              f"{num(per_core(game['plain']['redis_us']))} | {num(matches(game['plain']['redis_us']))} |")
        w("")
        ratio_sat, ratio_game = redis_sat / relay_sat, redis_game / relay_game
        big_relay_hi = BIG_RELAY_CORES * matches(relay_sat)
        big_relay_lo = BIG_RELAY_CORES * matches(relay_game)
        big_redis_hi = BIG_SHARDS * matches(redis_sat)
        big_redis_lo = BIG_SHARDS * matches(redis_game)
        w("- **Per relay node:** matches ≈ its cores × the relay row (the relay's CPU per message is "
          "the sending node's part plus the receiving node's). The runtime spreads connections "
          "over all cores and nodes share nothing but Redis, so this assumes linear in cores; not "
          f"measured here beyond {cores}.")
        w("- **Per shard:** a Redis master runs commands on one thread: a shard is one core, and "
          "carries the Redis row's matches at 100% of it (plan below that: latency grows as a shard "
          "nears a full core).")
        plain_ratio = None
        if plain_sat and game.get("plain"):
            plain_ratio = (plain_sat["redis_us"] / plain_sat["relay_us"],
                           game["plain"]["redis_us"] / game["plain"]["relay_us"])
        w(f"- **Relay cores to shard cores:** a relay core's traffic costs Redis {ratio_sat:.2f} of a "
          f"core at the saturation cost ({ratio_game:.2f} at the game-load cost)."
          + (f" With one plain Redis {plain_ratio[0]:.2f} ({plain_ratio[1]:.2f}), so one plain Redis "
             f"(one core) is full at about {1 / plain_ratio[0]:.1f} relay cores' worth of traffic "
             f"({1 / plain_ratio[1]:.1f}): that is the ceiling the cluster lifts." if plain_ratio else ""))
        w("- **Linear in shards**, the assumption of the prediction: each lobby's keys, scripts and "
          "channel live on one shard (one hash tag), every script touches one lobby, and sharded "
          "pub/sub delivers a message on its shard only (plain `PUBLISH` in a cluster goes over the "
          "cluster bus to every node and would not scale); the spread above is even and the Redis "
          "CPU per message does not grow with S. What does not shard: the node-level keys "
          "(the liveness keys `lr:{nodes}*`, on one shard by their hash tag; `lr:node-lobbies:*`, "
          "`lr:away`): a few commands per node per second plus a few per join and leave.")
        w(f"- **Prediction, {BIG_RELAY_CORES}-core relay hosts and {BIG_SHARDS} shards (a core "
          f"each):** one relay host ≈ {num(big_relay_lo)} to {num(big_relay_hi)} matches (game-load "
          f"to saturation cost) and keeps {BIG_RELAY_CORES * ratio_sat:.1f} shard cores busy "
          f"({BIG_RELAY_CORES * ratio_game:.1f}); the {BIG_SHARDS} shards ≈ {num(big_redis_lo)} to "
          f"{num(big_redis_hi)} matches at full cores, so they serve about "
          f"{BIG_SHARDS / (BIG_RELAY_CORES * ratio_sat):.1f} such relay hosts "
          f"({BIG_SHARDS / (BIG_RELAY_CORES * ratio_game):.1f}), fewer with headroom kept on the "
          f"shards. More relay hosts need more shards in the same proportion, and the cluster "
          f"allows it (up to hundreds of masters)"
          + (f"; one plain Redis would stop at {1 / plain_ratio[0]:.1f} relay cores." if plain_ratio else "."))
        w(f"- **Not measured here:** more than {cores} cores (the prediction is arithmetic on the "
          "figures above); network hops (everything is on loopback); replicas (each master's writes "
          "also go to its replicas); resharding while lobbies are live.")
        w("")
    w("The JSON summaries, `INFO commandstats` snapshots and the nodes' and shards' logs are in "
      "`target/bench-cluster-state/` after a run.")
    w(END)
    return "\n".join(L)


def splice(path, text):
    """Replaces the section in the file, or adds it before "## Every run"
    (after the single-Redis scenarios of scripts/bench.sh), or at the end."""
    old = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    lines = old.rstrip("\n").split("\n")
    begin = next((i for i, l in enumerate(lines) if l.startswith(BEGIN_PREFIX)), None)
    end = next((i for i, l in enumerate(lines) if l.strip() == END), None)
    new = text.split("\n")
    if begin is not None and end is not None and end > begin:
        lines[begin:end + 1] = new
    else:
        at = next((i for i, l in enumerate(lines) if l.strip() == "## Every run"), None)
        if at is None:
            lines += [""] + new
        else:
            lines[at:at] = new + [""]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--logs", required=True)
    ap.add_argument("--machine", required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--elapsed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("configs", nargs="+")
    a = ap.parse_args()
    with open(a.machine) as f:
        machine = json.load(f)
    runs = {}
    for c in a.configs:
        for scenario in ("saturation", "game"):
            name = f"{c}-{scenario}"
            runs[name] = load(a.results, a.logs, name)
    text = section(a, machine, runs)
    splice(a.out, text)
    print(text)


if __name__ == "__main__":
    main()
