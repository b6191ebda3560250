"""Scenarios around the database and the workers' copies of it (contract: "Faults", "Management")."""

from __future__ import annotations

import json
import time
import uuid

from faults.callers import Outcome
from faults.report import Result, describe
from faults.rig import Rig, Workload

#: How long a worker keeps its copy of a policy or key grant: LOCAL_CACHE_SECONDS, as deployed.
LOCAL_COPY_SECONDS = 5.0


def database_gone(rig: Rig) -> Result:
    """g. The SQLite file moved away after the workload and key were used, with a cached prompt."""
    result = Result(
        "g",
        "database gone (SQLite file moved), cached prompt",
        "200 hit on every worker (last known policy)",
    )
    workload = rig.workload("faults-db")
    prompt = f"database {uuid.uuid4().hex[:8]}"
    rig.ask(workload, prompt)  # stored
    rig.on_every_worker(lambda: rig.ask(workload, prompt))  # each worker has read key and policy
    primed = time.time()
    with rig.database_away():
        status, text = rig.get("/healthz")
        time.sleep(max(0.0, primed + LOCAL_COPY_SECONDS + 0.5 - time.time()))  # the copies have expired
        answered = rig.on_every_worker(lambda: rig.ask(workload, prompt))
        stranger = rig.ask(Workload(workload.slug, "faultsxx.unknownkeyunknownkeyunknownkey0", ""), prompt)
    result.outcomes = [o for o, _ in answered]
    try:
        checks = json.loads(text).get("checks", {})
    except ValueError:
        checks = {}
    result.facts = {
        "workers": len({pid for _, pid in answered}),
        "healthz_status": status,
        "healthz_database": checks.get("database"),
        "unknown_key": f"{stranger.status} {stranger.error[:80]}",
        "unknown_key_status": stranger.status,
    }
    hits = sum(o.status == 200 and o.cache == "hit" for o in result.outcomes)
    result.ok = hits == result.calls and result.facts["workers"] == 2
    result.observed = (
        f"{describe(result.statuses)} over {result.facts['workers']} workers, "
        f"{LOCAL_COPY_SECONDS + 0.5:g} s after their copies were read; /healthz {status} database="
        f"{checks.get('database')}; an unknown key got {stranger.status}"
    )
    return result


def policy_edit(rig: Rig, attempts: int = 3) -> Result:
    """i. ``respcache_workload SLUG --disable`` while both workers hold the policy."""
    for _ in range(attempts):  # a run too slow to tell is tried again, not judged
        result = _policy_edit_once(rig)
        if result.facts["conclusive"]:
            break
    return result


def _policy_edit_once(rig: Rig) -> Result:
    result = Result(
        "i",
        "respcache_workload --disable, both workers warm",
        "the next call on every worker: bypass",
    )
    workload = rig.workload("faults-edit")
    prompt = f"edit {uuid.uuid4().hex[:8]}"
    loaded = time.time()  # no worker has read this new workload's policy before now
    rig.ask(workload, prompt)
    primed = rig.on_every_worker(lambda: rig.ask(workload, prompt))
    rig.commands.run("respcache_workload", workload.slug, "--disable")
    edited = time.time()
    before = rig.upstream.count()
    after = rig.on_every_worker(lambda: rig.ask(workload, prompt))
    result.upstream = rig.upstream.count() - before
    first: dict[int | None, Outcome] = {}
    for outcome, pid in after:
        first.setdefault(pid, outcome)
    window = max(o.ended for o in first.values()) - loaded
    result.outcomes = [o for o, _ in after]
    result.facts = {
        "first_after_edit": {pid: o.cache for pid, o in first.items()},
        "workers": len(first),
        "primed": len(primed),
        # Only within LOCAL_COPY_SECONDS of the first read does a bypass prove propagation.
        "conclusive": window < LOCAL_COPY_SECONDS - 0.3,
        "edit_to_check": max(o.ended for o in first.values()) - edited,
    }
    bypass = all(o.cache == "bypass" for o in first.values())
    result.ok = bypass and len(first) == 2 and result.facts["conclusive"]
    seen = ", ".join(f"worker {pid}: {o.status} {o.cache}" for pid, o in first.items())
    result.observed = (
        f"first call after the edit on each worker ({window:.1f} s after the policy was first read): {seen}"
        + ("" if result.facts["conclusive"] else " (too slow to tell: inconclusive)")
    )
    return result
