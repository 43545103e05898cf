"""A real uvicorn server on 127.0.0.1 (free port) for the API tests, with keys, rules and a model registry.

The session server runs in a thread of the test process (fast to start, and its store is reachable for
assertions through ``app.state``); the crash test starts its own server as a subprocess to kill it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml

from shopguard.api import ServiceSettings, create_app
from shopguard.api.deps import create_key
from shopguard.store import EventStore

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2024, 3, 9, 12, 0, 0)
PROBE_RULE = {"name": "dup_probe", "when": "attrs.probe == 1 and user_failed_payments_10m == 3", "action": "review",
              "reason": "PROBE", "priority": 1000}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    url: str
    keys: dict[str, str]
    app: Any
    db: Path
    registry: Path | None = None
    rules: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def headers(self, scope: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[scope]}"}

    def client(self, scope: str = "admin") -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers(scope), timeout=30)

    @property
    def store(self) -> EventStore:
        self.app.state.engine.flush()  # journalled events into the store before a test looks
        return self.app.state.store  # type: ignore[no-any-return]

    @property
    def engine(self) -> Any:
        return self.app.state.engine


def make_keys(db: Path) -> dict[str, str]:
    with EventStore(db) as store:
        return {scope: create_key(store, scope, f"test {scope}")[0] for scope in ("ingest", "analyst", "admin")}


@contextmanager
def serve_in_thread(settings: ServiceSettings, keys: dict[str, str], **extra: Any) -> Iterator[Service]:
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield Service(f"http://127.0.0.1:{port}", keys, app, settings.db, settings.model, settings.rules, extra)
    finally:
        server.should_exit = True
        thread.join(15)


def event(eid: str, *, user: str = "u1", seconds: float = 0, **fields: Any) -> dict[str, Any]:
    """A valid payment event at T0 + seconds (override any field)."""
    base = {"event_id": eid, "type": "pay", "ts": (T0 + timedelta(seconds=seconds)).isoformat() + "Z",
            "user_id": user, "amount": 25.0, "status": "success", "payment_instrument": f"card_{user}",
            "device_id": f"dev_{user}", "ip": "10.0.0.1"}
    base.update(fields)
    return base


@pytest.fixture(scope="session")
def trained_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path] | None:
    """Two small real model bundles (LightGBM, HBOS) trained on a simulated shop; None if training is unavailable."""
    try:
        from shopguard.evaluation.splits import SplitConfig
        from shopguard.events.simulate import SimulationConfig, simulate_shop
        from shopguard.pipeline import train
    except ImportError:
        return None
    root = tmp_path_factory.mktemp("models")
    shop = simulate_shop(SimulationConfig(users=150, days=6, seed=3))
    with EventStore(root / "train.duckdb") as store:
        shop.to_store(store)
        split = SplitConfig(delay_days=1, test_days=1)
        train(store, root / "lgbm", detector="lightgbm", split=split)
        train(store, root / "hbos", detector="hbos", split=split)
    return root / "lgbm", root / "hbos"


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory, trained_models: tuple[Path, Path] | None) -> Iterator[Service]:
    """The shared server: example rules (+ a probe rule), a deny-listed user, registry with v0001 promoted."""
    from shopguard.models.registry import ModelRegistry

    root = tmp_path_factory.mktemp("service")
    rules = yaml.safe_load((REPO / "examples" / "rules.yaml").read_text())
    rules["rules"].append(PROBE_RULE)
    rules["lists"]["deny"]["users"] = ["u_denied"]
    rules_path = root / "rules.yaml"
    rules_path.write_text(yaml.safe_dump(rules))
    registry = None
    if trained_models is not None:
        reg = ModelRegistry(root / "models")
        v1 = reg.register(trained_models[0])
        reg.register(trained_models[1])
        reg.promote(v1.version)
        registry = reg.root
    db = root / "shop.duckdb"
    keys = make_keys(db)
    settings = ServiceSettings(db=db, model=registry, rules=rules_path, watch_every_s=0.2, max_body_bytes=64_000,
                               max_batch=50)
    with serve_in_thread(settings, keys) as svc:
        yield svc
