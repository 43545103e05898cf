"""Fine-tune MiniLM on op_spam under the nested protocol, for ``reviews.py --finetuned``.

For every outer corpus fold k, MiniLM is fine-tuned five times: once on each set of three of the four
training folds, scoring the fourth (inner out-of-fold scores, what the stacker and the choice of
recipe see), and once on all four training folds, scoring the test fold. That is the same protocol as
the other nested components in ``reviews.py``; only the test fold's scores are reported.

One call runs one recipe (``--config``) with one seed and writes ``{config}_s{seed}.npz``; several
calls can share one GPU. ``--merge`` averages each recipe over its seeds, picks the recipe per outer
fold by inner out-of-fold accuracy (never by the test fold) and writes the component file that
``reviews.py --finetuned FILE`` stacks with the n-gram models.

On CPU this is hours (25 fine-tunes per recipe and seed); on one H100 a recipe takes a few minutes::

    python benchmarks/reviews_finetune.py --config full_e4 --seed 0 --out /tmp/ft
    python benchmarks/reviews_finetune.py --merge /tmp/ft --out /tmp/ft/minilm_ft.npz
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "op_spam" / "op_spam_v1.4.csv"

# Recipes fixed before any run; which one serves an outer fold is chosen by inner CV accuracy.
CONFIGS: dict[str, dict] = {
    "full_e4": {"lora": False, "epochs": 4, "learning_rate": 5e-5, "max_length": 512, "batch_size": 16},
    "full_e8": {"lora": False, "epochs": 8, "learning_rate": 5e-5, "max_length": 512, "batch_size": 16},
    "full_e6_lr1e-4": {"lora": False, "epochs": 6, "learning_rate": 1e-4, "max_length": 512, "batch_size": 16},
    "lora_e10": {"lora": True, "epochs": 10, "learning_rate": 5e-4, "max_length": 512, "batch_size": 16,
                 "lora_r": 16, "lora_alpha": 32},
}


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def run_one(args: argparse.Namespace) -> None:
    import pandas as pd
    import torch

    from shopguard.models.text.finetune import MiniLMClassifier

    if args.config not in CONFIGS:
        sys.exit(f"error: --config: unknown {args.config!r} (choose from {', '.join(CONFIGS)})")
    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = True
    data = pd.read_csv(args.data)
    texts, y, fold = data["text"].astype(str).to_numpy(), data["deceptive"].to_numpy(), data["fold"].to_numpy()
    folds = sorted(set(fold)) if args.folds == "all" else [int(f) for f in args.folds.split(",")]
    n = len(y)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    fn = out_dir / f"{args.config}_s{args.seed}.npz"
    outer = np.full(n, np.nan)
    inner = np.full((len(sorted(set(fold))), n), np.nan)
    timing: list[dict] = []
    params = {**CONFIGS[args.config], "seed": args.seed, "device": args.device}
    if args.max_steps:
        params["max_steps"] = args.max_steps

    def fit_predict(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        model = MiniLMClassifier(**params).fit(texts[train].tolist(), y[train])
        t1 = time.perf_counter()
        p = model.predict_proba(texts[test].tolist())[:, 1]
        timing.append({"train_rows": len(train), "fit_s": t1 - t0, "predict_s": time.perf_counter() - t1})
        return _logit(p)

    all_folds = sorted(set(fold))
    for k in folds:
        a = all_folds.index(k)
        train = np.flatnonzero(fold != k)
        for j in sorted(set(fold[train])):
            inner[a, fold == j] = fit_predict(np.flatnonzero((fold != k) & (fold != j)), np.flatnonzero(fold == j))
        outer[fold == k] = fit_predict(train, np.flatnonzero(fold == k))
        acc = float(np.mean((outer[fold == k] > 0) == y[fold == k]))
        print(f"{args.config} seed {args.seed}: fold {k} accuracy {acc:.4f} "
              f"({sum(t['fit_s'] for t in timing):.0f} s fitting so far)", flush=True)
        np.savez(fn, outer=outer, inner=inner, timing=json.dumps(timing), config=json.dumps(params),
                 device=str(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"))


def merge(args: argparse.Namespace) -> None:
    import pandas as pd

    data = pd.read_csv(args.data)
    y, fold = data["deceptive"].to_numpy(), data["fold"].to_numpy()
    folds = sorted(set(fold))
    runs: dict[str, list[dict]] = {}
    for f in sorted(Path(args.merge).glob("*_s*.npz")):
        config = f.stem.rsplit("_s", 1)[0]
        saved = np.load(f)
        runs.setdefault(config, []).append({k: saved[k] for k in ("outer", "inner", "timing", "device")})
    if not runs:
        sys.exit(f"error: --merge: no runs under {args.merge}")
    names = sorted(runs)

    def done(r: dict, k: int) -> bool:  # a run cut short by a time limit holds only its finished folds
        return not np.isnan(r["outer"][fold == k]).any()

    # per outer fold: each recipe averaged over the seeds that finished that fold; the recipe is then
    # chosen among those with a finished run by inner out-of-fold accuracy (never the test fold)
    outer, inner, chosen = np.zeros(len(y)), np.full((len(folds), len(y)), np.nan), np.zeros(len(folds))
    avg_outer = {c: np.full(len(y), np.nan) for c in names}
    for a, k in enumerate(folds):
        train, test = fold != k, fold == k
        accs: dict[str, float] = {}
        fold_inner: dict[str, np.ndarray] = {}
        for c in names:
            finished = [r for r in runs[c] if done(r, k)]
            if not finished:
                continue
            avg_outer[c][test] = np.mean([r["outer"][test] for r in finished], axis=0)
            fold_inner[c] = np.mean([r["inner"][a] for r in finished], axis=0)
            accs[c] = float(np.mean((fold_inner[c][train] > 0) == y[train]))
        if not accs:
            sys.exit(f"error: --merge: no run finished outer fold {k}")
        best = max(accs, key=lambda c: accs[c])
        chosen[a] = names.index(best)
        outer[test] = avg_outer[best][test]
        inner[a] = fold_inner[best]
        print(f"fold {k}: inner accuracy " + ", ".join(f"{c} {v:.4f}" for c, v in accs.items()) + f" -> {best}")
    for c in names:
        m = ~np.isnan(avg_outer[c])
        acc = float(np.mean((avg_outer[c][m] > 0) == y[m]))
        fit_s = sum(t["fit_s"] for r in runs[c] for t in json.loads(str(r["timing"])))
        print(f"{c}: {len(runs[c])} seed(s), test accuracy {acc:.4f} on {int(m.sum())} reviews (reported, not "
              f"used to choose), {fit_s:.0f} s of fine-tuning on {runs[c][0]['device']}")
    print(f"chosen per fold: test accuracy {float(np.mean((outer > 0) == y)):.4f}")
    extra = {f"outer_{c}": avg_outer[c] for c in names}
    np.savez(args.out, outer=outer, inner=inner, C=chosen, configs=np.array(names),
             seeds=np.array([len(runs[c]) for c in names]), device=str(runs[names[0]][0]["device"]), **extra)
    print(f"wrote {args.out}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="op_spam_v1.4.csv")
    ap.add_argument("--config", default="full_e4", help=f"recipe ({', '.join(CONFIGS)})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folds", default="all", help="outer folds to run, 'all' or e.g. '1,2'")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--max-steps", type=int, help="cap optimiser steps per fine-tune (smoke runs)")
    ap.add_argument("--out", required=True, help="folder for a run, or the component file with --merge")
    ap.add_argument("--merge", help="folder of finished runs: average seeds, choose recipes, write --out")
    args = ap.parse_args(argv)
    if not Path(args.data).exists():
        sys.exit(f"error: --data: {args.data} not found (op_spam_v1.4.csv from ../shared/data/op_spam)")
    merge(args) if args.merge else run_one(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
