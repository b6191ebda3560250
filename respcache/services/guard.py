"""The one fail-open guard: what a Redis error (``CacheUnavailable``) means for a call.

Every Redis touch on the call path goes through ``fail_open(touch, action, fallback)``, in the
spirit of django-redis's ``omit_exception`` (django_redis/cache.py): the caller never sees a
Redis error. The guard logs it once (naming the touch, the workload and the error), hands the
fallback the counts the contract asks for, and returns what the fallback returns. Only
``CacheUnavailable`` is caught: an upstream error, or any other, passes through untouched.

What a Redis error means, touch by touch (``cache_error``: whether the call counts one):

============== ======================================================== ===========
touch          what happens instead                                     cache_error
============== ======================================================== ===========
CALL           the lookup, lock or wait failed: answered from the       yes, with the
               upstream (as ``miss``, or ``refresh`` for no-cache)      call's counts
WRITE          the answer is not stored; the counts that rode in the    yes, with those
               write are counted on their own                           counts
BUDGET         the workload's budget is not enforced for this call (it  no
               goes upstream); its tokens are not added to the day's
COUNT          a waiter's read of the answer it was handed is not       no (its caller
               marked in the entry's meta hash; the call is counted     counts one)
               in the process (tally.py) as ever
RELEASE        the lock expires by itself after ``lock_ttl``            no
PUBLISH        a new key version is not published: the next call        no
               raises Redis's from the database's value
EXPLAIN        a miss's closest stored request is not read: the miss is   no
               not explained (no header, no reason counted)
ANNOUNCE       a policy change is not announced: other processes see    no
               it when their local copy expires (LOCAL_CACHE_SECONDS)
============== ======================================================== ===========

A touch whose loss is repaired later (counts kept, a lock that expires) is not a cache error;
one that cost the call its cache is. The touches nest: CALL wraps a whole cached call, whose
COUNT, WRITE and RELEASE touches each settle their own errors first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from respcache.exceptions import CacheUnavailable
from respcache.services.counting import NO_COUNTS, Counts

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Touch:
    """One kind of Redis touch, and what its failure means (see the module docstring)."""

    #: What did not happen, for the log line.
    lost: str
    #: What happens instead, for the log line.
    instead: str
    #: Whether the call counts a cache error for it.
    cache_error: bool


CALL = Touch("Redis unavailable", "serving from the upstream", cache_error=True)
WRITE = Touch("answer not stored", "its counts are counted on their own", cache_error=True)
BUDGET = Touch("budget not checked", "the call is not held to it (fail-open)", cache_error=False)
COUNT = Touch("read not marked", "counted in the process", cache_error=False)
EXPLAIN = Touch("miss not explained", "no reason counted", cache_error=False)
RELEASE = Touch("lock not released", "it expires by itself after lock_ttl", cache_error=False)
ANNOUNCE = Touch("change not announced", "other workers see it within LOCAL_CACHE_SECONDS", cache_error=False)
PUBLISH = Touch("key version not published", "the next call raises it from the database's value", cache_error=False)


def fail_open(touch: Touch, action: Callable[[], T], fallback: Callable[[Counts], T], *, workload: str) -> T:
    """``action()``; if Redis fails it, log, and return ``fallback(counts)``, where ``counts``
    is the cache error to count along with the call's own counts (or nothing, per ``touch``)."""
    try:
        return action()
    except CacheUnavailable as exc:
        logger.warning("respcache: %s for %s (%s); %s", touch.lost, workload, exc, touch.instead)
        return fallback(Counts.cache_error() if touch.cache_error else NO_COUNTS)


def nothing(counts: Counts) -> None:
    """The fallback of a touch whose loss needs nothing more from the call."""
