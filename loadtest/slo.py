"""SLO gate: a bounded headless locust run that fails when latency or errors breach.

    python -m loadtest.slo --host http://127.0.0.1:8000 --users 20 --spawn-rate 10 \\
        --run-time 30s --p95-ms 50 --p99-ms 150 --max-error-ratio 0.01

Locust runs as a subprocess (its gevent monkey-patching stays out of this process) with
``--html`` and ``--csv`` into ``loadtest/reports/<UTC timestamp>/``. The verdict comes from
the "Aggregated" row of ``locust_stats.csv``: p95, p99 and failures / requests over every
request group. Exit status: 0 within the SLO (one summary line on stdout), 1 when a threshold
is breached (each breach printed with its margin), 2 when the run itself is not usable
(locust failed, no requests, exceptions raised in the scenario's code).

Keys and stores reach the locustfile through the environment (see its docstring);
``--sdk-key``, ``--server-key`` and ``--seed`` are shortcuts for those variables.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPORTS = HERE / "reports"
CSV_PREFIX = "locust"
EXIT_OK, EXIT_BREACH, EXIT_BROKEN = 0, 1, 2


def run_time_s(text: str) -> float:
    """Seconds in a locust ``--run-time`` value: ``90``, ``30s``, ``1m30s``, ``2h``."""
    if re.fullmatch(r"\d+(\.\d+)?", text.strip()):
        return float(text)
    parts = re.findall(r"(\d+)\s*([hms])", text)
    if not parts or re.sub(r"(\d+)\s*([hms])|\s", "", text):
        raise argparse.ArgumentTypeError(f"not a run time: {text!r} (e.g. 30s, 1m30s)")
    scale = {"h": 3600, "m": 60, "s": 1}
    return float(sum(int(n) * scale[u] for n, u in parts))


@dataclass(frozen=True, slots=True)
class GroupStats:
    """One row of locust's ``_stats.csv``; percentiles are None without requests."""

    name: str
    requests: int
    failures: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None

    @property
    def error_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0


def _num(raw: str | None) -> float | None:
    try:
        return float(raw) if raw not in (None, "", "N/A") else None
    except ValueError:
        return None


def read_stats(stats_csv: Path) -> tuple[GroupStats | None, list[GroupStats]]:
    """The "Aggregated" row and the per-group rows of a locust ``_stats.csv``."""
    aggregated: GroupStats | None = None
    groups: list[GroupStats] = []
    with stats_csv.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            stats = GroupStats(
                name=row["Name"],
                requests=int(row["Request Count"]),
                failures=int(row["Failure Count"]),
                p50_ms=_num(row["50%"]),
                p95_ms=_num(row["95%"]),
                p99_ms=_num(row["99%"]),
                max_ms=_num(row["Max Response Time"]),
            )
            if row["Name"] == "Aggregated":
                aggregated = stats
            else:
                groups.append(stats)
    return aggregated, groups


def breaches(
    agg: GroupStats, p95_ms: float, p99_ms: float, max_error_ratio: float
) -> list[str]:  # fmt: skip
    """Every threshold ``agg`` breaches, each with its margin."""
    out = []
    for label, value, limit in (("p95", agg.p95_ms, p95_ms), ("p99", agg.p99_ms, p99_ms)):
        if value is not None and value > limit:
            pct = f", {100 * (value - limit) / limit:+.0f} %" if limit > 0 else ""
            out.append(f"{label} {value:g} ms > {limit:g} ms (by {value - limit:g} ms{pct})")
    if agg.error_ratio > max_error_ratio:
        out.append(
            f"error ratio {100 * agg.error_ratio:.2f} % > {100 * max_error_ratio:.2f} % "
            f"(by {100 * (agg.error_ratio - max_error_ratio):.2f} points; "
            f"{agg.failures} of {agg.requests} requests failed)"
        )
    return out


def _exceptions(path: Path) -> list[str]:
    """Messages of the exceptions locust caught in user code (its ``_exceptions.csv``)."""
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        return [f"{r['Message'][:200]} (×{r['Count']})" for r in csv.DictReader(fh)]


def _top_failures(path: Path, limit: int = 5) -> list[str]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: -int(r.get("Occurrences") or 0))
    return [f"{r['Occurrences']:>6} × {r['Name']}: {r['Error'][:160]}" for r in rows[:limit]]


def _table(groups: list[GroupStats], agg: GroupStats, seconds: float) -> str:
    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:g}"

    lines = [
        f"{'group':<34} {'reqs':>7} {'fails':>6} {'req/s':>8} {'p50':>6} {'p95':>6} {'p99':>6}"
    ]
    for g in [*groups, agg]:
        lines.append(
            f"{g.name[:34]:<34} {g.requests:>7} {g.failures:>6} {g.requests / seconds:>8.1f} "
            f"{fmt(g.p50_ms):>6} {fmt(g.p95_ms):>6} {fmt(g.p99_ms):>6}"
        )
    return "\n".join(lines)


