"""The tables of the pipeline: what ICON writes to an IDB, and what GIM keeps in the Info Mart.

Every IDB row carries the id of the transaction that wrote it (`txid`, an xid8), which is
what lets GIM extract incrementally without skipping rows that commit out of order (see
`gim.py`). The Info Mart holds GIM's whole state next to the facts, so a GIM started at the
other site after a promotion continues exactly where the replicated state says.
"""

from __future__ import annotations

IDB_DDL = """
CREATE TABLE IF NOT EXISTS events (
    event_id  text PRIMARY KEY,
    site      text NOT NULL,
    ts        double precision NOT NULL,
    payload   text NOT NULL,
    icon      text NOT NULL,
    queue_seq bigint NOT NULL,
    txid      xid8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX IF NOT EXISTS events_txid ON events (txid);
CREATE TABLE IF NOT EXISTS heartbeats (
    icon      text NOT NULL,
    ts        double precision NOT NULL,
    since     double precision,  -- since when its ICON holds every event (NULL: always)
    queue_seq bigint NOT NULL,
    txid      xid8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX IF NOT EXISTS heartbeats_txid ON heartbeats (txid);
CREATE TABLE IF NOT EXISTS sessions (
    icon       text NOT NULL,
    session_id text NOT NULL,
    event      text NOT NULL CHECK (event IN ('start', 'end')),
    ts         double precision NOT NULL,
    queue_seq  bigint NOT NULL,
    txid       xid8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE TABLE IF NOT EXISTS icon_progress (
    icon     text PRIMARY KEY,
    last_seq bigint NOT NULL,
    queue_id text  -- which queue the numbers are of: a queue made anew starts over
);
"""

INFOMART_DDL = """
CREATE TABLE IF NOT EXISTS gim_source (
    source         text PRIMARY KEY,
    site           text NOT NULL,
    hwm            bigint NOT NULL DEFAULT 0,
    last_data_ts   double precision,
    rows_extracted bigint NOT NULL DEFAULT 0,
    coverage       text NOT NULL DEFAULT '[]'  -- [since, to] spans its heartbeats vouch for
);
CREATE TABLE IF NOT EXISTS gim_site (
    site           text PRIMARY KEY,
    complete_to    double precision,
    stuck          boolean NOT NULL DEFAULT false,
    stuck_since    double precision,
    lag_from       double precision,  -- its completeness when it was declared stuck
    returned_at    double precision,
    discard_before double precision,
    discarded      bigint NOT NULL DEFAULT 0,
    retired        boolean NOT NULL DEFAULT false,  -- lost in a disaster, no longer waited for
    waited_from    double precision  -- recovered: waited for again from then (its lag too)
);
CREATE TABLE IF NOT EXISTS gim_state (
    id                 int PRIMARY KEY CHECK (id = 1),
    transform_boundary double precision,
    cycles             bigint NOT NULL DEFAULT 0,
    updated_ts         double precision
);
CREATE TABLE IF NOT EXISTS staging (
    event_id text PRIMARY KEY,
    site     text NOT NULL,
    ts       double precision NOT NULL,
    payload  text NOT NULL,
    source   text NOT NULL
);
CREATE INDEX IF NOT EXISTS staging_ts ON staging (ts);
CREATE TABLE IF NOT EXISTS fact_interaction (
    interaction_key bigserial PRIMARY KEY,
    event_id        text NOT NULL,
    site            text NOT NULL,
    ts              double precision NOT NULL,
    payload         text NOT NULL,
    source          text NOT NULL,
    loaded_ts       double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS fact_interaction_event ON fact_interaction (event_id);
CREATE TABLE IF NOT EXISTS gim_discard (
    event_id     text PRIMARY KEY,
    site         text NOT NULL,
    ts           double precision NOT NULL,
    source       text NOT NULL,
    discarded_ts double precision NOT NULL
);
"""
