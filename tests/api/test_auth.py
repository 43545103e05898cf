"""API keys: required on every route but health checks, scoped, stored hashed, rate limited."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from tests.api.conftest import Service, event, make_keys, serve_in_thread

from shopguard.api import ServiceSettings
from shopguard.api.deps import KeyRing, create_key, revoke_key
from shopguard.errors import Unauthorized
from shopguard.store import EventStore

ROUTES = [("POST", "/v1/events"), ("GET", "/v1/decisions/x"), ("POST", "/v1/labels"), ("GET", "/v1/users/u/timeline"),
          ("GET", "/v1/cases"), ("POST", "/v1/cases/x/resolve"), ("GET", "/metrics"), ("POST", "/v1/keys"),
          ("POST", "/v1/models/reload"), ("GET", "/v1/rules")]


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("header", [None, "Bearer nope", "Basic abc", "Bearer sg_ffffffffffff_wrongsecret"])
def test_every_route_but_health_needs_a_valid_key(service: Service, method: str, path: str, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    r = httpx.request(method, service.url + path, headers=headers, json={})
    assert r.status_code == 401 and r.json()["field"] == "Authorization"
    assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("scope", "method", "path", "allowed"),
    [
        ("ingest", "POST", "/v1/events", True),
        ("ingest", "GET", "/v1/cases", False),
        ("ingest", "POST", "/v1/labels", False),
        ("analyst", "POST", "/v1/events", False),
        ("analyst", "GET", "/v1/cases", True),
        ("analyst", "POST", "/v1/keys", False),
        ("admin", "GET", "/v1/cases", True),
        ("admin", "POST", "/v1/events", True),
    ],
)
def test_scopes(service: Service, scope: str, method: str, path: str, allowed: bool) -> None:
    body = event(f"auth-{scope}-{path}") if path == "/v1/events" else {}
    r = httpx.request(method, service.url + path, headers=service.headers(scope), json=body)
    if allowed:
        assert r.status_code not in (401, 403), r.text
    else:
        assert r.status_code == 403 and r.json()["field"] == "scope"


def test_keys_are_stored_hashed_and_admin_can_create_them(service: Service) -> None:
    rows = service.store.query("SELECT key_id, key_hash FROM api_keys")
    for key in service.keys.values():
        secret = key.split("_", 2)[2]
        assert all(secret not in h and key not in h for h in rows["key_hash"].to_list())
    with service.client("admin") as c:
        r = c.post("/v1/keys", json={"scopes": ["analyst"], "name": "new"})
        assert r.status_code == 201
        new = r.json()["key"]
        assert c.post("/v1/keys", json={"scopes": ["root"]}).status_code == 422
    ok = httpx.get(service.url + "/v1/cases", headers={"Authorization": f"Bearer {new}"})
    assert ok.status_code == 200


def test_health_checks_need_no_key(service: Service) -> None:
    assert httpx.get(service.url + "/healthz").status_code == 200
    assert httpx.get(service.url + "/readyz").status_code == 200


def test_per_key_rate_limit(tmp_path: Path) -> None:
    db = tmp_path / "rl.duckdb"
    keys = make_keys(db)
    settings = ServiceSettings(db=db, rate_limit_per_s=2, rate_limit_burst=3)
    with serve_in_thread(settings, keys) as svc:
        with svc.client("analyst") as c:
            codes = [c.get("/v1/cases").status_code for _ in range(6)]
        assert codes[:3] == [200, 200, 200] and 429 in codes[3:]
        with svc.client("analyst") as c:
            r = c.get("/v1/cases")
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        with svc.client("admin") as c:  # another key has its own bucket
            assert c.get("/v1/cases").status_code == 200


def test_key_table_is_kept_in_memory_and_revocation_lands_at_refresh(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with EventStore(tmp_path / "keys.duckdb") as store:
        key, rec = create_key(store, "ingest", "mem")
        cold = KeyRing(store)
        assert cold.verify(f"Bearer {key}") == rec  # no copy of the table yet: looked up in the store
        ring = KeyRing(store)
        assert ring.refresh() == 1
        real_query = store.query

        def no_query(*_a: object, **_k: object) -> None:
            raise AssertionError("a request must not query the store")

        monkeypatch.setattr(store, "query", no_query)
        assert ring.verify(f"Bearer {key}") == rec
        for made_up in ("sg_0123456789ab_x", "sg_ffffffffffff_y"):  # refused from memory
            with pytest.raises(Unauthorized):
                ring.verify(f"Bearer {made_up}")
        with pytest.raises(Unauthorized):
            ring.verify(f"Bearer {key}x")  # right id, wrong secret
        monkeypatch.setattr(store, "query", real_query)
        revoke_key(store, rec.key_id)
        ring.refresh()
        with pytest.raises(Unauthorized):
            ring.verify(f"Bearer {key}")
