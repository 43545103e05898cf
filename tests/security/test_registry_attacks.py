"""D8, D13: promoting versions the service cannot load; a registry pointer of the wrong type."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tests.security.conftest import auth, reseal, running, small_bundle
from typer.testing import CliRunner

from shopguard.cli.main import app as cli
from shopguard.models.registry import ModelRegistry

runner = CliRunner()


def _version_of(fs: dict) -> str:  # type: ignore[type-arg]
    from shopguard.features import FeatureSet

    data = dict(fs)
    data.pop("version", None)
    return str(FeatureSet.from_dict(data).version)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_bundle(tmp_path_factory.mktemp("b") / "model")


@pytest.fixture
def reg(tmp_path: Path, trained: Path) -> ModelRegistry:
    r = ModelRegistry(tmp_path / "registry")
    v = r.register(trained)
    r.promote(v.version)
    return r


def _broken(reg: ModelRegistry, trained: Path, how: str) -> str:
    v = reg.register(trained)
    d = v.path
    if how == "truncated_calibrator":
        text = (d / "calibrator.json").read_text()
        (d / "calibrator.json").write_text(text[: len(text) // 3])
    elif how == "foreign_detector":
        meta = json.loads((d / "detector" / "detector.json").read_text())
        meta["class"] = "collections.OrderedDict"
        (d / "detector" / "detector.json").write_text(json.dumps(meta))
    elif how == "invalid_policy":
        (d / "policy.json").write_text('{"thresholds": "high"}')
    elif how == "feature_set_changed":
        m = json.loads((d / "manifest.json").read_text())
        fs = m["feature_set"]
        # A different, still valid feature set: the last definition dropped (the model keeps its columns).
        fs["definitions"] = [x for x in fs["definitions"] if x["name"] not in m["columns"]][:-1] + \
            [x for x in fs["definitions"] if x["name"] in m["columns"]]
        fs["version"] = _version_of(fs)
        m["feature_set_version"] = fs["version"]
        (d / "manifest.json").write_text(json.dumps(m))
    reseal(d)
    return v.version


@pytest.mark.parametrize("how", ["truncated_calibrator", "foreign_detector", "invalid_policy", "feature_set_changed"])
def test_d8_promote_refuses_a_version_serve_could_not_load(reg: ModelRegistry, trained: Path, how: str) -> None:
    before = reg.current_version()
    version = _broken(reg, trained, how)
    res = runner.invoke(cli, ["models", "promote", version, "--registry", str(reg.root)])
    assert res.exit_code != 0, res.output
    assert reg.current_version() == before


def test_d8_a_good_version_is_promoted(reg: ModelRegistry, trained: Path) -> None:
    v = reg.register(trained)
    res = runner.invoke(cli, ["models", "promote", v.version, "--registry", str(reg.root)])
    assert res.exit_code == 0, res.output
    assert reg.current_version() == v.version


def test_d13_a_registry_pointer_of_the_wrong_type_is_a_recorded_refusal(tmp_path: Path, reg: ModelRegistry) -> None:
    with running(tmp_path, model=reg.root) as (c, keys):
        serving = c.app.state.engine.model.version
        assert serving
        for bad in ({"current": 123}, {"current": "../../etc"}, ["v0001"], {"current": "v0001", "history": 5}):
            reg.state_path.write_text(json.dumps(bad))
            r = c.post("/v1/models/reload", headers=auth(keys["admin"]))
            assert r.status_code == 200, (bad, r.text)
            assert r.json()["last_error"] and r.json()["version"] == serving, (bad, r.json())
            assert c.get("/readyz").json()["problems"]
            ok = c.post("/v1/events", json={"type": "view", "ts": "2024-03-09T12:00:00Z", "user_id": "u1",
                                             "item_id": "i1"}, headers=auth(keys["ingest"]))
            assert ok.status_code == 200, ok.text


def test_d13_registry_state_is_validated() -> None:
    from shopguard.errors import ModelError

    tmp = Path(__import__("tempfile").mkdtemp())
    try:
        r = ModelRegistry(tmp)
        (tmp / "registry.json").write_text('{"current": 123}')
        with pytest.raises(ModelError, match="current"):
            r.current_version()
    finally:
        shutil.rmtree(tmp)
