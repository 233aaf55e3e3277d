"""Schema migrations of the evsed SQLite store: numbered, append-only, applied in order.

Each entry is ``(version, sql)``. :class:`service.store.db.Database` applies every migration
whose version is above the database's ``PRAGMA user_version`` inside one transaction each and
sets ``user_version`` in that same transaction, so a crash mid-migration leaves the previous
version intact. Never edit a released migration: add a new one.
"""

from __future__ import annotations

# Notes on version 1:
# - outbound_queue.seq is AUTOINCREMENT so a seq is never reused, even after the newest row was
#   removed: a late response can't be matched to a different message that got the same seq.
# - payload is JSON text; tx_ids.csms_tx_id is JSON text too (1.6 ids are ints, others strings),
#   so the type round-trips.
# - not_before and created_at are wall-clock unix seconds (0 = no delay); monotonic clocks don't
#   survive a reboot. stamp_mono/boot_id let the engine correct a timestamp taken before the
#   clock was set.
_V1 = """
CREATE TABLE outbound_queue (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id  TEXT    NOT NULL UNIQUE,
    action      TEXT    NOT NULL,
    payload     TEXT    NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('transaction', 'other')),
    tx_ref      TEXT    NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    not_before  REAL    NOT NULL DEFAULT 0,
    created_at  REAL    NOT NULL,
    stamp_mono  REAL    NULL,
    boot_id     TEXT    NULL
);
CREATE INDEX outbound_queue_kind ON outbound_queue (kind, seq);
CREATE INDEX outbound_queue_tx_ref ON outbound_queue (tx_ref, seq) WHERE tx_ref IS NOT NULL;

CREATE TABLE tx_ids (
    tx_ref      TEXT PRIMARY KEY,
    csms_tx_id  TEXT NULL
);

CREATE TABLE config_overlay (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    updated_at  REAL NOT NULL
);

CREATE TABLE kv (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL
);
"""

# Version 2: charging sessions and authorization.
# - auth_cache: idTagInfo of tokens the CSMS answered (OCPP 1.6 Authorization Cache); expiry is
#   wall-clock unix seconds or NULL.
# - sessions: one row per open session (authorized and/or transaction running), so that a power
#   cut can be answered after the restart (StopTransaction reason PowerLoss with the last meter
#   reading seen). Deleted when the session ends; `data` holds JSON details.
_V2 = """
CREATE TABLE auth_cache (
    id_tag         TEXT PRIMARY KEY,
    status         TEXT NOT NULL,
    expiry         REAL NULL,
    parent_id_tag  TEXT NULL,
    updated_at     REAL NOT NULL
);
CREATE INDEX auth_cache_updated ON auth_cache (updated_at);

CREATE TABLE sessions (
    session_id     TEXT PRIMARY KEY,
    evse_id        INTEGER NOT NULL,
    id_tag         TEXT NULL,
    started        INTEGER NOT NULL DEFAULT 0,
    meter_start_wh REAL NULL,
    start_time     TEXT NULL,
    last_meter_wh  REAL NULL,
    last_time      TEXT NULL,
    data           TEXT NOT NULL DEFAULT '{}'
);
"""

# Version 3: the OCPP 2.0.1 device model's own values (service/ocpp/v201/device_model.py).
# One row per set attribute of a variable that exists only in 2.0.1; values shared with 1.6
# stay in config_overlay under their 1.6 key (one setting, two names). A component or variable
# without an instance, or without an EVSE / connector, stores '' / 0 (the key columns are NOT
# NULL so the primary key really is unique).
_V3 = """
CREATE TABLE device_model_values (
    component           TEXT    NOT NULL,
    component_instance  TEXT    NOT NULL DEFAULT '',
    evse_id             INTEGER NOT NULL DEFAULT 0,
    connector_id        INTEGER NOT NULL DEFAULT 0,
    variable            TEXT    NOT NULL,
    variable_instance   TEXT    NOT NULL DEFAULT '',
    attribute           TEXT    NOT NULL DEFAULT 'Actual'
                        CHECK (attribute IN ('Actual', 'Target', 'MinSet', 'MaxSet')),
    value               TEXT    NOT NULL,
    updated_at          REAL    NOT NULL,
    PRIMARY KEY (component, component_instance, evse_id, connector_id,
                 variable, variable_instance, attribute)
);
"""

# Version 4: the Local Authorization List (service/station/local_list.py), one list for OCPP 1.6
# and 2.0.1. id_token compares case-insensitively (both versions' idTokens are case-insensitive);
# expiry is wall-clock unix seconds or NULL; token_type is the 2.0.1 IdTokenEnumType (NULL when
# 1.6 sent it). The list's version number is the single row of local_auth_list_version, written
# in the same transaction as the entries.
_V4 = """
CREATE TABLE local_auth_list (
    id_token    TEXT NOT NULL COLLATE NOCASE PRIMARY KEY,
    token_type  TEXT NULL,
    status      TEXT NOT NULL,
    expiry      REAL NULL,
    group_id    TEXT NULL
);

CREATE TABLE local_auth_list_version (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    version     INTEGER NOT NULL
);
"""

MIGRATIONS: list[tuple[int, str]] = [
    (1, _V1),
    (2, _V2),
    (3, _V3),
    (4, _V4),
]

LATEST_VERSION: int = MIGRATIONS[-1][0]


def check_migrations(migrations: list[tuple[int, str]]) -> None:
    """Raise ValueError unless versions run 1, 2, 3 … without gaps or repeats."""
    for index, (version, _sql) in enumerate(migrations, start=1):
        if version != index:
            raise ValueError(f"migration #{index} has version {version}, expected {index}")


check_migrations(MIGRATIONS)
