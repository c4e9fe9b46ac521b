"""Where a server's CPU went, from py-spy's raw (collapsed) samples.

    .venv/bin/python benchmarks/bench_http.py --only ping,offer --workers 1 --py-spy /tmp/spy
    .venv/bin/python benchmarks/spy_summary.py /tmp/spy/service-ping.txt [--top 40]

Prints each function's share of the samples: inclusive (the function or anything it
called was running) and self (the function itself). Idle samples (the event loop waiting
in ``select``/``epoll``) are counted apart, so the shares are of the busy samples.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path


def summarize(path: Path, top: int) -> str:
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    busy = idle = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        if frames and ("select" in frames[-1] or "epoll" in frames[-1] or "poll (" in frames[-1]):
            idle += n
            continue
        busy += n
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
    lines = [
        f"{path.name}: {busy:,} busy samples, {idle:,} idle ({idle / max(1, busy + idle):.0%})"
    ]
    lines.append(f"{'inclusive':>10} {'self':>7}  function")
    for frame, n in inclusive.most_common(top):
        lines.append(f"{n / busy:>10.1%} {own[frame] / busy:>7.1%}  {frame}")
    lines += ["", "most self time:"]
    for frame, n in own.most_common(top // 2):
        lines.append(f"{n / busy:>10.1%}  {frame}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--top", type=int, default=40)
    args = p.parse_args(argv)
    for path in args.paths:
        print(summarize(path, args.top))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
