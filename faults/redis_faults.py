"""Scenarios where Redis fails: killed and restarted, full, frozen, down (contract: "Faults").

Each takes a started Rig and returns a Result; the rig's ``heal()`` undoes what is left.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter

from redis.exceptions import OutOfMemoryError

from faults.callers import Crowd, Load, stampede
from faults.report import Result, describe, n_upstream
from faults.rig import Rig, Workload

#: How soon after Redis answers again the cache must hit again ("within seconds").
BACK_WITHIN = 5.0
#: A call on a Redis known to be down may take this long at most ("a fraction of a second").
KNOWN_DOWN_MAX = 1.0
#: Redis counts as known down this long after it froze: the client's 2 s read timeout (the
#: deployed RESPCACHE_REDIS_TIMEOUT) has fired for the calls in flight, plus a margin.
KNOWN_DOWN_AFTER = 2.5


def prompts(label: str, count: int) -> list[str]:
    nonce = uuid.uuid4().hex[:8]
    return [f"{label} {i} {nonce}" for i in range(count)]


def stored(rig: Rig, workload: Workload, asked: list[str]) -> None:
    """Ask each prompt once, so that it is stored."""
    for prompt in asked:
        outcome = rig.ask(workload, prompt)
        if not outcome.ok:
            raise RuntimeError(f"could not store {prompt!r}: {outcome}")


def redis_killed(rig: Rig) -> Result:
    """a. Redis SIGKILLed under load, restarted empty 4 s later."""
    result = Result(
        "a",
        "Redis SIGKILLed under load, back empty after 4 s",
        f"0 errors; hits ≤ {BACK_WITHIN:g} s after the restart",
    )
    workload = rig.workload("faults-kill")
    asked = prompts("kill", 4)
    stored(rig, workload, asked)
    before = rig.upstream.count()
    with Load(lambda: rig.caller(workload, timeout=30), asked) as load:
        time.sleep(1.5)
        rig.kill_redis()
        killed = time.time()
        time.sleep(4)
        rig.start_redis()
        back = time.time()
        hit = load.wait_for(lambda o: o.cache == "hit" and o.started >= back, timeout=15)
        time.sleep(1)
    result.outcomes = load.outcomes
    result.upstream = rig.upstream.count() - before
    outage = [o for o in result.outcomes if killed <= o.started < back]
    hits_after = None if hit is None else hit - back
    result.facts = {
        "hits_again_after": hits_after,
        "outage_calls": len(outage),
        "outage_worst": max((o.seconds for o in outage), default=0.0),
    }
    result.ok = result.failed == 0 and hits_after is not None and hits_after <= BACK_WITHIN
    result.observed = (
        f"{describe(result.statuses)}; {len(outage)} calls during the outage, the slowest "
        f"{result.facts['outage_worst']:.2f} s; first hit "
        + ("never" if hits_after is None else f"{hits_after:.2f} s after the restart")
    )
    return result


def fill_to_maxmemory(rig: Rig) -> int:
    """Set maxmemory just above what Redis uses (noeviction) and fill the rest with keys of our
    own until Redis refuses a write; how many filler keys it took. The limit then goes 1 MB
    under what Redis uses: otherwise the buffers Redis frees on its own (an idle client's query
    buffer, after 2 s) let some later writes through, and the scenario would measure that luck."""
    client = rig.redis()
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", int(client.info("memory")["used_memory"]) + 256 * 1024)
    for n in range(1_000_000):
        try:
            client.set(f"faults:filler:{n}", b"x" * 1024)
        except OutOfMemoryError:
            break
    else:
        raise RuntimeError("Redis never refused a write: is maxmemory set?")
    client.config_set("maxmemory", int(client.info("memory")["used_memory"]) - 1024 * 1024)
    try:
        client.set("faults:probe", b"x")
    except OutOfMemoryError:
        return n
    raise RuntimeError("Redis at maxmemory still took a small write")


def empty(rig: Rig, fillers: int) -> None:
    """Undo fill_to_maxmemory: no limit, no filler keys."""
    client = rig.redis()
    client.config_set("maxmemory", 0)
    for n in range(0, fillers + 1, 1000):
        client.delete(*(f"faults:filler:{i}" for i in range(n, min(n + 1000, fillers + 1))))


def redis_full(rig: Rig) -> Result:
    """b. Redis at maxmemory with noeviction: the stored answers are still hits."""
    result = Result(
        "b",
        "Redis full (maxmemory, noeviction): 10 stored, 1 new",
        "10 hits, no upstream for them; the new one 200",
    )
    workload = rig.workload("faults-full")
    asked = prompts("full", 10)
    stored(rig, workload, asked)
    fillers = fill_to_maxmemory(rig)
    try:
        before = rig.upstream.count()
        result.outcomes = [rig.ask(workload, prompt) for prompt in asked]
        hits_upstream = rig.upstream.count() - before
        result.outcomes.append(rig.ask(workload, prompts("full new", 1)[0]))
        result.upstream = rig.upstream.count() - before
    finally:
        empty(rig, fillers)
    hits = sum(o.status == 200 and o.cache == "hit" for o in result.outcomes[:10])
    new = result.outcomes[10]
    result.facts = {"hits": hits, "upstream_for_stored": hits_upstream, "new_status": new.status}
    result.ok = hits == 10 and hits_upstream == 0 and new.ok
    stored_statuses = Counter(f"{o.status} {o.cache or '-'}" for o in result.outcomes[:10])
    result.observed = (
        f"stored answers: {describe(stored_statuses)}, "
        f"{n_upstream(hits_upstream)} for them; the new prompt: {new.status} {new.cache}"
    )
    return result


def redis_frozen(rig: Rig) -> Result:
    """c. Redis frozen (SIGSTOP) for 6 s under load, then SIGCONT."""
    result = Result(
        "c",
        "Redis frozen (SIGSTOP) 6 s under load",
        f"0 errors; ≤ {KNOWN_DOWN_MAX:g} s a call once known down; hits ≤ {BACK_WITHIN:g} s after",
    )
    workload = rig.workload("faults-freeze")
    asked = prompts("freeze", 4)
    stored(rig, workload, asked)
    before = rig.upstream.count()
    with Load(lambda: rig.caller(workload, timeout=30), asked) as load:
        time.sleep(1.5)
        rig.freeze_redis()
        frozen = time.time()
        time.sleep(6)
        rig.thaw_redis()
        thawed = time.time()
        hit = load.wait_for(lambda o: o.cache == "hit" and o.started >= thawed, timeout=15)
        time.sleep(1)
    result.outcomes = load.outcomes
    result.upstream = rig.upstream.count() - before
    known = frozen + KNOWN_DOWN_AFTER
    judged = [o for o in result.outcomes if known <= o.started < thawed]
    # No call started in the window means every caller was stuck in one: as slow as the window.
    result.worst = max((o.seconds for o in judged), default=thawed - known)
    hits_after = None if hit is None else hit - thawed
    result.facts = {"known_down_calls": len(judged), "known_down_worst": result.worst, "hits_again_after": hits_after}
    result.ok = (
        result.failed == 0 and result.worst <= KNOWN_DOWN_MAX and hits_after is not None and hits_after <= BACK_WITHIN
    )
    result.observed = (
        f"{describe(result.statuses)}; {len(judged)} calls started while Redis was known down "
        f"(≥ {KNOWN_DOWN_AFTER:g} s into the freeze), the slowest {result.worst:.2f} s; slowest of all "
        f"{result.slowest:.2f} s; first hit " + ("never" if hits_after is None else f"{hits_after:.2f} s after SIGCONT")
    )
    return result


def redis_down_single_flight(rig: Rig) -> Result:
    """j. Redis down: identical concurrent calls in one worker share one upstream call."""
    result = Result(
        "j",
        "Redis down: 20 identical concurrent calls",
        "≤ 1 upstream call per worker; 20 answered",
    )
    workload = rig.workload("faults-down")
    prompt = prompts("down", 1)[0]
    rig.upstream.configure(delay=1.0)
    rig.kill_redis()
    try:
        before = rig.upstream.count()
        result.outcomes = stampede(lambda: rig.caller(workload, timeout=30), prompt, 20)
        result.upstream = rig.upstream.count() - before
    finally:
        rig.start_redis()
    result.ok = result.failed == 0 and result.calls == 20 and result.upstream <= 2
    result.observed = f"{describe(result.statuses)}; {n_upstream(result.upstream)}"
    return result


def redis_full_mid_stampede(rig: Rig) -> Result:
    """k. Redis fills up while a lock holder's upstream call runs: it cannot store its answer."""
    delay, wait_max = 3.0, 8.0
    result = Result(
        "k",
        f"Redis full during a 10-caller stampede (upstream {delay:g} s)",
        "all answered ≤ 2 s after the holder's answer",
    )
    workload = rig.workload("faults-fullwait", "--wait-max", f"{wait_max:g}")
    prompt = prompts("full stampede", 1)[0]
    rig.upstream.configure(delay=0.2, plan=[delay])  # the holder's call is the slow one
    crowd = Crowd(lambda: rig.caller(workload, timeout=60))
    crowd.send(prompt, 10)
    fillers = 0
    try:
        first = float(rig.upstream.wait_calls(prompt)[0]["at"])
        time.sleep(max(0.0, first + 1.0 - time.time()))  # the others wait on the holder by now
        fillers = fill_to_maxmemory(rig)
        result.outcomes = crowd.join(wait_max + 30)
    finally:
        empty(rig, fillers)
    result.upstream = len(rig.upstream.calls(prompt))
    holder_answered = first + delay
    result.worst = max((o.ended for o in result.outcomes), default=holder_answered) - holder_answered
    result.facts = {"after_holder": result.worst, "wait_max": wait_max}
    result.ok = result.calls == 10 and result.failed == 0 and result.worst <= 2.0
    result.observed = (
        f"{describe(result.statuses)}; the last answered {result.worst:.2f} s after the holder had its answer "
        f"(wait_max {wait_max:g} s); {n_upstream(result.upstream)}"
    )
    return result
