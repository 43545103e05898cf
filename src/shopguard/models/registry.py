"""Model registry: versioned model folders with a manifest, a current pointer, promote and rollback.

Layout of a registry root::

    models/
      registry.json          {"current": "v0002", "history": ["v0001", "v0002"]}
      v0001/manifest.json    version, created_at, checksums of every file, feature-set version,
      v0001/...              training window, metrics, detector; the model's own files
      v0002/...

A version is promoted only after its files match their checksums and its feature-set and event-schema
versions match what this code computes, so a corrupted or incompatible artifact is refused with a
clear error while the current one keeps serving. ``registry.json`` is replaced atomically
(write-then-rename), so a service watching it never reads half a file.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shopguard.errors import ModelError, NotFound
from shopguard.events.schema import SCHEMA_VERSION

MANIFEST = "manifest.json"
STATE = "registry.json"
_VERSION_RE = re.compile(r"^v(\d{4,})$")


def current_feature_set_version() -> str | None:
    """Version of the default feature set this code computes (None when the feature package is unavailable)."""
    try:
        from shopguard.features.definitions import FeatureSet
    except Exception:
        return None
    return str(FeatureSet().version)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative POSIX paths), the manifest excluded."""
    out: dict[str, str] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            out[p.relative_to(folder).as_posix()] = _sha256(p)
    return out


def write_manifest(folder: str | Path, *, version: str | None = None, feature_set_version: str | None = None,
                   training_window: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                   detector: str | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``manifest.json`` into a model folder, checksumming every file in it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotFound(f"model folder {folder} does not exist", field="model", value=str(folder))
    meta = _bundle_meta(folder)
    manifest = {
        "version": version or folder.name,
        "created_at": datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="seconds"),
        "schema_version": SCHEMA_VERSION,
        "feature_set_version": feature_set_version or meta.get("feature_set_version")
        or current_feature_set_version(),
        "training_window": training_window or meta.get("training_window") or {},
        "metrics": metrics or meta.get("metrics") or {},
        "detector": detector or meta.get("detector"),
        "files": checksums(folder),
        **(extra or {}),
    }
    manifest = sign(json.loads(json.dumps(manifest, default=str)))
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    return manifest


# ---------------------------------------------------------------------------------------------------
# Optional manifest signatures: checksums beside the files catch corruption, a signature catches re-sealing
# ---------------------------------------------------------------------------------------------------
SIGNING_KEY_ENV = "SHOPGUARD_MODEL_SIGNING_KEY"


def signing_key() -> bytes | None:
    """The HMAC key manifests are signed and checked with (``$SHOPGUARD_MODEL_SIGNING_KEY``), or None."""
    key = os.environ.get(SIGNING_KEY_ENV)
    if not key:
        return None
    if len(key) < 16:
        raise ModelError(f"${SIGNING_KEY_ENV} is shorter than 16 characters", field="signing_key")
    return key.encode()


def _signature(manifest: dict[str, Any], key: bytes) -> str:
    body = {k: v for k, v in manifest.items() if k != "signature"}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()
    return "hmac-sha256:" + hmac.new(key, canon, hashlib.sha256).hexdigest()


