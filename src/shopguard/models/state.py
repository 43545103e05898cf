"""A detector's learned state on disk without pickles: loading it never runs code from the files.

``save_state(folder, state)`` writes a dict of learned attributes as

- ``state.json``: the structure (dicts, lists, numbers, strings) with tagged placeholders;
- ``state.npz``: every numpy array (and torch tensor), read back with ``allow_pickle=False``;
- ``lgb_<n>.txt``: each LightGBM booster as its text model (``Booster(model_str=...)``);
- ``frame_<n>.arrow``: each Polars frame as Arrow IPC.

Objects are stored as their class name and attribute dict and rebuilt with ``cls.__new__`` plus the
attributes: no constructor and no pickle hook runs; the only functions a state may name are those in
``FUNCTIONS`` (a vectorizer's tokenizer). Only classes of scikit-learn, PyOD, SciPy's sparse
matrices and shopguard's own modules are rebuilt, and only when their ``__new__`` is ``object.__new__``;
any other name in ``state.json`` is refused with ``ModelError``. scikit-learn's Cython ``Tree`` is the
one exception to the attribute dict: its ``__getstate__`` is plain numbers and numpy arrays (a structured
node array and the values), and it is rebuilt with ``Tree(n_features, n_classes, n_outputs).__setstate__``
from those arrays, so tree ensembles (Isolation Forest) score exactly as fitted. A shopguard class that
defines its own ``__getstate__``/``__setstate__`` (``MiniLMClassifier``: tensors only) goes through them.

A folder holding a ``.joblib``, ``.pkl`` or ``.pickle`` file is refused (``refuse_pickles``): it was
written by an older shopguard, and the answer is to retrain.
"""

from __future__ import annotations

import importlib
import io
import json
import types
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from shopguard.errors import ModelError

STATE_JSON = "state.json"
STATE_NPZ = "state.npz"
STATE_FORMAT = 1
PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
TAG = "__sg__"
# Classes that may be rebuilt from a state file (module prefixes); functions only from shopguard.
OBJECT_MODULES = ("sklearn", "pyod", "scipy.sparse", "shopguard.models", "shopguard.features")
# Functions a fitted model may hold (a vectorizer's tokenizer), by name: nothing else is ever looked up.
FUNCTIONS = frozenset({"shopguard.models.text.ngrams:tokenize"})
_TYPES = {"float": float, "int": int, "str": str, "bool": bool, "object": object, "complex": complex}


def refuse_pickles(folder: Path, what: str = "model") -> None:
    """``ModelError`` when ``folder`` (recursively) holds a pickle file: such files are never loaded."""
    if not folder.is_dir():
        return
    found = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)
    if found:
        rel = found[0].relative_to(folder)
        raise ModelError(f"{what} at {folder} holds a pickle ({rel}), which could run code when loaded and is "
                         "never read: the folder was written by an older shopguard or tampered with; retrain "
                         "it with this shopguard (`shopguard train --out DIR`)", field="model", value=str(found[0]))


def _allowed(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == m or module.startswith(m + ".") for m in prefixes)


