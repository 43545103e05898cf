"""D5: a leaked key must be revocable while the service runs, at once, with an audit trail."""

from __future__ import annotations

import time
from pathlib import Path

from tests.security.conftest import auth, event, running
from typer.testing import CliRunner

runner = CliRunner()


def test_d5_revoke_over_http_is_admin_only_immediate_and_audited(tmp_path: Path) -> None:
    with running(tmp_path) as (c, keys):
        leaked = keys["ingest"]
        leaked_id = leaked[3:].split("_", 1)[0]
        assert c.post("/v1/events", json=event("e1"), headers=auth(leaked)).status_code == 200
        # Not with an analyst or ingest key.
        for scope in ("ingest", "analyst"):
            r = c.post(f"/v1/keys/{leaked_id}/revoke", headers=auth(keys[scope]))
            assert r.status_code == 403, r.text
        assert c.post(f"/v1/keys/{leaked_id}/revoke").status_code == 401
        t0 = time.monotonic()
        r = c.post(f"/v1/keys/{leaked_id}/revoke", headers=auth(keys["admin"]))
        assert r.status_code == 200 and r.json()["revoked"] is True, r.text
        r = c.post("/v1/events", json=event("e2"), headers=auth(leaked))
        assert r.status_code == 401 and time.monotonic() - t0 < 1.0
        time.sleep(0.3)  # and after the watcher's refresh too
        assert c.post("/v1/events", json=event("e3"), headers=auth(leaked)).status_code == 401
        # idempotent; unknown ids are 404
        again = c.post(f"/v1/keys/{leaked_id}/revoke", headers=auth(keys["admin"]))
        assert again.status_code == 200 and again.json()["revoked_at"] == r.json().get("revoked_at",
                                                                                      again.json()["revoked_at"])
        assert c.post("/v1/keys/nope/revoke", headers=auth(keys["admin"])).status_code == 404
        admin_id = keys["admin"][3:].split("_", 1)[0]
        trail = c.app.state.store.query("SELECT action, key_id, by_key FROM key_audit ORDER BY audited_at")
        assert ("key_revoked", leaked_id, admin_id) in list(trail.iter_rows())


def test_d5_cli_revoke_while_serving_says_how(tmp_path: Path) -> None:
    import subprocess
    import sys

    with running(tmp_path) as (c, keys):
        kid = keys["analyst"][3:].split("_", 1)[0]
        # Another process, as an operator would run it: the service holds the store's lock.
        res = subprocess.run([sys.executable, "-m", "shopguard.cli.main", "keys", "revoke", kid, "--db",
                              str(tmp_path / "shop.duckdb")], capture_output=True, text=True, timeout=120)
        text = res.stdout + res.stderr
        assert res.returncode != 0
        assert f"/v1/keys/{kid}/revoke" in text and "--url" in text, text
        assert "Traceback" not in text
