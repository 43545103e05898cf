"""D9: a model folder must never run code when loaded, even when its manifest was re-sealed."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import joblib
import numpy as np
import pytest
from tests.security.conftest import reseal, small_bundle

from shopguard.errors import ModelError
from shopguard.models.bundle import ModelBundle
from shopguard.models.calibration import Calibrator


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))  # creating the file proves code ran


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_bundle(tmp_path_factory.mktemp("m") / "model")


def _copy(model: Path, dst: Path) -> Path:
    import shutil

    return Path(shutil.copytree(model, dst))


def test_d9_the_calibrator_is_json_and_round_trips(model: Path) -> None:
    assert (model / "calibrator.json").exists() and not (model / "calibrator.joblib").exists()
    data = json.loads((model / "calibrator.json").read_text())
    assert data["kind"] in ("isotonic", "platt", "percentile")
    b = ModelBundle.load(model)
    s = np.linspace(-5, 5, 50)
    assert np.all(np.diff(b.calibrator.transform(s)) >= -1e-12)


@pytest.mark.parametrize("kind", ["isotonic", "platt", "percentile"])
def test_d9_json_calibrator_matches_the_fitted_one(kind: str) -> None:
    rng = np.random.default_rng(1)
    s = rng.normal(size=2000)
    y = (rng.random(2000) < 1 / (1 + np.exp(-3 * s))).astype(int)
    cal = Calibrator(method=kind).fit(s, None if kind == "percentile" else y)
    back = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    probe = np.linspace(-4, 4, 101)
    np.testing.assert_allclose(back.transform(probe), cal.transform(probe), rtol=0, atol=1e-12)


def test_d9_a_pickled_calibrator_is_refused_without_running_it(model: Path, tmp_path: Path) -> None:
    d = _copy(model, tmp_path / "evil")
    marker = tmp_path / "pwned"
    (d / "calibrator.json").unlink()
    joblib.dump(_Evil(marker), d / "calibrator.joblib")
    reseal(d)
    with pytest.raises(ModelError, match="retrain"):
        ModelBundle.load(d)
    assert not marker.exists()


def test_d9_a_saved_model_folder_holds_no_pickle(model: Path) -> None:
    files = [p for p in model.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".joblib", ".pkl", ".pickle")]
    for p in files:  # whatever the name: no file starts with a pickle protocol header
        assert not p.read_bytes()[:1] == b"\x80", p
    names = {p.name for p in (model / "detector").iterdir()}
    assert {"detector.json", "state.json", "state.npz", "lgb_0.txt"} <= names


@pytest.mark.parametrize("name", ["detector/state.joblib", "detector/extra.pkl", "calibrator.pickle",
                                  "detector/sub/x.joblib"])
def test_d9_a_resealed_folder_with_a_malicious_pickle_never_runs_it(model: Path, tmp_path: Path,
                                                                     name: str) -> None:
    """The regression for D9 without pickles: a malicious pickle dropped anywhere in the folder and
    re-sealed is refused with 'retrain' before anything is read; the pickle is never opened."""
    d = _copy(model, tmp_path / "evil2")
    marker = tmp_path / "pwned2"
    target = d / name
    target.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump({"booster_": _Evil(marker)}, target)
    reseal(d)
    with pytest.raises(ModelError, match="retrain"):
        ModelBundle.load(d)
    if name.startswith("detector/"):
        from shopguard.models.base import load_detector

        with pytest.raises(ModelError, match="retrain"):
            load_detector(d / "detector")
    assert not marker.exists()


def test_d9_a_pickle_disguised_as_the_state_files_is_never_unpickled(model: Path, tmp_path: Path) -> None:
    d = _copy(model, tmp_path / "disguised")
    marker = tmp_path / "pwned3"
    (d / "detector" / "state.npz").write_bytes(pickle.dumps({"x": _Evil(marker)}))
    reseal(d)
    with pytest.raises(ModelError):
        ModelBundle.load(d)
    # an npz holding an object array (a pickle inside the zip) is refused by allow_pickle=False
    np.savez(d / "detector" / "state.npz", a0=np.array([_Evil(marker)], dtype=object))
    reseal(d)
    with pytest.raises(ModelError):
        ModelBundle.load(d)
    assert not marker.exists()


@pytest.mark.parametrize("cls", ["os:system", "subprocess:Popen", "builtins:eval", "shopguard.models.base:Path",
                                 "sklearn.utils:__builtins__"])
def test_d9_state_json_naming_a_foreign_class_is_refused(model: Path, tmp_path: Path, cls: str) -> None:
    d = _copy(model, tmp_path / "foreign_state")
    state = json.loads((d / "detector" / "state.json").read_text())
    state["state"]["encoder_"] = {"__sg__": "obj", "class": cls, "dict": {}}
    state["state"]["extra_"] = {"__sg__": "func", "module": cls.split(":")[0], "name": cls.split(":")[1]}
    (d / "detector" / "state.json").write_text(json.dumps(state))
    reseal(d)
    with pytest.raises(ModelError, match="may not contain|cannot be rebuilt"):
        ModelBundle.load(d)


def test_d9_state_json_cannot_point_outside_the_folder(model: Path, tmp_path: Path) -> None:
    d = _copy(model, tmp_path / "escape")
    state = json.loads((d / "detector" / "state.json").read_text())
    state["state"]["booster_"]["file"] = "../policy.json"
    (d / "detector" / "state.json").write_text(json.dumps(state))
    reseal(d)
    with pytest.raises(ModelError, match="outside the folder"):
        ModelBundle.load(d)


def test_d9_a_foreign_detector_class_is_never_imported(model: Path, tmp_path: Path) -> None:
    d = _copy(model, tmp_path / "foreign")
    meta = json.loads((d / "detector" / "detector.json").read_text())
    meta["class"] = "this.Detector"  # importing it prints the Zen of Python: any import runs code
    (d / "detector" / "detector.json").write_text(json.dumps(meta))
    reseal(d)
    with pytest.raises(ModelError, match="not a shopguard detector"):
        ModelBundle.load(d)


def test_d9_malformed_json_calibrator_is_a_model_error(model: Path, tmp_path: Path) -> None:
    d = _copy(model, tmp_path / "trunc")
    text = (d / "calibrator.json").read_text()
    (d / "calibrator.json").write_text(text[: len(text) // 2])
    reseal(d)
    with pytest.raises(ModelError, match="calibrator"):
        ModelBundle.load(d)


def test_d9_signed_manifests_refuse_a_resealed_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shopguard.models.registry import ModelRegistry

    monkeypatch.setenv("SHOPGUARD_MODEL_SIGNING_KEY", "k" * 32)
    signed = small_bundle(tmp_path / "signed")
    assert json.loads((signed / "manifest.json").read_text())["signature"].startswith("hmac-sha256:")
    ModelBundle.load(signed)
    reg = ModelRegistry(tmp_path / "reg")
    reg.promote(reg.register(signed).version)  # registry verification checks the signature too
    # An attacker edits a file and re-seals the checksums without the key.
    d = _copy(signed, tmp_path / "resealed")
    (d / "policy.json").write_text((d / "policy.json").read_text().replace("block", "allow"))
    reseal(d)
    with pytest.raises(ModelError, match="not signed with this key"):
        ModelBundle.load(d)
    # A folder written without the key is refused while a key is configured.
    monkeypatch.delenv("SHOPGUARD_MODEL_SIGNING_KEY")
    unsigned = small_bundle(tmp_path / "unsigned")
    monkeypatch.setenv("SHOPGUARD_MODEL_SIGNING_KEY", "k" * 32)
    with pytest.raises(ModelError, match="unsigned"):
        ModelBundle.load(unsigned)
