"""respcache's services: the cached calls, and the governance every surface goes through.

- calls.py: one call (lookup, upstream, write, count): ``cached_message_create``,
  ``cached_count_tokens``, ``CachedResult`` and the status words;
- stampede.py: a miss under the key's lock (hold, wait, take over, fall through), a small
  explicit state machine;
- streaming.py: ``cached_message_stream``, the stream call and its tee;
- governance.py: workloads, bump, purge, keys, entries, audit;
- counting.py: what a call counts (``Counts``); guard.py: what a Redis error means for a call;
- transfer.py: a workload's entries exported as JSON Lines and imported (the commands use it).

The views, the admin and the commands use the names below; the modules' other names are the
package's own.
"""

from respcache.services.calls import CachedResult, cached_count_tokens, cached_message_create
from respcache.services.governance import (
    POLICY_FIELDS,
    api_key_create,
    api_key_mark_used,
    api_key_revoke,
    audit,
    entry_delete,
    entry_summaries_viewed,
    entry_viewed,
    record_policy_change,
    workload_bump,
    workload_purge,
    workload_set_enabled,
    workload_upsert,
)
from respcache.services.streaming import cached_message_stream

__all__ = [
    "POLICY_FIELDS",
    "CachedResult",
    "api_key_create",
    "api_key_mark_used",
    "api_key_revoke",
    "audit",
    "cached_count_tokens",
    "cached_message_create",
    "cached_message_stream",
    "entry_delete",
    "entry_summaries_viewed",
    "entry_viewed",
    "record_policy_change",
    "workload_bump",
    "workload_purge",
    "workload_set_enabled",
    "workload_upsert",
]
