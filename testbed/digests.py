"""What an Info Mart's set of events digests to. The replica comparison computes it with SQL
on a live server and the checks compute it in Python from the recorded facts: one
definition, owned by neither, so the two always compare like with like."""

from __future__ import annotations

import hashlib

# The distinct event ids of an Info Mart's facts, counted and digested (sorted by code
# point, comma-joined, md5): `event_digest` computes the same from a set of ids.
EVENTS_DIGEST_SQL = (
    "SELECT count(*),"
    """ coalesce(md5(string_agg(event_id, ',' ORDER BY event_id COLLATE "C")), md5(''))"""
    " FROM (SELECT DISTINCT event_id FROM fact_interaction) AS e"
)


def event_digest(events: set[str]) -> str:
    return hashlib.md5(",".join(sorted(events)).encode()).hexdigest()
