"""Evaluation reports: ``report.json`` for machines and a self-contained ``report.html`` for people.

The HTML embeds its plots as base64 PNGs (PR and ROC curves, score histograms by class, recall per
scenario) and carries its own CSS: it opens offline, from a mail attachment or a CI artifact.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from shopguard.evaluation.checks import Check, check_window
from shopguard.evaluation.metrics import roc_curve

_HEADLINE = ("roc_auc", "average_precision", "recall_at_1pct_fpr", "precision_at_k", "card_precision_at_k",
             "precision_at_threshold", "recall_at_threshold")


def build_report(results: list[dict[str, Any]], *, window: dict[str, Any] | None = None,
                 db: str | None = None) -> dict[str, Any]:
    """The JSON report: one entry per model (metrics, policy, split), without raw score arrays.

    ``warnings`` lists what a careful analyst would flag (``evaluation.checks``), each with its model:
    the window's own checks (size, fraud count, AUC below chance, fraud-rate shift against the
    training rate in ``info``) plus the training-time ones a result carries in ``warnings``.
    """
    from shopguard import __version__

    warnings = []
    for r in results:
        for c in result_checks(r):
            warnings.append({"model": r.get("model_version"), "detector": r.get("detector"), **c.to_dict()})
    return _clean({
        "generated_at": datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="seconds"),
        "shopguard_version": __version__,
        "db": db,
        "window": window or {},
        "models": [{k: v for k, v in r.items() if k not in ("data", "warnings")} for r in results],
        "warnings": warnings,
    })


def result_checks(result: dict[str, Any]) -> list[Check]:
    """Checks of one evaluated model: carried training-time ones, then this window's."""
    carried = [c if isinstance(c, Check) else Check.from_dict(c) for c in result.get("warnings") or ()]
    # Window checks stored at training time were about the training run's test window: recompute them.
    found = [c for c in carried if c.window != "test"]
    info = result.get("info") or {}
    rate = result.get("train_positive_rate")
    if rate is None and info.get("train_events"):
        rate = info.get("train_positives", 0) / info["train_events"]
    val = info.get("validation_auc")
    found += check_window(result.get("metrics") or {}, window="test", train_positive_rate=rate, validation_auc=val)
    return found


def write_json(report: dict[str, Any], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(_clean(report), indent=2))
    return p


def _clean(obj: Any) -> Any:
    """Strict JSON: NaN and infinities become null, numpy scalars plain numbers."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


# -- plots ------------------------------------------------------------------------------------------------
def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _pr_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-s, kind="mergesort")
    ys, ss = y[order], s[order]
    distinct = np.r_[np.flatnonzero(np.diff(ss)), ys.size - 1]
    tps = np.cumsum(ys)[distinct]
    precision = tps / (distinct + 1)
    recall = tps / max(int(y.sum()), 1)
    return np.r_[0.0, recall], np.r_[1.0, precision]


def plots(results: list[dict[str, Any]]) -> dict[str, str]:
    """Base64 PNGs keyed by plot name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_data = [r for r in results if r.get("data") is not None and r["data"]["y"].size]
    out: dict[str, str] = {}
    if not with_data:
        return out
    both = [r for r in with_data if 0 < r["data"]["y"].sum() < r["data"]["y"].size]
    if both:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
        for r in both:
            y, s = r["data"]["y"], r["data"]["scores"]
            fpr, tpr, _ = roc_curve(y, s)
            ax1.plot(fpr, tpr, label=f"{r['detector']} (AUC {r['metrics'].get('roc_auc', float('nan')):.3f})")
            rec, prec = _pr_curve(y, s)
            ax2.step(rec, prec, where="post",
                     label=f"{r['detector']} (AP {r['metrics'].get('average_precision', float('nan')):.3f})")
        ax1.plot([0, 1], [0, 1], ":", color="grey")
        ax1.axvline(0.01, color="grey", lw=0.8, ls="--")
        ax1.set(xscale="log", xlim=(1e-4, 1), ylim=(0, 1.01), xlabel="false-positive rate (log)",
                ylabel="recall", title="ROC")
        ax2.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall", ylabel="precision", title="Precision-recall")
        ax1.legend(fontsize=8, loc="lower right")
        ax2.legend(fontsize=8, loc="upper right")
        out["curves"] = _png(fig)
    n = len(with_data)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    for ax, r in zip(axes[0], with_data, strict=True):
        y, s = r["data"]["y"], r["data"]["scores"]
        bins = np.histogram_bin_edges(s, bins=40)
        ax.hist(s[y == 0], bins=bins, alpha=0.6, density=True, label="normal")
        if (y == 1).any():
            ax.hist(s[y == 1], bins=bins, alpha=0.6, density=True, label="fraud")
        ax.set(yscale="log", title=r["detector"], xlabel="score")
        ax.legend(fontsize=8)
    out["histograms"] = _png(fig)
    names = sorted({name for r in with_data for name in r["metrics"].get("scenarios", {})})
    if names:
        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names) * max(1, n) / 1.5), 3.8))
        width = 0.8 / n
        x = np.arange(len(names))
        for i, r in enumerate(with_data):
            sc = r["metrics"].get("scenarios", {})
            vals = [sc.get(nm, {}).get("recall_at_1pct_fpr") or 0.0 for nm in names]
            ax.bar(x + i * width - 0.4 + width / 2, vals, width, label=r["detector"])
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set(ylim=(0, 1.05), ylabel="recall at 1% FPR", title="Recall per scenario")
        ax.legend(fontsize=8)
        out["scenarios"] = _png(fig)
    return out