# ------------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------------
class _Writer:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.arrays: dict[str, np.ndarray] = {}
        self.files = 0

    def _array(self, a: np.ndarray) -> str:
        key = f"a{len(self.arrays)}"
        self.arrays[key] = a
        return key

    def enc(self, v: Any, where: str) -> Any:  # noqa: C901, PLR0911, PLR0912 - one branch per kind
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, int) and type(v) is int:
            return v
        if isinstance(v, float) and type(v) is float:
            return v if np.isfinite(v) else {TAG: "float", "v": repr(v)}
        if isinstance(v, dict):
            if all(isinstance(k, str) for k in v) and TAG not in v and type(v) is dict:
                return {k: self.enc(x, f"{where}[{k!r}]") for k, x in v.items()}
            kind = "defaultdict" if type(v).__name__ == "defaultdict" else "dict"
            return {TAG: kind, "items": [[self.enc(k, where), self.enc(x, f"{where}[{k!r}]")] for k, x in v.items()]}
        if type(v) is list:
            return [self.enc(x, f"{where}[{i}]") for i, x in enumerate(v)]
        if type(v) in (tuple, set, frozenset):
            items = sorted(v, key=repr) if isinstance(v, (set, frozenset)) else v
            return {TAG: type(v).__name__, "items": [self.enc(x, f"{where}[{i}]") for i, x in enumerate(items)]}
        if isinstance(v, np.ndarray):
            return self._ndarray(v, where)
        if isinstance(v, np.generic):
            return {TAG: "npscalar", "key": self._array(np.asarray(v))}
        if isinstance(v, np.dtype):
            return {TAG: "dtype", "descr": self.enc(np.lib.format.dtype_to_descr(v), where)}
        if isinstance(v, type):
            return self._type(v, where)
        if isinstance(v, datetime):
            return {TAG: "datetime", "v": v.isoformat()}
        if isinstance(v, date):
            return {TAG: "date", "v": v.isoformat()}
        if isinstance(v, timedelta):
            return {TAG: "timedelta", "v": v.total_seconds()}
        mod = type(v).__module__
        if mod.startswith("lightgbm") and type(v).__name__ == "Booster":
            name = f"lgb_{self.files}.txt"
            self.files += 1
            (self.folder / name).write_text(v.model_to_string(num_iteration=-1))
            return {TAG: "lgb", "file": name, "best_iteration": int(getattr(v, "best_iteration", 0) or 0)}
        if mod.startswith("polars"):
            import polars as pl

            if isinstance(v, (pl.DataFrame, pl.Series)):
                name = f"frame_{self.files}.arrow"
                self.files += 1
                frame = v.to_frame() if isinstance(v, pl.Series) else v
                frame.write_ipc(self.folder / name)
                return {TAG: "series" if isinstance(v, pl.Series) else "frame", "file": name}
        if mod.startswith("torch") and type(v).__name__ in ("Tensor", "Parameter"):
            t = v.detach().cpu()
            dtype = str(t.dtype).removeprefix("torch.")
            arr = (t.float() if dtype == "bfloat16" else t).numpy()
            return {TAG: "tensor", "key": self._array(arr), "dtype": dtype}
        if mod == "sklearn.tree._tree" and type(v).__name__ == "Tree":
            return {TAG: "sktree", "n_features": int(v.n_features), "n_classes": self._array(np.asarray(v.n_classes)),
                    "n_outputs": int(v.n_outputs), "state": self.enc(v.__getstate__(), where)}
        if mod == "numpy.random.mtrand" and type(v).__name__ == "RandomState":
            return {TAG: "randomstate", "state": self.enc(v.get_state(legacy=False), where)}
        if isinstance(v, (types.FunctionType, types.BuiltinFunctionType)):
            fmod, qual = getattr(v, "__module__", "") or "", getattr(v, "__qualname__", "")
            if f"{fmod}:{qual}" in FUNCTIONS:
                return {TAG: "func", "module": fmod, "name": qual}
            raise TypeError(f"{where}: function {fmod}.{qual} cannot be stored without a pickle (add it to "
                            "shopguard.models.state.FUNCTIONS if a model must hold it)")
        cls = type(v)
        if not _allowed(cls.__module__, OBJECT_MODULES) or cls.__new__ is not object.__new__:
            raise TypeError(f"{where}: {cls.__module__}.{cls.__qualname__} cannot be stored without a pickle")
        own_state = cls.__module__.startswith("shopguard.") and "__setstate__" in vars(cls)
        attrs = v.__getstate__() if own_state else vars(v)
        return {TAG: "obj", "class": f"{cls.__module__}:{cls.__qualname__}", "setstate": own_state,
                "dict": self.enc(dict(attrs), f"{where}.")}

    def _ndarray(self, v: np.ndarray, where: str) -> Any:
        if v.dtype.hasobject:
            if v.dtype == object and all(isinstance(x, str) for x in v.flat):
                return {TAG: "strarray", "key": self._array(v.astype(str)) if v.size else self._array(
                    np.zeros(v.shape, dtype="<U1"))}
            return {TAG: "objarray", "shape": list(v.shape),
                    "items": [self.enc(x, f"{where}[{i}]") for i, x in enumerate(v.flat)]}
        return {TAG: "ndarray", "key": self._array(v)}

    def _type(self, v: type, where: str) -> Any:
        if v.__module__ == "builtins" and v.__name__ in _TYPES:
            return {TAG: "type", "name": v.__name__}
        if issubclass(v, np.generic):
            return {TAG: "nptype", "name": np.dtype(v).str}
        raise TypeError(f"{where}: type {v.__module__}.{v.__qualname__} cannot be stored without a pickle")


