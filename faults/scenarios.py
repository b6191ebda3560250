"""Every fault scenario, by id, and the order a run takes them in.

The order keeps the long ones last and the ones that restart things (a worker, Redis) after
the ones that only need a healthy rig; each scenario starts from a healed rig anyway.
"""

from __future__ import annotations

from collections.abc import Callable

from faults import redis_faults, service_faults, stampede_faults
from faults.report import Result
from faults.rig import Rig

Scenario = Callable[[Rig], Result]

SCENARIOS: dict[str, Scenario] = {
    "a": redis_faults.redis_killed,
    "b": redis_faults.redis_full,
    "c": redis_faults.redis_frozen,
    "d": stampede_faults.slow_generation,
    "d2": stampede_faults.lock_outlived,
    "e": stampede_faults.holder_killed,
    "f": stampede_faults.pubsub_killed,
    "g": service_faults.database_gone,
    "h": stampede_faults.upstream_429,
    "h2": stampede_faults.upstream_529,
    "i": service_faults.policy_edit,
    "j": redis_faults.redis_down_single_flight,
    "k": redis_faults.redis_full_mid_stampede,
}

ORDER = ("b", "h", "h2", "i", "d2", "f", "k", "g", "e", "j", "a", "c", "d")


def run(rig: Rig, scenario_id: str) -> Result:
    """Run one scenario and heal the rig after it, whatever happened."""
    try:
        return SCENARIOS[scenario_id](rig)
    finally:
        rig.heal()
