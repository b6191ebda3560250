"""Scenarios around the stampede lock (contract: "Stampede protection"): a slow upstream, a failing
upstream, a lock holder killed, the Pub/Sub connections killed.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

from faults import procs
from faults.callers import Crowd, stampede
from faults.report import Result, describe, n_upstream
from faults.rig import Rig, Workload


def new_prompt(label: str) -> str:
    return f"{label} {uuid.uuid4().hex[:8]}"


def follow_up(rig: Rig, workload: Workload, prompt: str, result: Result) -> None:
    """One more call of the same prompt: whether an answer was stored (``hit``) and whole."""
    again = rig.ask(workload, prompt)
    result.facts["follow_up"] = f"{again.status} {again.cache}"
    result.facts["stored"] = again.status == 200 and again.cache == "hit" and again.text.startswith("Answer ")


def slow_generation(rig: Rig) -> Result:
    """d. A 35 s generation under the default policy (longer than the old default wait_max, 30 s)."""
    result = Result("d", "upstream 35 s > old default wait_max 30 s, 12 callers", "1 upstream call; 12 answered")
    workload = rig.workload("faults-slow")
    prompt = new_prompt("slow")
    rig.upstream.configure(delay=0.2, plan=[35.0])  # only the first call is slow
    result.outcomes = stampede(lambda: rig.caller(workload, timeout=90), prompt, 12, timeout=120)
    result.upstream = len(rig.upstream.calls(prompt))
    follow_up(rig, workload, prompt, result)
    result.ok = result.upstream == 1 and result.failed == 0 and result.calls == 12
    result.observed = f"{describe(result.statuses)}; {n_upstream(result.upstream)}; ({workload.described})"
    return result


def lock_outlived(rig: Rig) -> Result:
    """d2. An upstream call longer than lock_ttl: the holder keeps its lock alive."""
    result = Result(
        "d2",
        "upstream 4 s > lock_ttl 1 s, 3 waves of 4 callers",
        "1 upstream call (lock renewed); 12 answered",
    )
    workload = rig.workload("faults-renew", "--lock-ttl", "1")
    prompt = new_prompt("renew")
    rig.upstream.configure(delay=4.0)
    crowd = Crowd(lambda: rig.caller(workload, timeout=60))
    crowd.send(prompt, 4)
    time.sleep(2.0)  # the lock has lived its 1 s: only renewal keeps it
    crowd.send(prompt, 4)
    time.sleep(1.0)  # all before the first answer (4 s): every one of them must wait for it
    crowd.send(prompt, 4)
    result.outcomes = crowd.join(60)
    result.upstream = len(rig.upstream.calls(prompt))
    rig.upstream.configure()
    follow_up(rig, workload, prompt, result)
    result.ok = result.upstream == 1 and result.failed == 0 and result.calls == 12
    result.observed = f"{describe(result.statuses)}; {n_upstream(result.upstream)}"
    return result


def upstream_error(rig: Rig, status: int, result: Result) -> Result:
    """A 20-caller stampede on an upstream answering ``status`` after 2 s."""
    workload = rig.workload(f"faults-{status}")
    prompt = new_prompt(f"status {status}")
    rig.upstream.configure(delay=2.0, status=status)
    result.outcomes = stampede(lambda: rig.caller(workload, timeout=30), prompt, 20)
    result.upstream = len(rig.upstream.calls(prompt))
    rig.upstream.configure()
    follow_up(rig, workload, prompt, result)  # errors are never stored: this one goes upstream
    same = sum(o.status == status for o in result.outcomes)
    result.facts["same_status"] = same
    result.facts["retry_after"] = sum(o.retry_after == "7" for o in result.outcomes)
    result.ok = result.upstream == 1 and same == 20 and result.facts["follow_up"] == "200 miss"
    kept = f"; retry-after kept on {result.facts['retry_after']}" if status == 429 else ""
    result.observed = (
        f"{describe(result.statuses)}; {n_upstream(result.upstream)}{kept}; "
        f"the next call: {result.facts['follow_up']} (nothing stored)"
    )
    return result


def upstream_429(rig: Rig) -> Result:
    """h. The upstream answers 429 to a 20-caller stampede."""
    result = Result("h", "upstream 429 to a 20-caller stampede", "1 upstream call; 20× 429; nothing stored")
    return upstream_error(rig, 429, result)


def upstream_529(rig: Rig) -> Result:
    """h2. The upstream answers 529 (overloaded) to a 20-caller stampede."""
    result = Result("h2", "upstream 529 to a 20-caller stampede", "1 upstream call; 20× 529; nothing stored")
    return upstream_error(rig, 529, result)


def pubsub_killed(rig: Rig) -> Result:
    """f. CLIENT KILL TYPE pubsub during a 40-caller stampede on a 3 s upstream."""
    result = Result("f", "CLIENT KILL TYPE pubsub in a 40-caller stampede", "≤ 2 upstream calls; 40 answered")
    workload = rig.workload("faults-pubsub")
    prompt = new_prompt("pubsub")
    rig.upstream.configure(delay=3.0)
    crowd = Crowd(lambda: rig.caller(workload, timeout=60))
    crowd.send(prompt, 40)
    first = rig.upstream.wait_calls(prompt)[0]
    time.sleep(max(0.0, first["at"] + 1.5 - time.time()))  # every waiter subscribed by now
    client = rig.redis()
    subscribed = [c for c in client.client_list(_type="pubsub") if int(c.get("sub", 0)) > 0]
    killed = client.client_kill_filter(_type="pubsub")
    result.outcomes = crowd.join(60)
    result.upstream = len(rig.upstream.calls(prompt))
    rig.upstream.configure()
    follow_up(rig, workload, prompt, result)
    result.facts.update(pubsub_connections=len(subscribed), killed=killed, upstream_before_kill=1)
    result.ok = result.upstream <= 2 and result.failed == 0 and result.calls == 40
    result.observed = (
        f"{killed} Pub/Sub connections killed 1.5 s into the holder's call; {describe(result.statuses)}; "
        f"{n_upstream(result.upstream)}"
    )
    return result


def holder_killed(rig: Rig) -> Result:
    """e. The worker holding a lock SIGKILLed mid-call, with waiters on both workers."""
    lock_ttl, wait_max = 3.0, 10.0
    result = Result(
        "e",
        f"lock holder's worker SIGKILLed (lock_ttl {lock_ttl:g} s)",
        "takeover ≤ lock_ttl + 2 s; ≤ 2 upstream; the rest answered",
    )
    workload = rig.workload("faults-holder", "--lock-ttl", f"{lock_ttl:g}", "--wait-max", f"{wait_max:g}")
    prompt = new_prompt("holder")
    rig.upstream.configure(delay=0.3, plan=[60.0])  # the holder's call hangs; a takeover's does not
    crowd = Crowd(lambda: rig.caller(workload, timeout=60))
    crowd.send(prompt, 1)
    workers = rig.workers()
    upstream_port = int(rig.upstream.url.rsplit(":", 1)[1])
    holder = procs.owner_of_connection(rig.upstream.wait_calls(prompt)[0]["port"], upstream_port, workers)
    if holder is None:
        raise RuntimeError("no worker holds the holder's upstream connection")
    other = next(pid for pid in workers if pid != holder)
    for _ in range(8):  # waiters on both workers; at least two on the one that survives
        crowd.send(prompt, 4)
        time.sleep(0.3)
        if procs.connections_served(rig.service.port, workers)[other] >= 2:
            break
    time.sleep(1.0)  # they reach the lock and wait
    served = procs.connections_served(rig.service.port, workers)
    os.kill(holder, signal.SIGKILL)
    killed = time.time()
    result.outcomes = crowd.join(wait_max + lock_ttl + 30)
    calls = rig.upstream.calls(prompt)
    result.upstream = len(calls)
    rig.upstream.configure()
    follow_up(rig, workload, prompt, result)
    takeover = min((c["at"] - killed for c in calls if c["at"] >= killed), default=None)
    answered = [o for o in result.outcomes if o.ok]
    lost = [o for o in result.outcomes if o.status is None]
    result.worst = max((o.ended - killed for o in answered), default=0.0)
    result.facts.update(
        lock_ttl=lock_ttl,
        takeover_after=takeover,
        on_holder=served[holder],
        on_other=served[other],
        answered=len(answered),
        lost=len(lost),
        answered_after_kill=result.worst,
    )
    result.ok = (
        takeover is not None
        and takeover <= lock_ttl + 2
        and result.upstream <= 2
        and len(lost) <= served[holder]
        and len(answered) == result.calls - len(lost)
        and result.facts["stored"]
    )
    result.observed = (
        f"callers: {served[holder]} on the holder's worker (lost with it: {len(lost)}), {served[other]} on the "
        f"other (answered: {len(answered)}, the last {result.worst:.2f} s after the kill); takeover "
        + ("never" if takeover is None else f"{takeover:.2f} s after the kill")
        + f"; {n_upstream(result.upstream)}; the next call: {result.facts['follow_up']}"
    )
    return result
