"""``python -m faults`` (``make faults``): each fault of issue 11 caused for real, one table row each.

It starts its own Redis, the fake upstream and gunicorn as deployed (faults/rig.py), runs the
scenarios (faults/scenarios.py), stops everything it started and prints: scenario, calls,
non-2xx (lost connections included), upstream calls, worst latency, what must hold
and whether it held. ``--only a,e`` runs some of them. A FAIL is a finding, not an error: the
exit status is 0 unless the rig itself could not run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
import traceback

from faults.report import Result, render
from faults.rig import WORKERS, Rig, say
from faults.scenarios import ORDER, SCENARIOS, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m faults", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help=f"comma-separated scenario ids (default: all of {','.join(ORDER)})")
    args = parser.parse_args(argv)
    wanted = [s.strip() for s in args.only.split(",")] if args.only else list(ORDER)
    unknown = [s for s in wanted if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    started = time.monotonic()
    results: list[Result] = []
    with Rig() as rig:
        rig.start()
        redis_version = rig.redis_version()
        for scenario_id in [s for s in ORDER if s in wanted]:
            say(f"{scenario_id}: {(SCENARIOS[scenario_id].__doc__ or '').split(chr(10))[0]}")
            began = time.monotonic()
            try:
                result = run(rig, scenario_id)
            except Exception as exc:  # a scenario that cannot run is a row, not the end of the run
                traceback.print_exc()
                result = Result(scenario_id, (SCENARIOS[scenario_id].__doc__ or "").split(". ", 1)[-1].strip(), "-")
                result.observed = f"the scenario could not run: {type(exc).__name__}: {exc}"
            say(f"{scenario_id}: {'pass' if result.ok else 'FAIL'} in {time.monotonic() - began:.0f} s")
            results.append(result)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = [
        f"respcache faults, {now}: make faults, {time.monotonic() - started:.0f} s; "
        f"gunicorn gevent × {WORKERS} workers (gunicorn.conf.py), Redis {redis_version}, SQLite, "
        f"the fake Messages API over HTTP; Python {platform.python_version()}, {os.cpu_count()} cores",
        "non-2xx counts lost connections too; worst = the slowest call (c: of those started once Redis "
        "was known down; e: from the kill to the last answer)",
        "",
    ]
    print(render(results, header))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        say("interrupted; everything it started is stopped")
        sys.exit(130)