# -- HTML -------------------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem;color:#222;max-width:1200px}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6rem 0}td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f4f4f4}.muted{color:#777;font-size:.9rem}
img{max-width:100%}.warn li{color:#8a5a00;margin:.2rem 0}
"""


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return "–" if not math.isfinite(v) else f"{v:.4f}"
    return html.escape(str(v))


def _with_ci(metrics: dict[str, Any], key: str) -> Any:
    """``value [low, high]`` when the metric has an interval, else the value."""
    v, ci = metrics.get(key), metrics.get(f"{key}_ci")
    if not isinstance(v, float) or not math.isfinite(v) or not ci or None in ci:
        return v
    return f"{v:.4f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def render_html(report: dict[str, Any], results: list[dict[str, Any]]) -> str:
    pics = plots(results)
    models = report["models"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>shopguard evaluation</title>"
             f"<style>{_CSS}</style></head><body>",
             "<h1>shopguard evaluation report</h1>",
             f"<p class='muted'>Generated {html.escape(str(report.get('generated_at')))} · store "
             f"{html.escape(str(report.get('db')))} · test window {html.escape(str(report['window'].get('start')))} "
             f"→ {html.escape(str(report['window'].get('end')))}. Time-ordered split with a label-delay gap; users "
             "already known as fraudulent before each test day are removed.</p>"]
    warnings = report.get("warnings") or []
    if warnings:
        parts.append("<h2>Warnings</h2><ul class='warn'>")
        parts += [f"<li><b>{html.escape(str(w.get('detector')))}</b> · {html.escape(str(w.get('code')))}: "
                  f"{html.escape(str(w.get('message')))}</li>" for w in warnings]
        parts.append("</ul>")
    parts.append("<h2>Summary</h2>")
    parts.append(_table(["model", "detector", "supervised", "events", "fraud", *_HEADLINE],
                        [[m["model_version"], m["detector"], m["supervised"], m["metrics"].get("events"),
                          m["metrics"].get("positives"), *[_with_ci(m["metrics"], k) for k in _HEADLINE]]
                         for m in models]))
    parts.append("<p class='muted'>ROC-AUC and average precision with their 95% stratified bootstrap "
                 "interval in brackets.</p>")
    if "curves" in pics:
        parts.append(f"<h2>ROC and precision-recall</h2><img alt='ROC and PR curves' src='data:image/png;base64,"
                     f"{pics['curves']}'>")
    if "histograms" in pics:
        parts.append(f"<h2>Score distributions</h2><img alt='score histograms' src='data:image/png;base64,"
                     f"{pics['histograms']}'>")
    names = sorted({nm for m in models for nm in m["metrics"].get("scenarios", {})})
    if names:
        parts.append("<h2>Per scenario</h2>")
        header = ["scenario", "fraud events"]
        for m in models:
            header += [f"{m['detector']} recall@1%FPR", f"{m['detector']} recall@threshold"]
        rows = []
        for nm in names:
            row: list[Any] = [nm, next((m["metrics"]["scenarios"][nm]["positives"] for m in models
                                        if nm in m["metrics"].get("scenarios", {})), None)]
            for m in models:
                sc = m["metrics"].get("scenarios", {}).get(nm, {})
                row += [sc.get("recall_at_1pct_fpr"), sc.get("recall_at_threshold")]
            rows.append(row)
        parts.append(_table(header, rows))
        if "scenarios" in pics:
            parts.append(f"<img alt='recall per scenario' src='data:image/png;base64,{pics['scenarios']}'>")
    parts.append("<h2>Operating point</h2>")
    for m in models:
        c = m["metrics"].get("confusion")
        pol = m.get("policy", {})
        parts.append(f"<h3>{html.escape(m['detector'])} · {html.escape(m['model_version'])}</h3>")
        parts.append(f"<p class='muted'>Policy ({html.escape(str(pol.get('objective')))}): medium ≥ "
                     f"{_fmt(pol.get('medium'))}, high ≥ {_fmt(pol.get('high'))} (operating threshold), critical ≥ "
                     f"{_fmt(pol.get('critical'))} on the {html.escape(str(pol.get('probability_kind')))} scale.</p>")
        if c:
            parts.append(_table(["", "alerted", "not alerted"],
                                [["fraud", c["tp"], c["fn"]], ["normal", c["fp"], c["tn"]]]))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(report: dict[str, Any], results: list[dict[str, Any]], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(render_html(report, results), encoding="utf-8")
    return p
