"""Past one machine, on paper: what a national chain needs, from one benchmark's output.

    .venv/bin/python benchmarks/capacity.py                       # latest results/http-*.json
    .venv/bin/python benchmarks/capacity.py results/http-….json --pings-per-s 33333 \\
        --peak-factor 3 --offer-rate 0.01

Measured inputs (from ``bench_http.py``'s JSON): requests/s of one service worker on the
ping path and on the offer path, p99 at 70 % of the maximum, Redis round trips and commands
per ping and per offer, Redis CPU per ping, Redis memory per ping, and PostgreSQL
transactions and rows per offer. Assumptions (options, printed with the report): the load,
the share of pings that issue an offer, how hard a replica may be driven, and what one
Redis shard and one PostgreSQL primary sustain. Those budgets are not measured here: they
are typical figures for a dedicated server, stated so the reader can replace them.

Load model: 10 M app users pinging every 5 minutes is 10e6 / 300 ≈ 33 k pings/s, and
peaks are 3 × that. An offer-issuing ping costs what the offer row measured; the others
cost what the ping row measured.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import orjson

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def latest_result() -> Path:
    """The newest result with the rows a plan needs (a ``--only ping`` run has no offer row)."""
    files = sorted(RESULTS_DIR.glob("http-*.json"), reverse=True)
    if not files:
        raise SystemExit(f"no benchmark output in {RESULTS_DIR}: run benchmarks/bench_http.py")
    for path in files:
        targets = {(r["target"], r["workers"]) for r in orjson.loads(path.read_bytes())["runs"]}
        if ("service ping", 1) in targets and ("service offer", 1) in targets:
            return path
    return files[0]


def _row(runs: list[dict[str, Any]], target: str, workers: int) -> dict[str, Any] | None:
    return next((r for r in runs if r["target"] == target and r["workers"] == workers), None)


def _mixed_rps(ping_rps: float, offer_rps: float | None, offer_rate: float) -> float:
    """Requests/s of a mix: each kind takes 1/rps of the worker's time."""
    if offer_rps is None:
        return ping_rps
    return 1.0 / ((1.0 - offer_rate) / ping_rps + offer_rate / offer_rps)


def _fmt(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:,.1f}" if x >= 10 else f"{x:,.2f}"