def save_state(folder: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (learned attributes) into ``folder`` as JSON, npz, LightGBM text and Arrow files."""
    w = _Writer(folder)
    tree = {k: w.enc(v, k) for k, v in state.items()}
    np.savez(folder / STATE_NPZ, **w.arrays)
    (folder / STATE_JSON).write_text(json.dumps({"format": STATE_FORMAT, "state": tree}))


# ------------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------------
class _Reader:
    def __init__(self, folder: Path, arrays: Any) -> None:
        self.folder = folder
        self.arrays = arrays

    def _file(self, name: Any) -> Path:
        if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
            raise ModelError(f"{self.folder}/{STATE_JSON} names a file outside the folder: {name!r}", field="model")
        return self.folder / name

    def _arr(self, key: Any) -> np.ndarray:
        return np.asarray(self.arrays[str(key)])

    def dec(self, v: Any) -> Any:  # noqa: C901, PLR0911, PLR0912 - one branch per tag
        if isinstance(v, list):
            return [self.dec(x) for x in v]
        if not isinstance(v, dict):
            return v
        tag = v.get(TAG)
        if tag is None:
            return {k: self.dec(x) for k, x in v.items()}
        if tag == "float":
            return float(v["v"])
        if tag in ("dict", "defaultdict"):
            out = {self._key(self.dec(k)): self.dec(x) for k, x in v["items"]}
            if tag == "defaultdict":
                from collections import defaultdict

                return defaultdict(dict, out)  # lightgbm's best_score; the factory is not stored
            return out
        if tag in ("tuple", "set", "frozenset"):
            return {"tuple": tuple, "set": set, "frozenset": frozenset}[tag](self.dec(x) for x in v["items"])
        if tag == "ndarray":
            return self._arr(v["key"])
        if tag == "strarray":
            return self._arr(v["key"]).astype(object)
        if tag == "objarray":
            out = np.empty(len(v["items"]), dtype=object)
            for i, x in enumerate(v["items"]):
                out[i] = self.dec(x)
            return out.reshape([int(s) for s in v["shape"]])
        if tag == "npscalar":
            return self._arr(v["key"])[()]
        if tag == "dtype":
            return np.lib.format.descr_to_dtype(self.dec(v["descr"]))
        if tag == "type":
            return _TYPES[v["name"]]
        if tag == "nptype":
            return np.dtype(str(v["name"])).type
        if tag == "datetime":
            return datetime.fromisoformat(v["v"])
        if tag == "date":
            return date.fromisoformat(v["v"])
        if tag == "timedelta":
            return timedelta(seconds=float(v["v"]))
        if tag == "lgb":
            import lightgbm as lgb

            booster = lgb.Booster(model_str=self._file(v["file"]).read_text())
            booster.best_iteration = int(v.get("best_iteration", 0))
            return booster
        if tag in ("frame", "series"):
            import polars as pl

            frame = pl.read_ipc(io.BytesIO(self._file(v["file"]).read_bytes()))  # no map of a replaceable file
            return frame.to_series() if tag == "series" else frame
        if tag == "tensor":
            import torch

            t = torch.from_numpy(np.array(self._arr(v["key"])))
            return t.to(getattr(torch, str(v["dtype"]))) if str(v["dtype"]) == "bfloat16" else t
        if tag == "sktree":
            from sklearn.tree._tree import Tree

            tree = Tree(int(v["n_features"]), self._arr(v["n_classes"]).astype(np.intp), int(v["n_outputs"]))
            tree.__setstate__(self.dec(v["state"]))
            return tree
        if tag == "randomstate":
            rs = np.random.RandomState()
            rs.set_state(self.dec(v["state"]))
            return rs
        if tag == "func":
            module, name = str(v["module"]), str(v["name"])
            if f"{module}:{name}" not in FUNCTIONS:
                raise ModelError(f"{self.folder}/{STATE_JSON} asks for {module}.{name}, which a model file may not "
                                 "contain: the folder was tampered with or comes from elsewhere; retrain or restore "
                                 "it", field="model", value=f"{module}.{name}")
            return self._resolve(module, name, (module,), want_class=False)
        if tag == "obj":
            module, _, name = str(v["class"]).partition(":")
            cls = self._resolve(module, name, OBJECT_MODULES, want_class=True)
            obj = cls.__new__(cls)
            attrs = self.dec(v["dict"])
            if not isinstance(attrs, dict):
                raise ModelError(f"{self.folder}/{STATE_JSON}: {module}.{name} has no attribute dict", field="model")
            if v.get("setstate"):
                if not (module.startswith("shopguard.") and "__setstate__" in vars(cls)):
                    raise ModelError(f"{module}.{name} has no state hook of its own", field="model")
                obj.__setstate__(attrs)
            else:
                obj.__dict__.update(attrs)
            return obj
        raise ModelError(f"{self.folder}/{STATE_JSON} holds an unknown kind of value {tag!r}", field="model")

    @staticmethod
    def _key(k: Any) -> Any:
        return tuple(k) if isinstance(k, list) else k

    def _resolve(self, module: str, name: str, prefixes: tuple[str, ...], *, want_class: bool) -> Any:
        if not _allowed(module, prefixes) or not name or any(p.startswith("__") for p in name.split(".")):
            raise ModelError(f"{self.folder}/{STATE_JSON} asks for {module}.{name}, which a model file may not "
                             "contain: the folder was tampered with or comes from elsewhere; retrain or restore it",
                             field="model", value=f"{module}.{name}")
        obj: Any = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
        ok = (isinstance(obj, type) and obj.__new__ is object.__new__) if want_class else (
            callable(obj) and not isinstance(obj, type) and getattr(obj, "__module__", "") == module)
        if not ok:
            raise ModelError(f"{self.folder}/{STATE_JSON}: {module}.{name} cannot be rebuilt from a state file",
                             field="model", value=f"{module}.{name}")
        return obj


def load_state(folder: Path) -> dict[str, Any]:
    """Read what ``save_state`` wrote; ``ModelError`` when the folder holds a pickle or a refused name."""
    refuse_pickles(folder, "detector")
    meta = json.loads((folder / STATE_JSON).read_text())
    if not isinstance(meta, dict) or meta.get("format") != STATE_FORMAT or not isinstance(meta.get("state"), dict):
        raise ModelError(f"{folder}/{STATE_JSON} is not a shopguard state file (format {STATE_FORMAT})", field="model")
    with np.load(folder / STATE_NPZ, allow_pickle=False) as arrays:
        loaded = {k: arrays[k] for k in arrays.files}
    reader = _Reader(folder, loaded)
    return {str(k): reader.dec(v) for k, v in meta["state"].items()}
