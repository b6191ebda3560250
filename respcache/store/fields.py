"""The names of the hash fields the store writes: counters, and an entry's accounting.

The Lua scripts know no field name: each script receives the names it touches as ARGV, from
the tuples below, so a name is spelt once, here. The counters are the ones ``stats`` reads
(its ``FIELDS`` and ``TOTAL_FIELDS``), added up in each process (tally.py), never by a script.
"""

from __future__ import annotations

# Counters in the minute and hour buckets and in the all-time totals.
WRITTEN = "written"  # entries stored
SAVED_IN = "saved_in"  # input tokens a read did not spend (the stored usage)
SAVED_OUT = "saved_out"  # output tokens likewise
FIRST_READ = "first_read"  # entries read at least once (totals only)
# Counted in the buckets of an entry's *expiry* time (dead-write accounting; never in totals).
EXP_WRITTEN = "exp_written"
EXP_READ = "exp_read"

# An entry's meta hash (``keys.meta_key``): its read counter and accounting, beside it.
READS = "reads"
INPUT_TOKENS = "in"
OUTPUT_TOKENS = "out"
STORED_AT = "stored_at"
SIZE = "size"
MODEL = "model"
EXPIRY_MINUTE_BUCKET = "xm"  # the expiry buckets' keys, where its first read counts EXP_READ
EXPIRY_HOUR_BUCKET = "xh"

#: The meta fields the admin lists (browse.py reads them in this order).
META_FIELDS = (READS, INPUT_TOKENS, OUTPUT_TOKENS, STORED_AT, SIZE, MODEL)

#: ARGV names of scripts/lookup.lua, in the order it reads them (see the script's header).
LOOKUP_FIELDS = (INPUT_TOKENS, OUTPUT_TOKENS, EXPIRY_MINUTE_BUCKET, EXPIRY_HOUR_BUCKET, READS)
#: ARGV names of scripts/write.lua, in the order it reads them (see the script's header).
WRITE_FIELDS = (
    READS,
    INPUT_TOKENS,
    OUTPUT_TOKENS,
    STORED_AT,
    SIZE,
    MODEL,
    EXPIRY_MINUTE_BUCKET,
    EXPIRY_HOUR_BUCKET,
)
