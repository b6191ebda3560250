"""Versioned entry records in Redis through django-redis: lookup, write, purge, browse.

- ``records``: the record codec (header, compression, the waiters' ``ok<record>`` message);
  pure, no Redis.
- ``fields``: the hash field names the scripts write (counters, an entry's accounting).
- ``scripts/*.lua``: the Lua scripts, loaded once per process (``script``); they receive every
  field name as ARGV.
- ``connection``: the client, the scripts, the cache alias's prefix on every ``keys`` name.
- ``entries``: the hit path's lookup, the write, key versions, purge, delete, ping.
- ``browse``: what the admin reads (SCAN pages, one entry, server info).
- ``budgets``: workloads' budgets (upstream calls per minute, tokens per day).
- ``transfer``: entries read out whole and written back (export and import).

Callers use the names below, as ``from respcache import store; store.lookup(...)``.
"""

from respcache.store import budgets
from respcache.store.browse import (
    EntryInfo,
    EntryPage,
    HotEntries,
    ServerInfo,
    count_entries,
    entry_get,
    hot_entries,
    iter_entry_keys,
    scan_entries,
    server_info,
)
from respcache.store.connection import (
    breaker,
    client,
    clustered,
    full_key,
    guarded,
    key_space,
    location,
    publish_command,
    script,
    totals_key,
    version_key,
)
from respcache.store.entries import (
    Indexing,
    Lookup,
    announce_policies_changed,
    current_version,
    entry_delete,
    lookup,
    ping,
    purge,
    recent_requests,
    set_version,
    shape_index,
    write,
)
from respcache.store.fields import META_FIELDS
from respcache.store.records import (
    FLAG_LZ4,
    FLAG_ZLIB,
    MAGIC,
    MAX_DECODED_BYTES,
    PUBLISH_RECORD_MAX_BYTES,
    SCHEMA_VERSION,
    Entry,
    IndexItem,
    decode_fields,
    decode_index_item,
    decode_notes,
    decode_record,
    decode_summary,
    encode_fields,
    encode_index_item,
    encode_notes,
    encode_record,
    encode_summary,
    ok_message,
    record_of,
)

__all__ = [
    "FLAG_LZ4",
    "FLAG_ZLIB",
    "MAGIC",
    "MAX_DECODED_BYTES",
    "META_FIELDS",
    "PUBLISH_RECORD_MAX_BYTES",
    "SCHEMA_VERSION",
    "Entry",
    "EntryInfo",
    "EntryPage",
    "HotEntries",
    "IndexItem",
    "Indexing",
    "Lookup",
    "announce_policies_changed",
    "ServerInfo",
    "breaker",
    "budgets",
    "client",
    "clustered",
    "count_entries",
    "current_version",
    "decode_fields",
    "decode_index_item",
    "decode_notes",
    "decode_record",
    "decode_summary",
    "encode_fields",
    "encode_index_item",
    "encode_notes",
    "encode_record",
    "encode_summary",
    "entry_delete",
    "entry_get",
    "full_key",
    "guarded",
    "hot_entries",
    "iter_entry_keys",
    "key_space",
    "location",
    "lookup",
    "ok_message",
    "ping",
    "publish_command",
    "purge",
    "recent_requests",
    "record_of",
    "scan_entries",
    "script",
    "server_info",
    "set_version",
    "shape_index",
    "totals_key",
    "version_key",
    "write",
]
