"""Model registry: versions with checksummed manifests, promote, rollback, refusing bad artifacts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from shopguard.errors import ModelError, NotFound
from shopguard.models.registry import (
    MANIFEST,
    ModelRegistry,
    is_registry,
    read_manifest,
    verify,
    write_manifest,
)


def _model_dir(root: Path, name: str, payload: str = "weights") -> Path:
    d = root / name
    (d / "detector").mkdir(parents=True)
    (d / "detector" / "state.bin").write_text(payload)
    (d / "policy.json").write_text(json.dumps({"threshold": 0.5}))
    return d


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "models")


def test_register_writes_manifest_with_checksums(registry: ModelRegistry, tmp_path: Path) -> None:
    src = _model_dir(tmp_path, "trained")
    v = registry.register(src, feature_set_version="fs1", training_window={"start": "2024-01-01", "end": "2024-02-01"},
                          metrics={"roc_auc": 0.9}, detector="lightgbm")
    assert v.version == "v0001" and (v.path / MANIFEST).exists()
    m = read_manifest(v.path)
    assert set(m["files"]) == {"detector/state.bin", "policy.json"}
    assert m["feature_set_version"] == "fs1" and m["metrics"]["roc_auc"] == 0.9
    assert registry.register(src).version == "v0002"
    assert [x.version for x in registry.versions()] == ["v0001", "v0002"]
    assert is_registry(registry.root) and not is_registry(src)


def test_promote_and_rollback(registry: ModelRegistry, tmp_path: Path) -> None:
    a = registry.register(_model_dir(tmp_path, "a"))
    b = registry.register(_model_dir(tmp_path, "b", "other"))
    assert registry.current_version() is None
    registry.promote(a.version)
    registry.promote(b.version)
    assert registry.current_version() == "v0002"
    assert [v.version for v in registry.versions() if v.current] == ["v0002"]
    assert registry.rollback().version == "v0001"
    assert registry.current_version() == "v0001"
    with pytest.raises(ModelError, match="nothing to roll back"):
        registry.rollback()


def test_corrupted_version_is_refused_and_current_stays(registry: ModelRegistry, tmp_path: Path) -> None:
    good = registry.register(_model_dir(tmp_path, "good"))
    bad = registry.register(_model_dir(tmp_path, "bad"))
    registry.promote(good.version)
    (bad.path / "detector" / "state.bin").write_text("tampered")
    with pytest.raises(ModelError, match=r"corrupted: checksum of detector/state.bin"):
        registry.promote(bad.version)
    (bad.path / "detector" / "state.bin").write_text("weights")
    (bad.path / "policy.json").unlink()
    with pytest.raises(ModelError, match="policy.json is missing"):
        registry.promote(bad.version)
    assert registry.current_version() == good.version


def test_incompatible_feature_set_and_schema_are_refused(registry: ModelRegistry, tmp_path: Path) -> None:
    v = registry.register(_model_dir(tmp_path, "m"), feature_set_version="old")
    with pytest.raises(ModelError, match="needs feature set old"):
        registry.promote(v.version, feature_set_version="new")
    m = read_manifest(v.path)
    m["schema_version"] = 99
    (v.path / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ModelError, match="event schema 99"):
        verify(v.path)


def test_unknown_version_and_missing_manifest(registry: ModelRegistry, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no model version 'v0042'"):
        registry.promote("v0042")
    plain = _model_dir(tmp_path, "plain")
    with pytest.raises(ModelError, match="has no manifest.json"):
        verify(plain)
    write_manifest(plain)
    assert verify(plain)["version"] == "plain"


def test_bundle_manifest_is_kept(registry: ModelRegistry, tmp_path: Path) -> None:
    # A trained bundle writes its own checksummed manifest; the registry keeps it as is.
    src = _model_dir(tmp_path, "bundle")
    write_manifest(src, extra={"format": "shopguard-model", "model_version": "lgbm-1"})
    v = registry.register(src)
    assert read_manifest(v.path)["model_version"] == "lgbm-1"
    assert v.summary()["model_version"] == "lgbm-1"


def test_cli_register_promote_list_rollback(tmp_path: Path) -> None:
    from tests.security.conftest import small_bundle
    from typer.testing import CliRunner

    from shopguard.cli.main import app

    runner = CliRunner()
    root = tmp_path / "models"
    # Promote loads a version exactly as the service would: these must be real model folders.
    for name in ("a", "b"):
        res = runner.invoke(app, ["models", "register", str(small_bundle(tmp_path / name)), "--registry", str(root),
                                  "--promote"])
        assert res.exit_code == 0, res.output
    fake = runner.invoke(app, ["models", "register", str(_model_dir(tmp_path, "fake")), "--registry", str(root),
                               "--promote"])
    assert fake.exit_code == 2 and ModelRegistry(root).current_version() == "v0002", fake.output
    shutil.rmtree(root / "v0003")
    listed = runner.invoke(app, ["models", "list", "--registry", str(root), "--json"])
    rows = json.loads(listed.stdout)
    assert [r["version"] for r in rows if r["current"]] == ["v0002"]
    assert runner.invoke(app, ["models", "rollback", "--registry", str(root)]).exit_code == 0
    assert ModelRegistry(root).current_version() == "v0001"
    (root / "v0002" / "policy.json").write_text("{}")
    res = runner.invoke(app, ["models", "promote", "v0002", "--registry", str(root)])
    assert res.exit_code == 2 and "checksum" in res.output
    assert ModelRegistry(root).current_version() == "v0001"