def plan(result: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
    """Every figure of the report, as data (tested by eye in the report below)."""
    runs, counts = result["runs"], result.get("counts") or {}
    ping1 = _row(runs, "service ping", 1)
    if ping1 is None:
        raise SystemExit("the benchmark output has no 1-worker 'service ping' row")
    offer1 = _row(runs, "service offer+caps", 1) or _row(runs, "service offer", 1)
    ping2 = _row(runs, "service ping", 2)
    offer2 = _row(runs, "service offer", 2)

    avg = a.pings_per_s
    peak = avg * a.peak_factor
    offers = peak * a.offer_rate
    out: dict[str, Any] = {"avg_pings_s": avg, "peak_pings_s": peak, "peak_offers_s": offers}

    # --- service replicas (stateless: scale by count) ---
    per_worker = _mixed_rps(ping1["rps"], offer1["rps"] if offer1 else None, a.offer_rate)
    out["per_worker_rps"] = per_worker
    out["workers"] = math.ceil(peak / (per_worker * a.headroom))
    # A worker is a core: with one worker the bench machine's other core carries wrk, Redis
    # and PostgreSQL. A replica of N vCPUs runs N workers. The 2-worker row is reported, not
    # used: on the bench machine those two workers share their 2 vCPUs with all the rest.
    out["replicas"] = math.ceil(out["workers"] / a.replica_cores)
    if ping2 is not None:
        out["two_workers_rps"] = _mixed_rps(
            ping2["rps"], offer2["rps"] if offer2 else None, a.offer_rate
        )

    # --- Redis ---
    rp = counts.get("redis_per_ping")
    ro = counts.get("redis_per_offer_with_caps")
    redis: dict[str, Any] = {}
    if rp:
        # A replica whose copy of a device's state is behind pays a second script for pings
        # inside or leaving a fence. The counts above were taken with one worker that had seen
        # every device; the timed 2-worker run spreads each device over two workers, as a
        # load balancer spreads it over replicas: plan with the larger of the two.
        spread = (counts.get("scripts_per_ping_timed") or {}).get("2w")
        factor = max(1.0, spread / rp["round_trips"]) if spread and rp["round_trips"] else 1.0
        # The relay's commands run by Lua (an XADD to the public streams per event) grow with
        # the events, so with the pings; its round trips are polling, per relay process.
        relay_lua = (rp.get("relay") or {}).get("commands_in_lua", 0.0)
        ping_cmds = (rp["round_trips"] + rp["commands_in_lua"]) * factor + relay_lua
        offer_extra_rt = (ro["round_trips"] - rp["round_trips"]) if ro else 0.0
        offer_extra_cmds = (
            (ro["round_trips"] + ro["commands_in_lua"]) - rp["round_trips"] - rp["commands_in_lua"]
            if ro
            else 0.0
        )
        rt = peak * rp["round_trips"] * factor + offers * offer_extra_rt
        cmds = peak * ping_cmds + offers * offer_extra_cmds
        redis.update(round_trips_s=rt, commands_s=cmds, spread_factor=factor)
        redis["shards_by_ops"] = math.ceil(cmds / a.redis_shard_ops)
    cpu_us = counts.get("redis_cpu_us_per_ping")
    if cpu_us:
        cores = peak * cpu_us / 1e6
        redis["cpu_cores"] = cores
        redis["shards_by_cpu"] = math.ceil(cores / a.redis_shard_cpu)
    kpp = counts.get("redis_keys_per_ping") or {}
    sizes = counts.get("redis_key_bytes") or {}
    ttl = a.answer_ttl_s if a.answer_ttl_s is not None else counts.get("ping_answer_ttl_s")
    if sizes and ttl:
        # Each ping's answer is remembered for ping_answer_ttl_s (so a retry gets it back):
        # at steady state, average rate x TTL of them are alive. Device states: one per user.
        live_answers = avg * ttl * kpp.get("answer", 1.0)
        answers_gb = live_answers * sizes["answer"] / 1e9
        state_gb = a.users * sizes["state"] / 1e9
        total_gb = (answers_gb + state_gb) * a.redis_mem_overhead
        redis.update(
            answer_ttl_s=ttl,
            live_answers=live_answers,
            answers_gb=answers_gb,
            state_gb=state_gb,
            memory_gb=total_gb,
            shards_by_memory=math.ceil(total_gb / a.redis_shard_gb),
        )
    redis["shards"] = max((v for k, v in redis.items() if k.startswith("shards_by_")), default=None)
    out["redis"] = redis

    # --- PostgreSQL primary ---
    pg = counts.get("pg_per_offer")
    if pg:
        # Only write transactions wait for a WAL flush; pg_stat_database's other commits are
        # read-only (version polls, and a pool pre-ping where the service enables one).
        writes = offers * a.pg_write_txns_per_offer
        all_txns = offers * (pg["commits"] + pg.get("rollbacks", 0.0))
        # Pings without an offer touch no database; each worker polls two version rows.
        all_txns += out["workers"] * 2 / a.index_poll_s
        out["pg"] = {
            "write_txns_s": writes,
            "rows_inserted_s": offers * pg["inserted"],
            "all_txns_s": all_txns,
            "utilisation": writes / a.pg_write_tps,
            # Offer rate at which the primary's write budget is used up.
            "max_offer_rate": a.pg_write_tps / (peak * a.pg_write_txns_per_offer),
        }
    # --- first bottleneck: one instance of each shared component, which gives out first ---
    single: dict[str, float] = {}
    if "commands_s" in redis:
        single["Redis commands (one shard)"] = redis["commands_s"] / a.redis_shard_ops
    if "cpu_cores" in redis:
        single["Redis CPU (one shard)"] = redis["cpu_cores"] / a.redis_shard_cpu
    if "memory_gb" in redis:
        single["Redis memory (one shard)"] = redis["memory_gb"] / a.redis_shard_gb
    if "pg" in out:
        single["PostgreSQL primary writes"] = out["pg"]["utilisation"]
    out["single_instance_load"] = dict(sorted(single.items(), key=lambda kv: -kv[1]))
    return out


def report(result: dict[str, Any], p: dict[str, Any], a: argparse.Namespace, src: str) -> str:
    runs = result["runs"]
    counts = result.get("counts") or {}
    m = result["machine"]
    ping1 = _row(runs, "service ping", 1) or {}
    offer1 = _row(runs, "service offer+caps", 1) or _row(runs, "service offer", 1)
    ol = next(
        (r for r in result["open_loop"] if r["target"] == "service ping" and r["workers"] == 1),
        None,
    )
    L = [
        f"capacity from {src} ({result['started_at']}, {m['nproc']} x {m['cpu']})",
        "",
        "measured, one service worker (shares 2 vCPUs with PostgreSQL, Redis and wrk):",
        f"  ping path  {ping1.get('rps', 0):,.0f} req/s, p99 {ping1.get('p99_ms', 0):.1f} ms at max"
        + (f"; p99 {ol['p99_ms']:.1f} ms at {ol['rate']:,.0f} req/s (70 %)" if ol else ""),
    ]
    if offer1:
        L.append(
            f"  offer path {offer1['rps']:,.0f} req/s, p99 {offer1['p99_ms']:.1f} ms "
            f"({offer1['target']})"
        )
    else:
        L.append("  offer path: not in this result, so offers are costed as pings (too low)")
    rp, ro = counts.get("redis_per_ping"), counts.get("redis_per_offer_with_caps")
    if rp:
        L.append(
            f"  Redis per ping: {rp['round_trips']} round trips + {rp['commands_in_lua']} "
            f"commands inside Lua ({', '.join(f'{k} {v}' for k, v in rp['by_command'].items())})"
        )
    spread = counts.get("scripts_per_ping_timed")
    relay = (rp or {}).get("relay")
    if relay:
        mix = ", ".join(f"{k} {v}" for k, v in relay["by_command"].items())
        L.append(
            "  Redis per ping, the event relay's own connections (apart since they are named): "
            f"{relay['round_trips']} round trips ({mix}) + {relay['commands_in_lua']} commands "
            "inside Lua; planned: the commands inside Lua (the streams' XADDs, per event); not "
            "planned: the round trips (its polling, per relay process, here over few pings)"
        )
    if spread:
        L.append(
            "  scripts per ping in the timed runs (a worker's copy of a device's state may be "
            f"behind): {', '.join(f'{k} {v}' for k, v in spread.items())}; Redis is planned "
            f"with × {p['redis'].get('spread_factor', 1.0):.2f} (devices spread over replicas)"
        )
    if ro:
        L.append(
            f"  Redis per offer-issuing ping (with caps and budget): {ro['round_trips']} round "
            f"trips + {ro['commands_in_lua']} commands inside Lua"
        )
    if counts.get("redis_cpu_us_per_ping"):
        L.append(f"  Redis CPU per ping: {counts['redis_cpu_us_per_ping']} µs (under full load)")
    if counts.get("redis_key_bytes"):
        ks, kpp = counts["redis_key_bytes"], counts.get("redis_keys_per_ping") or {}
        L.append(
            f"  Redis memory: {kpp.get('answer', '?')} remembered answer per ping of "
            f"{ks['answer']:.0f} B (MEMORY USAGE), kept PING_ANSWER_TTL_S = "
            f"{counts.get('ping_answer_ttl_s')} s; device state {ks['state']:.0f} B per device"
        )
    pg = counts.get("pg_per_offer")
    if pg:
        L.append(
            f"  PostgreSQL per offer: {pg['inserted']} rows inserted (offer + exposure, one write "
            f"transaction), {pg['commits']} commits and {pg.get('rollbacks', 0)} rollbacks "
            "counted (a batch of issuances is one, a batched facts read one more; version "
            "polls add a few); per ping "
            f"without offer: {(counts.get('pg_per_ping') or {}).get('commits', 0)} commits "
            "(index and campaign version polls only)"
        )
    L += [
        "",
        "assumed (change with the options):",
        f"  load {a.pings_per_s:,.0f} pings/s average ({a.users / 1e6:g} M users), peak x "
        f"{a.peak_factor:g} = {p['peak_pings_s']:,.0f} pings/s; {a.offer_rate:.1%} of pings issue "
        f"an offer = {p['peak_offers_s']:,.0f} offers/s at peak",
        f"  replicas run at <= {a.headroom:.0%} of their measured max (where p99 was measured)",
        f"  one Redis shard: {a.redis_shard_ops:,.0f} commands/s (ASSUMPTION, typical 50-100 k "
        f"for small commands and short scripts), {a.redis_shard_cpu:g} core busy at most, "
        f"{a.redis_shard_gb:g} GB usable memory, x{a.redis_mem_overhead:g} for fragmentation "
        "and replicas' buffers",
        f"  one PostgreSQL primary: {a.pg_write_tps:,.0f} small write transactions/s "
        "(ASSUMPTION: SSD, synchronous_commit on, group commit); "
        f"{a.pg_write_txns_per_offer:g} write transaction per offer",
        "",
        "needed at peak:",
        f"  service: {p['workers']} worker processes (one core each) at {p['per_worker_rps']:,.0f}"
        f" req/s (the ping/offer mix), i.e. {p['replicas']} replicas of {a.replica_cores} vCPU",
    ]
    if "two_workers_rps" in p:
        L.append(
            f"           (2 workers on the 2-vCPU bench machine reached {p['two_workers_rps']:,.0f}"
            f" req/s = {p['two_workers_rps'] / p['per_worker_rps']:.2f} x one worker, sharing "
            "those 2 vCPUs with wrk, Redis and PostgreSQL)"
        )
    r = p["redis"]
    if "commands_s" in r:
        L.append(
            f"  Redis: {r['round_trips_s']:,.0f} round trips/s, {r['commands_s']:,.0f} commands/s "
            f"-> {r['shards_by_ops']} shards by commands"
        )
    if "cpu_cores" in r:
        L.append(
            f"         {r['cpu_cores']:.1f} cores of Redis CPU (measured per ping, on a busy "
            f"machine: pessimistic) -> {r['shards_by_cpu']} shards by CPU"
        )
    if "memory_gb" in r:
        L.append(
            f"         memory {r['memory_gb']:,.0f} GB: {r['live_answers'] / 1e9:,.2f} G "
            f"remembered answers ({_fmt(r['answers_gb'])} GB, {r['answer_ttl_s']:,} s TTL) + "
            f"{a.users / 1e6:g} M device states ({_fmt(r['state_gb'])} GB) -> "
            f"{r['shards_by_memory']} shards by memory"
        )
    if r.get("shards"):
        L.append(f"         => Redis Cluster of {r['shards']} primary shards (plus replicas)")
    if "pg" in p:
        g = p["pg"]
        L.append(
            f"  PostgreSQL: {g['write_txns_s']:,.0f} write transactions/s "
            f"({g['rows_inserted_s']:,.0f} rows/s), {g['all_txns_s']:,.0f} transactions/s in all "
            f"-> {g['utilisation']:.0%} of one primary's write budget, which an offer rate of "
            f"{g['max_offer_rate']:.1%} would use up"
        )
    L += [
        "",
        f"biggest bill: the service itself, {p['workers']} cores (it scales out: no shared state "
        "in the process)",
        "first bottleneck (load on ONE instance of each shared component, at peak):",
    ]
    for name, load in p["single_instance_load"].items():
        L.append(f"  {name:<30} {load:>8.1f} x its budget")
    if p["single_instance_load"]:
        first, load = next(iter(p["single_instance_load"].items()))
        L.append(f"  => first: {first} ({load:.1f} x)")
        L.append(verdict(first, p, a))
    return "\n".join(L)


def verdict(first: str, p: dict[str, Any], a: argparse.Namespace) -> str:
    r = p["redis"]
    if first.startswith("Redis memory"):
        ttl = r["answer_ttl_s"]
        share = r["answers_gb"] / max(r["answers_gb"] + r["state_gb"], 1e-9)
        return (
            f"  Remembered ping answers are {share:.1%} of Redis memory: every ping keeps its "
            f"answer for {ttl:,} s so a retry gets it back. A TTL matched to how long SDKs "
            f"really retry (an hour, say) divides that part by {ttl / 3600:g}: "
            "rerun with --answer-ttl-s 3600 to see that plan."
        )
    if first.startswith("Redis"):
        return (
            "  Redis is sharded by device/user hash tags, so this is bought with shards; "
            "fewer round trips per ping lower both the service's and Redis's CPU."
        )
    if first.startswith("PostgreSQL"):
        return (
            "  Offer writes go to one primary: batch or queue issuance writes, or partition "
            "offers, before raising the offer rate."
        )
    return ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("result", nargs="?", type=Path, help="bench JSON (default: the latest)")
    ap.add_argument("--users", type=float, default=10e6, help="app users (device states)")
    ap.add_argument("--pings-per-s", type=float, default=10e6 / 300, help="average pings/s")
    ap.add_argument("--peak-factor", type=float, default=3.0)
    ap.add_argument("--offer-rate", type=float, default=0.01, help="share of pings with an offer")
    ap.add_argument("--headroom", type=float, default=0.7, help="replica load at peak, of max")
    ap.add_argument("--replica-cores", type=int, default=2, help="vCPUs of one replica")
    ap.add_argument("--redis-shard-ops", type=float, default=75_000, help="assumed commands/s")
    ap.add_argument("--redis-shard-cpu", type=float, default=0.7, help="busy cores per shard")
    ap.add_argument("--redis-shard-gb", type=float, default=25.0, help="usable GB per shard")
    ap.add_argument("--redis-mem-overhead", type=float, default=1.3)
    ap.add_argument("--answer-ttl-s", type=int, default=None, help="PING_ANSWER_TTL_S to plan")
    ap.add_argument("--index-poll-s", type=float, default=2.0, help="INDEX_POLL_S")
    ap.add_argument("--pg-write-tps", type=float, default=5_000, help="assumed primary commits/s")
    ap.add_argument(
        "--pg-write-txns-per-offer",
        type=float,
        default=1.0,
        help="from the code: the offer row and its exposure are written in one transaction",
    )
    a = ap.parse_args(argv)
    path = a.result or latest_result()
    result = orjson.loads(path.read_bytes())
    p = plan(result, a)
    print(report(result, p, a, path.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
