"""Faults caused for real against the service as deployed (issue 11; contract: "Faults",
"Stampede protection", "Management"): the scenarios of ``make faults`` (faults/), as tests.

One rig for the module (faults/rig.py: its own redis-server, the fake Messages API, gunicorn
with two gevent workers on SQLite); each scenario runs once, and several tests may read its
result. Assertions are on statuses, upstream call counts and what was stored; time bounds are
the contract's own, generous ones ("within lock_ttl + 2 s"). ``-m "not faults"`` deselects the
module; ``-k "not slow_generation"`` skips the one 35-second scenario.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from faults.redis_faults import BACK_WITHIN, KNOWN_DOWN_MAX
from faults.report import Result
from faults.rig import Rig
from faults.scenarios import run

pytestmark = pytest.mark.faults

Results = Callable[[str], Result]


@pytest.fixture(scope="module")
def scenario() -> Iterator[Results]:
    """``scenario(id)``: the scenario's Result, run on first use. At the end, the rig must have
    stopped every process it started (gunicorn's workers too) and removed its folder."""
    with Rig() as rig:
        rig.start()
        done: dict[str, Result] = {}

        def result(scenario_id: str) -> Result:
            if scenario_id not in done:
                done[scenario_id] = run(rig, scenario_id)
            return done[scenario_id]

        yield result
        started = [p.popen.pid for p in rig.processes] + list(rig.workers_seen)
    assert not [pid for pid in started if alive(pid)], "the rig left processes running"
    assert not rig.dir.exists()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_redis_full_new_calls_still_answered(scenario: Results) -> None:
    b = scenario("b")
    assert b.facts["new_status"] == 200
    assert b.failed == 0


def test_redis_full_stored_answers_are_hits(scenario: Results) -> None:
    b = scenario("b")
    assert b.facts["hits"] == 10
    assert b.facts["upstream_for_stored"] == 0


@pytest.mark.parametrize("scenario_id, status", [("h", 429), ("h2", 529)])
def test_upstream_error_reaches_every_waiter_once(scenario: Results, scenario_id: str, status: int) -> None:
    result = scenario(scenario_id)
    assert result.calls == 20
    assert result.facts["same_status"] == 20
    assert result.upstream == 1
    if status == 429:
        assert result.facts["retry_after"] == 20
    assert result.facts["follow_up"] == "200 miss"  # the error was not stored


def test_policy_edit_reaches_every_worker_on_the_next_call(scenario: Results) -> None:
    i = scenario("i")
    assert i.facts["conclusive"]
    assert i.facts["workers"] == 2
    assert set(i.facts["first_after_edit"].values()) == {"bypass"}


def test_lock_outlived_callers_answered(scenario: Results) -> None:
    d2 = scenario("d2")
    assert d2.calls == 12 and d2.failed == 0
    assert d2.facts["stored"]


def test_lock_outlived_one_upstream_call(scenario: Results) -> None:
    assert scenario("d2").upstream == 1


def test_pubsub_killed_callers_answered(scenario: Results) -> None:
    f = scenario("f")
    assert f.facts["killed"] >= 1
    assert f.calls == 40 and f.failed == 0
    assert f.facts["stored"]


def test_pubsub_killed_at_most_two_upstream_calls(scenario: Results) -> None:
    assert scenario("f").upstream <= 2


def test_redis_full_mid_stampede_callers_answered(scenario: Results) -> None:
    k = scenario("k")
    assert k.calls == 10 and k.failed == 0


def test_redis_full_mid_stampede_waiters_released_at_once(scenario: Results) -> None:
    assert scenario("k").facts["after_holder"] <= 2.0


def test_database_down_healthz_names_it(scenario: Results) -> None:
    g = scenario("g")
    assert g.facts["healthz_status"] == 503
    assert g.facts["healthz_database"] == "unavailable"


def test_database_down_known_key_gets_hits(scenario: Results) -> None:
    g = scenario("g")
    assert g.facts["workers"] == 2
    assert g.statuses == {"200 hit": g.calls}


def test_database_down_unknown_key_is_503(scenario: Results) -> None:
    assert scenario("g").facts["unknown_key_status"] == 503


def test_holder_killed_survivors_answered_nothing_partial_stored(scenario: Results) -> None:
    e = scenario("e")
    assert e.facts["on_other"] >= 1
    assert e.facts["lost"] <= e.facts["on_holder"]  # only the killed worker's own clients
    assert e.facts["answered"] == e.calls - e.facts["lost"]  # everyone else
    assert e.facts["stored"]  # a whole answer, by whoever made the call


def test_holder_killed_one_waiter_takes_over_within_lock_ttl(scenario: Results) -> None:
    e = scenario("e")
    assert e.facts["takeover_after"] is not None
    assert e.facts["takeover_after"] <= e.facts["lock_ttl"] + 2.0
    assert e.upstream <= 2


def test_redis_down_calls_answered(scenario: Results) -> None:
    j = scenario("j")
    assert j.calls == 20 and j.failed == 0


def test_redis_down_one_upstream_call_per_worker(scenario: Results) -> None:
    assert scenario("j").upstream <= 2


def test_redis_killed_and_restarted(scenario: Results) -> None:
    a = scenario("a")
    assert a.facts["outage_calls"] > 0
    assert a.failed == 0
    assert a.facts["hits_again_after"] is not None and a.facts["hits_again_after"] <= BACK_WITHIN


def test_redis_frozen_fails_open_and_recovers(scenario: Results) -> None:
    c = scenario("c")
    assert c.failed == 0
    assert c.facts["hits_again_after"] is not None and c.facts["hits_again_after"] <= BACK_WITHIN


def test_redis_frozen_no_call_waits_on_a_known_down_redis(scenario: Results) -> None:
    c = scenario("c")
    assert c.facts["known_down_calls"] > 0
    assert c.facts["known_down_worst"] <= KNOWN_DOWN_MAX


def test_slow_generation_default_policy_one_upstream_call(scenario: Results) -> None:
    d = scenario("d")
    assert d.calls == 12 and d.failed == 0
    assert d.upstream == 1