def run_locust(args: argparse.Namespace, report_dir: Path, extra: list[str]) -> int:
    """Run locust headless into ``report_dir``; its exit code (killed when overdue)."""
    env = dict(os.environ)
    for flag, var in (
        ("seed", "GEO_OFFERS_LOAD_SEED"),
        ("sdk_key", "GEO_OFFERS_SDK_KEY"),
        ("server_key", "GEO_OFFERS_SERVER_KEY"),
    ):
        value = getattr(args, flag)
        if value:
            env[var] = str(value)
    cmd = [
        sys.executable, "-m", "locust",
        "-f", str(args.locustfile),
        "--headless",
        "--host", args.host,
        "--users", str(args.users),
        "--spawn-rate", str(args.spawn_rate),
        "--run-time", args.run_time,
        "--stop-timeout", str(args.stop_timeout),
        "--html", str(report_dir / "report.html"),
        "--csv", str(report_dir / CSV_PREFIX),
        "--only-summary",
        "--loglevel", "WARNING",
        "--logfile", str(report_dir / "locust.log"),
        *extra,
    ]  # fmt: skip
    # A hard bound on top of --run-time: start-up, ramp-up, stop timeout, report writing.
    budget = run_time_s(args.run_time) + args.stop_timeout + 60
    # Own process group, so a timeout or Ctrl-C stops locust and anything it started.
    with (report_dir / "locust.out").open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        try:
            return proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            print(f"locust overran its {budget:.0f} s budget; stopping it", file=sys.stderr)
            return -1
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.slo",
        description="Headless locust run gated on p95, p99 and the error ratio.",
        epilog="Arguments after '--' go to locust unchanged.",
    )
    parser.add_argument("--host", required=True, help="base URL of the service")
    parser.add_argument("--users", type=int, default=20, help="simulated users (default 20)")
    parser.add_argument("--spawn-rate", type=float, default=10, help="users started per second")
    parser.add_argument("--run-time", default="30s", help="e.g. 30s, 5m (default 30s)")
    parser.add_argument("--p95-ms", type=float, default=50.0, help="p95 limit, ms (default 50)")
    parser.add_argument("--p99-ms", type=float, default=150.0, help="p99 limit, ms (default 150)")
    parser.add_argument(
        "--max-error-ratio", type=float, default=0.01, help="failures / requests (default 0.01)"
    )
    parser.add_argument("--seed", type=Path, help="seed file (GEO_OFFERS_LOAD_SEED)")
    parser.add_argument("--sdk-key", help="sdk key (GEO_OFFERS_SDK_KEY)")
    parser.add_argument("--server-key", help="server key (GEO_OFFERS_SERVER_KEY)")
    parser.add_argument(
        "--report-dir", type=Path, help="where reports go (default loadtest/reports/<timestamp>)"
    )
    parser.add_argument("--locustfile", type=Path, default=HERE / "locustfile.py")
    parser.add_argument("--stop-timeout", type=int, default=5, help="seconds for users to stop")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args = parser.parse_args(argv)
    run_time_s(args.run_time)  # reject a bad value before starting anything
    if args.users < 1 or args.spawn_rate <= 0:
        parser.error("--users and --spawn-rate must be positive")
    if min(args.p95_ms, args.p99_ms, args.max_error_ratio) < 0:
        parser.error("thresholds cannot be negative")
    return args, extra


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    report_dir = args.report_dir or REPORTS / stamp
    report_dir.mkdir(parents=True, exist_ok=True)
    code = run_locust(args, report_dir, extra)
    stats_csv = report_dir / f"{CSV_PREFIX}_stats.csv"
    if not stats_csv.is_file():
        print(f"SLO gate: no stats (locust exit {code}); see {report_dir / 'locust.out'}")
        return EXIT_BROKEN
    agg, groups = read_stats(stats_csv)
    exceptions = _exceptions(report_dir / f"{CSV_PREFIX}_exceptions.csv")
    # Locust exits 1 on any failed request (the gate judges those by ratio); anything else,
    # or an exception raised in the scenario's code, means the run itself went wrong.
    if code not in (0, 1) or exceptions or agg is None or agg.requests == 0:
        why = f"locust exit {code}, {agg.requests if agg else 0} requests"
        if exceptions:
            why += f", {len(exceptions)} exception(s) in the scenario, first: {exceptions[0]}"
        print(f"SLO gate: run not usable ({why}); see {report_dir}/locust.log")
        return EXIT_BROKEN
    # Rates over the whole run: locust's own Requests/s spans first to last request only,
    # which overstates short runs with slow-pinging users.
    seconds = run_time_s(args.run_time)
    print(_table(groups, agg, seconds), file=sys.stderr, flush=True)
    summary = (
        f"{agg.requests} requests, {agg.requests / seconds:.1f} req/s, p95 {agg.p95_ms:g} ms, "
        f"p99 {agg.p99_ms:g} ms, errors {100 * agg.error_ratio:.2f} % "
        f"({args.users} users, {args.run_time}); report {report_dir / 'report.html'}"
    )
    failed = breaches(agg, args.p95_ms, args.p99_ms, args.max_error_ratio)
    if failed:
        for line in _top_failures(report_dir / f"{CSV_PREFIX}_failures.csv"):
            print(f"  failure {line}", file=sys.stderr)
        print("SLO breached: " + "; ".join(failed))
        print(f"  {summary}")
        return EXIT_BREACH
    print(
        f"SLO ok (p95 ≤ {args.p95_ms:g} ms, p99 ≤ {args.p99_ms:g} ms, "
        f"errors ≤ {100 * args.max_error_ratio:g} %): {summary}"
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
