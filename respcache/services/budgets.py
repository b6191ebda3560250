"""A workload's budget, as a call about to go upstream meets it (store/budgets.py keeps it).

Every call about to go upstream (miss, fall-through, refresh, bypass, and one served without
the cache while Redis fails) first spends one of the workload's upstream calls of the minute,
checking its tokens of the day, in one atomic script: ``refusal`` says whether the budget
refuses it. Hits and waits never get here, so a hit costs no extra round trip. The answer's
tokens are added to the day's once it has come (``spend_tokens``). A workload without budgets
costs no round trip for them, and a Redis error means the budget is not enforced (guard.BUDGET).
``count_tokens`` calls spend no tokens and are not budgeted (calls.CountTokensCall).
"""

from __future__ import annotations

import math

from respcache import store
from respcache.exceptions import BudgetExceeded
from respcache.selectors import Policy
from respcache.services import guard


def refusal(policy: Policy, *, now: float) -> BudgetExceeded | None:
    """Spend one upstream call of ``policy``'s workload now, or the refusal to raise if its
    budget is spent (no round trip without budgets; None if Redis fails: fail-open)."""
    if not (policy.max_upstream_per_minute or policy.max_tokens_per_day):
        return None
    windows = store.budgets.Windows.at(policy.slug, now)
    verdict = guard.fail_open(
        guard.BUDGET,
        lambda: store.budgets.spend_call(
            windows,
            now=now,
            per_minute=policy.max_upstream_per_minute,
            tokens_per_day=policy.max_tokens_per_day,
        ),
        lambda _: store.budgets.OK,
        workload=policy.slug,
    )
    if verdict == store.budgets.OK:
        return None
    if verdict == store.budgets.OVER_DAY:
        ends, what = windows.day_ends, f"{policy.max_tokens_per_day} upstream tokens per day"
    else:
        ends, what = windows.minute_ends, f"{policy.max_upstream_per_minute} upstream calls per minute"
    return BudgetExceeded(
        f"Workload {policy.slug!r} is over its budget of {what}; cached answers are still served.",
        retry_after=math.ceil(ends - now),
    )


def spend_tokens(policy: Policy, tokens: int, *, now: float) -> None:
    """Add an upstream answer's ``tokens`` to the workload's day, when it has a token budget."""
    if not policy.max_tokens_per_day or tokens <= 0:
        return
    windows = store.budgets.Windows.at(policy.slug, now)
    guard.fail_open(
        guard.BUDGET,
        lambda: store.budgets.spend_tokens(windows, tokens, now=now),
        guard.nothing,
        workload=policy.slug,
    )
