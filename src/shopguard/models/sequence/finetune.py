"""Fine-tuning the pretrained encoder for event-level labels: full, LoRA (``peft``) or frozen + head.

The classifier reads the hidden state of the target (last) event and passes it through a small MLP
head with dropout. ``full`` trains everything (optionally keeping the embeddings or the first blocks
fixed), ``lora`` trains low-rank adapters on the attention and feed-forward linears plus the head
(merged back into plain weights afterwards, so serving and export see one ordinary network), and
``frozen`` trains the head alone on fixed embeddings (computed once, which makes it fast). Training
stops early when validation average precision has not improved for ``patience`` epochs; the best
epoch's weights are kept.

Fusion (after Nubank's nuFormer): ``extra`` per-target columns (the event's engineered point-in-time
features and the pretrained model's per-field surprise, already standardised by the caller, see
``shopguard.models.sequence.fusion``) are concatenated to the target's hidden state before the head, and
the encoder is trained *jointly* with them. Few-label options: a linear head (``head_hidden=0``), the
pretraining loss kept as an auxiliary objective on unlabeled windows (``aux_weight``), negatives
subsampled per epoch (``max_negatives``) and a refit on every labelled row for the epochs that early
stopping chose (``refit``).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import Progress
from sklearn.metrics import average_precision_score
from torch import nn

from shopguard.errors import DataError, ModelError
from shopguard.models.sequence.config import FinetuneConfig, PretrainConfig
from shopguard.models.sequence.network import (
    LORA_TARGETS,
    BehaviourTransformer,
    FoundationModel,
    autocast_dtype,
    resolve_device,
)
from shopguard.models.sequence.pretrain import pretrain_loss, seed_everything
from shopguard.models.sequence.sequences import SequenceBatch

HEAD_FILE = "head.safetensors"
FINETUNE_FILE = "finetune.json"
_AUX_OBJECTIVE = PretrainConfig()  # the pretraining mix, reused as the auxiliary loss


class ClassifierHead(nn.Module):
    """MLP (or, with ``hidden=0``, linear) head on the target's hidden state and ``n_extra`` fused columns."""

    def __init__(self, d_model: int, dropout: float, n_extra: int = 0, hidden: int | None = None) -> None:
        super().__init__()
        d_in = d_model + n_extra
        self.n_extra = n_extra
        width = d_model if hidden is None else hidden
        if width == 0:  # linear: the least a handful of positives can overfit
            self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(d_in, 1))
        else:
            self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(d_in, width), nn.GELU(),
                                     nn.Dropout(dropout), nn.Linear(width, 1))
        # Standardisation of the input; fitted on training embeddings for a frozen encoder, else identity.
        self.register_buffer("mu", torch.zeros(d_in))
        self.register_buffer("sigma", torch.ones(d_in))

    def forward(self, h: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        if self.n_extra:
            if extra is None or extra.shape[-1] != self.n_extra:
                raise DataError(f"this head fuses {self.n_extra} extra columns per target, got "
                                f"{None if extra is None else extra.shape[-1]}", field="extra")
            h = torch.cat([h, extra.to(h.dtype)], dim=-1)
        return self.net((h - self.mu) / self.sigma).squeeze(-1)


class SequenceClassifier(nn.Module):
    """Encoder + head: the logit of the target (last) event of each window."""

    def __init__(self, encoder: BehaviourTransformer, head: ClassifierHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, tokens: torch.Tensor, dt: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.encoder.encode(tokens, dt)[:, -1, :], extra)


class FineTunedModel(FoundationModel):
    """A fine-tuned encoder (usable for embeddings, like any FoundationModel) plus its classifier head."""

    def __init__(self, base: FoundationModel, head: ClassifierHead, finetune: dict[str, Any] | None = None) -> None:
        super().__init__(base.config, base.tokenizer, base.network, base.metadata)
        self.head = head
        self.finetune = finetune or {}

    @property
    def classifier(self) -> SequenceClassifier:
        return SequenceClassifier(self.network, self.head)

    @property
    def n_extra(self) -> int:
        """Fused columns the head expects per target (0: a plain sequence classifier)."""
        return int(self.head.n_extra)

    def predict_proba(self, batch: SequenceBatch, extra: np.ndarray | None = None, **kw: Any) -> np.ndarray:
        """Probability that each target event is positive (``extra``: the fused columns, one row per target)."""
        head = self.head
        if self.n_extra:
            x = _check_extra(extra, len(batch), self.n_extra)
            # The batched helper walks the windows in order, 512 at a time: the fused rows follow.
            bs = int(kw.get("batch_size", 512))
            cursor = {"at": 0}

            def fused(net: BehaviourTransformer, t: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
                head.to(t.device).eval()
                s = cursor["at"]
                cursor["at"] += t.shape[0]
                return torch.sigmoid(head(net.encode(t, d)[:, -1, :], torch.from_numpy(x[s:s + t.shape[0]]).to(t.device)))

            return self._batched(batch, fused, **{**kw, "batch_size": bs})

        def fn(net: BehaviourTransformer, t: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
            head.to(t.device).eval()
            return torch.sigmoid(head(net.encode(t, d)[:, -1, :]))

        return self._batched(batch, fn, **kw)

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        path = super().save(folder)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}, str(path / HEAD_FILE))
        (path / FINETUNE_FILE).write_text(json.dumps(self.finetune, indent=2, default=str))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> FineTunedModel:
        from safetensors.torch import load_file

        path = Path(folder)
        base = FoundationModel.load(path)
        if not (path / HEAD_FILE).exists():
            raise ModelError(f"{path} holds a pretrained encoder but no fine-tuned head ({HEAD_FILE})",
                             field="model", value=str(path))
        info = json.loads((path / FINETUNE_FILE).read_text()) if (path / FINETUNE_FILE).exists() else {}
        cfg = info.get("config", {})
        head = ClassifierHead(base.config.d_model, float(cfg.get("head_dropout", 0.1)), int(info.get("n_extra", 0)),
                              cfg.get("head_hidden"))
        head.load_state_dict(load_file(str(path / HEAD_FILE)))
        return cls(base, head.eval(), info)


@dataclass
class FinetuneResult:
    model: FineTunedModel
    history: list[dict[str, Any]] = field(default_factory=list)
    trainable_params: int = 0
    total_params: int = 0
    seconds: float = 0.0
    best_val_ap: float = float("nan")


def time_split(batch: SequenceBatch, y: np.ndarray, val_frac: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the earliest (1 - val_frac) targets for training and the latest for validation."""
    order = np.argsort(batch.ts, kind="stable")
    cut = int(round(len(order) * (1 - val_frac)))
    cut = min(max(cut, 1), len(order) - 1)
    return order[:cut], order[cut:]


def _count(params: Any) -> int:
    return int(sum(p.numel() for p in params))


def _check_extra(extra: np.ndarray | None, n: int, n_extra: int | None = None) -> np.ndarray:
    if extra is None:
        raise DataError("this model fuses extra columns: pass extra=(targets x columns)", field="extra")
    x = np.asarray(extra, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] != n or (n_extra is not None and x.shape[1] != n_extra):
        want = f"({n}, {n_extra if n_extra is not None else 'k'})"
        raise DataError(f"extra has shape {x.shape}, expected {want}", field="extra", value=x.shape)
    if not np.isfinite(x).all():
        raise DataError("extra holds NaN or infinite values (fill and standardise them first)", field="extra")
    return np.ascontiguousarray(x)


def finetune(
    model: FoundationModel,
    train: SequenceBatch,
    y_train: np.ndarray,
    *,
    val: SequenceBatch | None = None,
    y_val: np.ndarray | None = None,
    config: FinetuneConfig | None = None,
    progress: Progress | None = None,
    extra: np.ndarray | None = None,
    val_extra: np.ndarray | None = None,
    unlabeled: SequenceBatch | None = None,
) -> FinetuneResult:
    """Fine-tune a copy of ``model`` on labelled target windows; the pretrained model is left as it was.

    Without ``val``, the latest ``val_frac`` of ``train`` by time is held out for early stopping.
    ``extra`` (one standardised row per target, finite) turns on fusion: the head reads the target's
    hidden state and these columns (``val_extra`` for an explicit ``val``). ``unlabeled`` windows feed
    the auxiliary pretraining loss when ``config.aux_weight > 0`` (default: the training windows).
    """
    cfg = config or FinetuneConfig()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    y_train = np.asarray(y_train, dtype=np.float32).reshape(-1)
    if len(y_train) != len(train):
        raise DataError(f"y has {len(y_train)} labels for {len(train)} sequences", field="y", value=len(y_train))
    if not np.isin(y_train, (0.0, 1.0)).all():
        raise DataError("labels must be 0 or 1", field="y")
    x_train = _check_extra(extra, len(train)) if extra is not None else None
    n_extra = 0 if x_train is None else x_train.shape[1]
    if val is None:
        tr, va = time_split(train, y_train, cfg.val_frac)
        val, y_val = train.subset(va), y_train[va]
        x_val = x_train[va] if x_train is not None else None
        full_train, full_y, full_x = train, y_train, x_train
        train, y_train = train.subset(tr), y_train[tr]
        x_train = x_train[tr] if x_train is not None else None
    else:
        x_val = _check_extra(val_extra, len(val), n_extra) if n_extra else None
        full_train, full_y, full_x = train, y_train, x_train
    y_val = np.asarray(y_val, dtype=np.float32).reshape(-1)
    if y_train.sum() == 0 and y_val.sum() >= cfg.min_val_positives:
        raise DataError("no positive labels in the training part: cannot fine-tune a classifier", field="y")
    if full_y.sum() == 0:
        raise DataError("no positive labels: cannot fine-tune a classifier", field="y")
    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    unl = unlabeled if unlabeled is not None else full_train
    probe_only = cfg.probe and cfg.method == "frozen"  # convex: no epochs to choose, so no validation slice
    if (probe_only or y_val.sum() < cfg.min_val_positives) and full_train is not train:
        # A handful of labels: a validation slice with fewer positives than this only adds noise to the
        # choice of epoch, and costs positives. Train on every labelled row for ``epochs``; weight
        # decay and the small head are the regularisation.
        run = _Run(model, cfg, n_extra, unl)
        history, best, best_epoch = run.fit(full_train, full_y, full_x, None, None, None, cfg.epochs, progress)
        if not probe_only:
            history[-1]["note"] = f"no early stopping: {int(y_val.sum())} positives in the validation slice"
        return _result(model, cfg, run, history, best, best_epoch, n_extra, full_train, full_y, t0)
    run = _Run(model, cfg, n_extra, unl)
    history, best, best_epoch = run.fit(train, y_train, x_train, val, y_val, x_val, cfg.epochs, progress)
    if cfg.refit and best_epoch > 0:
        # Few labels: the validation slice held a share of the positives. Train again on every labelled
        # row for the number of epochs validation chose (like LightGBM's refit after early stopping).
        seed_everything(cfg.seed)
        run = _Run(model, cfg, n_extra, unl)
        run.fit(full_train, full_y, full_x, None, None, None, best_epoch, progress)
    return _result(model, cfg, run, history, best, best_epoch, n_extra, full_train, full_y, t0)


def _result(model: FoundationModel, cfg: FinetuneConfig, run: _Run, history: list[dict[str, Any]], best: float,
            best_epoch: int, n_extra: int, full_train: SequenceBatch, full_y: np.ndarray, t0: float) -> FinetuneResult:
    clf, encoder, head = run.clf, run.encoder, run.head
    if cfg.method == "lora":
        clf = clf.merge_and_unload()  # plain weights again: serving and export need no peft
        assert isinstance(clf, SequenceClassifier)
        encoder, head = clf.encoder, clf.head
    seconds = time.perf_counter() - t0
    encoder.cpu().eval()
    head.cpu().eval()
    for p in list(encoder.parameters()) + list(head.parameters()):
        p.requires_grad_(True)
    base = run.base
    base.network = encoder
    info = {"method": cfg.method, "config": cfg.model_dump(), "history": history, "trainable_params": run.trainable,
            "total_params": run.total, "seconds": seconds, "best_val_ap": best, "best_epoch": best_epoch,
            "n_extra": n_extra, "train_sequences": len(full_train), "train_positives": int(full_y.sum())}
    return FinetuneResult(FineTunedModel(base, head, info), history, run.trainable, run.total, seconds, float(best))


class _Run:
    """One fine-tuning run: a fresh copy of the encoder, its head and optimiser."""

    def __init__(self, model: FoundationModel, cfg: FinetuneConfig, n_extra: int, unlabeled: SequenceBatch) -> None:
        self.cfg = cfg
        self.device = device = resolve_device(cfg.device)
        self.amp = autocast_dtype(device, cfg.mixed_precision)
        self.batch_size = cfg.gpu_batch_size if device.type == "cuda" else cfg.batch_size
        self.base = base = FoundationModel(model.config, model.tokenizer, copy.deepcopy(model.network),
                                           dict(model.metadata))
        self.encoder = encoder = base.network
        self.unlabeled = unlabeled
        self.aux = cfg.aux_weight > 0 and cfg.method != "frozen" and len(unlabeled) > 0
        for p in list(encoder.mfm_heads.parameters()) + list(encoder.next_heads.parameters()):
            # Pretraining heads play no part in classification; with the auxiliary loss they keep
            # training so the encoder stays a good model of behaviour while it learns the labels.
            p.requires_grad_(self.aux and cfg.method == "full")  # (inside the encoder's parameter group)
        self.head = head = ClassifierHead(model.config.d_model, cfg.head_dropout, n_extra, cfg.head_hidden)
        self.clf: Any = SequenceClassifier(encoder, head)
        self.total = _count(encoder.parameters()) + _count(head.parameters())
        self.frozen = cfg.method == "frozen"
        if self.frozen:
            for p in encoder.parameters():
                p.requires_grad_(False)
            groups = [{"params": list(head.parameters()), "lr": cfg.lr}]
        elif cfg.method == "lora":
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                              target_modules=LORA_TARGETS, modules_to_save=["head"])
            self.clf = get_peft_model(self.clf, lora)
            self.head = self.clf.base_model.model.head.modules_to_save["default"]
            groups = [{"params": [p for p in self.clf.parameters() if p.requires_grad], "lr": cfg.lr}]
        else:
            if cfg.freeze_embeddings:
                for p in encoder.embeddings.parameters():
                    p.requires_grad_(False)
            for block in list(encoder.blocks)[: cfg.freeze_layers]:
                for p in block.parameters():
                    p.requires_grad_(False)
            enc_params = [p for p in encoder.parameters() if p.requires_grad]
            groups = [{"params": enc_params, "lr": cfg.encoder_lr}, {"params": list(head.parameters()), "lr": cfg.lr}]
        self.groups = groups
        self.trainable = _count(p for p in self.clf.parameters() if p.requires_grad)
        self.clf.to(device)
        self.opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        self.rng = np.random.default_rng(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)

    def _hidden(self, b: SequenceBatch) -> torch.Tensor:
        """Frozen encoder: the target hidden states, once."""
        return torch.from_numpy(self.base.embeddings(b, device=str(self.device))).to(self.device)

    def _logits(self, b: SequenceBatch, idx: np.ndarray, h: torch.Tensor | None, x: np.ndarray | None) -> torch.Tensor:
        dev = self.device
        ex = torch.from_numpy(x[idx]).to(dev) if x is not None else None
        if h is not None:
            return self.head(h[torch.from_numpy(idx).to(dev)], ex)
        return self.clf(torch.from_numpy(b.tokens[idx]).to(dev), torch.from_numpy(b.dt[idx]).to(dev), ex)

    @torch.no_grad()
    def predict(self, b: SequenceBatch, h: torch.Tensor | None, x: np.ndarray | None) -> np.ndarray:
        self.clf.eval()
        outs = []
        for s in range(0, len(b), 512):
            idx = np.arange(s, min(s + 512, len(b)))
            with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
                logit = self._logits(b, idx, h, x)
            outs.append(torch.sigmoid(logit.float()).cpu().numpy())
        return np.concatenate(outs) if outs else np.zeros(0, dtype=np.float32)

    def _epoch_rows(self, y: np.ndarray) -> np.ndarray:
        """This epoch's rows: every positive and at most ``max_negatives`` negatives, shuffled."""
        cap = self.cfg.max_negatives
        neg = np.flatnonzero(y == 0)
        if cap is None or len(neg) <= cap:
            return self.rng.permutation(len(y))
        neg = self.rng.choice(neg, cap, replace=False)
        return self.rng.permutation(np.concatenate([np.flatnonzero(y == 1), neg]))

    def _aux_loss(self) -> torch.Tensor:
        """The pretraining loss (masked fields + next event) on a batch of unlabeled windows."""
        idx = self.rng.choice(len(self.unlabeled), min(self.batch_size, len(self.unlabeled)), replace=False)
        loss, _ = pretrain_loss(self.encoder, torch.from_numpy(self.unlabeled.tokens[idx]).to(self.device),
                                torch.from_numpy(self.unlabeled.dt[idx]).to(self.device), _AUX_OBJECTIVE, self.gen)
        return loss

    def probe(self, train: SequenceBatch, y: np.ndarray, x: np.ndarray | None) -> dict[str, Any]:
        """Fit the linear head exactly on the current encoder's hidden states (+ fused columns).

        L2-penalised, class-balanced logistic regression solved with L-BFGS (the objective of
        scikit-learn's ``LogisticRegression(C=head_c, class_weight="balanced")``): with a handful of
        positives a convex fit beats SGD epochs chosen on a noisy validation slice. Fine-tuning that
        starts from it is LP-FT (Kumar et al., 2022): the encoder is not pulled around by a random head.
        """
        cfg, head = self.cfg, self.head
        linear = head.net[-1]
        if not isinstance(linear, nn.Linear) or len(head.net) != 2:
            raise ModelError("the linear probe needs a linear head (head_hidden=0)", field="head_hidden",
                             value=cfg.head_hidden)
        h = self._hidden(train)
        d = h.shape[1]
        head.mu[:d].copy_(h.mean(dim=0))
        head.sigma[:d].copy_(h.std(dim=0).clamp(min=1e-4))
        inp = torch.cat([h, torch.from_numpy(x).to(h.device)], dim=1) if x is not None else h
        z = ((inp - head.mu) / head.sigma).float()
        yt = torch.from_numpy(y).to(z.device).float()
        n, pos = len(y), float(y.sum())
        w = torch.where(yt > 0, n / (2 * pos), n / (2 * max(n - pos, 1.0))) if cfg.balance else torch.ones_like(yt)
        weight = torch.zeros(z.shape[1], device=z.device, requires_grad=True)
        bias = torch.zeros((), device=z.device, requires_grad=True)
        opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=500, tolerance_grad=1e-6,
                                line_search_fn="strong_wolfe")

        def objective() -> torch.Tensor:
            opt.zero_grad()
            bce = F.binary_cross_entropy_with_logits(z @ weight + bias, yt, weight=w, reduction="sum")
            loss = (bce + 0.5 * weight.pow(2).sum() / cfg.head_c) / n
            loss.backward()
            return loss

        with torch.enable_grad():
            loss = opt.step(objective)
        with torch.no_grad():
            linear.weight.copy_(weight.detach()[None, :])
            linear.bias.copy_(bias.detach()[None])
        return {"epoch": 0, "probe_loss": float(loss.detach()), "probe_c": cfg.head_c}

    def fit(self, train: SequenceBatch, y: np.ndarray, x: np.ndarray | None, val: SequenceBatch | None,
            y_val: np.ndarray | None, x_val: np.ndarray | None, epochs: int,
            progress: Progress | None) -> tuple[list[dict[str, Any]], float, int]:
        """Train for ``epochs`` (early stopping on ``val`` when given); returns history, best AP, best epoch."""
        cfg, device, head = self.cfg, self.device, self.head
        pos = float(y.sum())
        keep_neg = len(y) - pos if cfg.max_negatives is None else min(len(y) - pos, cfg.max_negatives)
        pos_weight = torch.tensor(min(50.0, keep_neg / pos) if cfg.balance else 1.0, device=device)
        probed = self.probe(train, y, x) if cfg.probe else None
        if probed is not None and self.frozen:
            return [probed], float("nan"), 0  # a frozen encoder + linear head: the probe is the model
        h_train = self._hidden(train) if self.frozen else None
        h_val = self._hidden(val) if self.frozen and val is not None else None
        if h_train is not None and probed is None:
            d = h_train.shape[1]
            head.mu[:d].copy_(h_train.mean(dim=0))
            head.sigma[:d].copy_(h_train.std(dim=0).clamp(min=1e-4))
        yt = torch.from_numpy(y).to(device)
        best, best_state, best_epoch, bad = -np.inf, None, 0, 0
        history: list[dict[str, Any]] = [probed] if probed is not None else []
        what = f"fine-tuning ({cfg.method}{', fusion' if head.n_extra else ''})"
        task = progress.add_task(what, total=epochs) if progress else None
        params = [p for g in self.groups for p in g["params"]]
        for epoch in range(epochs):
            self.clf.train()
            rows = self._epoch_rows(y)
            losses = []
            for s in range(0, len(rows), self.batch_size):
                idx = rows[s:s + self.batch_size]
                with torch.autocast(device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
                    logit = self._logits(train, idx, h_train, x)
                    loss = F.binary_cross_entropy_with_logits(logit.float(), yt[torch.from_numpy(idx).to(device)],
                                                              pos_weight=pos_weight)
                    if self.aux:
                        loss = loss + cfg.aux_weight * self._aux_loss()
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                self.opt.step()
                losses.append(float(loss.detach()))
            rec: dict[str, Any] = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else float("nan")}
            if val is not None and y_val is not None:
                score = _val_score(self.predict(val, h_val, x_val), y_val)
                rec["val_ap"] = score
                if progress is not None and task is not None:
                    progress.update(task, advance=1, description=f"{what} val AP {score:.3f}")
                if score > best + 1e-6:
                    best, bad, best_epoch = score, 0, epoch + 1
                    best_state = {k: v.detach().clone() for k, v in self.clf.state_dict().items()}
                else:
                    bad += 1
            elif progress is not None and task is not None:
                progress.update(task, advance=1, description=f"{what} (refit)")
            history.append(rec)
            if val is not None and bad >= cfg.patience:
                break
        if best_state is not None:
            self.clf.load_state_dict(best_state)
        if val is None:
            best, best_epoch = float("nan"), epochs
        return history, float(best), best_epoch


def _val_score(p: np.ndarray, y_val: np.ndarray) -> float:
    if len(y_val) == 0 or y_val.sum() == 0:
        # No positives to rank: fall back to (negative) log loss so early stopping still works.
        return -float(F.binary_cross_entropy(torch.from_numpy(p).clamp(1e-6, 1 - 1e-6),
                                             torch.from_numpy(y_val)).item()) if len(y_val) else 0.0
    return float(average_precision_score(y_val, p))
