"""Tests of service.store.overlay: CSMS configuration overlay and key/value state persist."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.store.db import Database
from service.store.overlay import ConfigOverlay, KeyValueState

NOW = 1_700_000_000.0


def test_overlay_set_get_delete_persist_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "evsed.db"
    with Database.open(path) as db:
        overlay = ConfigOverlay(db)
        assert overlay.get_all() == {}
        overlay.set("HeartbeatInterval", "300", NOW)
        overlay.set("MeterValueSampleInterval", "60", NOW)
        overlay.set("HeartbeatInterval", "120", NOW + 10)
        overlay.set("AuthorizationKey", "s3cret", NOW)
        assert overlay.delete("AuthorizationKey") is True
        assert overlay.delete("AuthorizationKey") is False
    with Database.open(path) as db:
        overlay = ConfigOverlay(db)
        assert overlay.get_all() == {"HeartbeatInterval": "120", "MeterValueSampleInterval": "60"}
        assert overlay.get("HeartbeatInterval") == "120"
        assert overlay.get("AuthorizationKey") is None
        row = db.query_one(
            "SELECT updated_at FROM config_overlay WHERE key = ?", ("HeartbeatInterval",)
        )
        assert row is not None and row[0] == NOW + 10


def test_kv_set_get_delete_persist_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "evsed.db"
    with Database.open(path) as db:
        kv = KeyValueState(db)
        assert kv.get("boot_count") is None
        kv.set("boot_count", "1")
        kv.set("boot_count", "2")
        kv.set("registration_status", "Pending")
        kv.set("temporary", "x")
        assert kv.delete("temporary") is True
        assert kv.delete("temporary") is False
    with Database.open(path) as db:
        kv = KeyValueState(db)
        assert kv.get("boot_count") == "2"
        assert kv.get("registration_status") == "Pending"
        assert kv.get("temporary") is None


def test_values_must_be_strings(tmp_path: Path) -> None:
    with Database.open(tmp_path / "evsed.db") as db:
        with pytest.raises(TypeError):
            KeyValueState(db).set("boot_count", 3)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            ConfigOverlay(db).set("HeartbeatInterval", 300, NOW)  # type: ignore[arg-type]
        assert KeyValueState(db).get("boot_count") is None
        assert ConfigOverlay(db).get_all() == {}


def test_overlay_and_kv_writes_join_an_outer_transaction(tmp_path: Path) -> None:
    with Database.open(tmp_path / "evsed.db") as db:
        overlay, kv = ConfigOverlay(db), KeyValueState(db)
        with pytest.raises(RuntimeError), db.transaction():
            overlay.set("SecurityProfile", "2", NOW)
            kv.set("network_profile_pending", "2")
            raise RuntimeError("abandon the switch")
        assert overlay.get_all() == {}
        assert kv.get("network_profile_pending") is None