def sign(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest (as it reads back from JSON) with its signature when a signing key is configured."""
    key = signing_key()
    if key is None:
        return manifest
    return {**{k: v for k, v in manifest.items() if k != "signature"}, "signature": _signature(manifest, key)}


def check_signature(manifest: dict[str, Any], where: str) -> None:
    """With a signing key configured, refuse a manifest that is unsigned or whose signature does not match."""
    key = signing_key()
    if key is None:
        return
    sig = manifest.get("signature")
    if not isinstance(sig, str) or not hmac.compare_digest(sig, _signature(manifest, key)):
        raise ModelError(f"model {where} is {'unsigned' if not sig else 'not signed with this key'}: with "
                         f"${SIGNING_KEY_ENV} set, only folders written (or re-signed) by a holder of the key "
                         "are loaded", field="signature", value=where)


def _bundle_meta(folder: Path) -> dict[str, Any]:
    """What a trained bundle already says about itself (any JSON file DETECT writes), best effort."""
    for name in ("bundle.json", "model.json", "metadata.json"):
        p = folder / name
        if p.exists():
            try:
                data = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(data, dict):
                return data
    return {}


def read_manifest(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    p = folder / MANIFEST
    if not p.exists():
        raise ModelError(f"{folder} has no {MANIFEST}: register it with `shopguard models register`",
                         field="model", value=str(folder))
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{p} is unreadable: {exc}", field="model", value=str(p)) from None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise ModelError(f"{p} is not a model manifest (no 'files')", field="model", value=str(p))
    return data


def verify(folder: str | Path, *, feature_set_version: str | None = None) -> dict[str, Any]:
    """Check a model folder against its manifest and this code; returns the manifest or raises ModelError."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    check_signature(manifest, folder.name)
    for rel, digest in manifest["files"].items():
        p = folder / rel
        if not p.is_file():
            raise ModelError(f"model {folder.name} is corrupted: {rel} is missing", field="model", value=rel)
        actual = _sha256(p)
        if actual != digest:
            raise ModelError(f"model {folder.name} is corrupted: checksum of {rel} is {actual[:12]}…, "
                             f"manifest says {str(digest)[:12]}…", field="model", value=rel)
    if manifest.get("schema_version") not in (None, SCHEMA_VERSION):
        raise ModelError(f"model {folder.name} was trained on event schema {manifest['schema_version']}, "
                         f"this code uses {SCHEMA_VERSION}", field="schema_version", value=manifest["schema_version"])
    want = feature_set_version  # the caller (a running service) says which feature set it computes
    have = manifest.get("feature_set_version") or manifest.get("feature_version")
    if want is not None and have is not None and str(have) != str(want):
        raise ModelError(f"model {folder.name} needs feature set {have}, this code computes {want}",
                         field="feature_set_version", value=have)
    return manifest


@dataclass(frozen=True)
class ModelVersion:
    version: str
    path: Path
    manifest: dict[str, Any]
    current: bool = False

    def summary(self) -> dict[str, Any]:
        m = self.manifest
        det = m.get("detector")
        return {"version": self.version, "current": self.current, "created_at": m.get("created_at"),
                "model_version": m.get("model_version") or m.get("version"),
                "detector": det.get("name") if isinstance(det, dict) else det,
                "feature_set_version": m.get("feature_set_version") or m.get("feature_version"),
                "training_window": m.get("training_window") or m.get("split"), "metrics": m.get("metrics"),
                "path": str(self.path)}


class ModelRegistry:
    """Versioned models under one root folder, with a current pointer and its history."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # -- state -----------------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.root / STATE

    def _state(self) -> dict[str, Any]:
        if not self.state_path.exists():
            return {"current": None, "history": []}
        try:
            data = json.loads(self.state_path.read_text())
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ModelError(f"{self.state_path} is unreadable: {str(exc)[:200]}", field="registry") from None
        if not isinstance(data, dict):
            raise ModelError(f"{self.state_path} must be an object with 'current' and 'history'", field="registry")
        cur = data.get("current")
        hist = data.get("history", [])
        # The pointer names a version folder under the root, nothing else (no paths, no other types).
        if cur is not None and not (isinstance(cur, str) and _VERSION_RE.match(cur)):
            raise ModelError(f"{self.state_path}: 'current' must be a version such as \"v0002\", got {cur!r}"[:300],
                             field="current", value=repr(cur)[:100])
        if not isinstance(hist, list) or not all(isinstance(h, str) and _VERSION_RE.match(h) for h in hist):
            raise ModelError(f"{self.state_path}: 'history' must be a list of versions", field="history")
        return {"current": cur, "history": list(hist)}

    def _write_state(self, state: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.state_path)  # atomic: a watcher sees the old or the new file, never half

    def current_version(self) -> str | None:
        return self._state()["current"]

    def current_path(self) -> Path | None:
        v = self.current_version()
        return None if v is None else self.root / v

    # -- listing ---------------------------------------------------------------------------------------
    def versions(self) -> list[ModelVersion]:
        if not self.root.exists():
            return []
        cur = self.current_version()
        out = []
        for p in sorted(self.root.iterdir()):
            if p.is_dir() and (p / MANIFEST).exists():
                try:
                    m = json.loads((p / MANIFEST).read_text())
                except (OSError, json.JSONDecodeError):
                    m = {"error": "unreadable manifest"}
                out.append(ModelVersion(p.name, p, m, p.name == cur))
        return out

    def _next_version(self) -> str:
        nums = [int(m.group(1)) for p in (self.root.iterdir() if self.root.exists() else [])
                if (m := _VERSION_RE.match(p.name))]
        return f"v{(max(nums) + 1 if nums else 1):04d}"

    # -- changing --------------------------------------------------------------------------------------
    def register(self, source: str | Path, **manifest_fields: Any) -> ModelVersion:
        """Copy a trained model folder into the registry as the next version and write its manifest."""
        src = Path(source)
        if not src.is_dir():
            raise NotFound(f"model folder {src} does not exist", field="model", value=str(src))
        version = self._next_version()
        dest = self.root / version
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{version}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        shutil.copytree(src, tmp)
        if (tmp / MANIFEST).exists():
            # A trained bundle carries its own checksummed manifest (models.bundle): keep and check it.
            try:
                manifest = verify(tmp)
            except ModelError:
                shutil.rmtree(tmp)
                raise
        else:
            manifest = write_manifest(tmp, version=version, **manifest_fields)
        os.replace(tmp, dest)
        return ModelVersion(version, dest, manifest, False)

    def promote(self, version: str, *, feature_set_version: str | None = None) -> ModelVersion:
        """Make ``version`` current after verifying it; the current one stays if verification fails."""
        path = self.root / version
        if not path.is_dir():
            known = ", ".join(v.version for v in self.versions()) or "none"
            raise NotFound(f"no model version {version!r} in {self.root} (known: {known})", field="version",
                           value=version)
        manifest = verify(path, feature_set_version=feature_set_version)
        state = self._state()
        if state["current"] != version:
            state["history"].append(version)
            state["current"] = version
            self._write_state(state)
        return ModelVersion(version, path, manifest, True)

    def rollback(self) -> ModelVersion:
        """Go back to the version promoted before the current one."""
        state = self._state()
        hist = state["history"]
        if len(hist) < 2:
            raise ModelError("nothing to roll back to: fewer than two promotions recorded", field="version")
        hist.pop()
        prev = hist[-1]
        manifest = verify(self.root / prev)
        state["current"] = prev
        self._write_state(state)
        return ModelVersion(prev, self.root / prev, manifest, True)


def is_registry(path: str | Path) -> bool:
    """A registry root (has registry.json or versioned sub-folders), as opposed to one model folder."""
    p = Path(path)
    return (p / STATE).exists() or any(_VERSION_RE.match(c.name) and c.is_dir() for c in p.iterdir()) \
        if p.is_dir() else False
