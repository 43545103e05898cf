"""Fine-tuning the pretrained encoder for event-level labels: full, LoRA (``peft``) or frozen + head.

The classifier reads the hidden state of the target (last) event and passes it through a small MLP
head with dropout. ``full`` trains everything (optionally keeping the embeddings or the first blocks
fixed), ``lora`` trains low-rank adapters on the attention and feed-forward linears plus the head
(merged back into plain weights afterwards, so serving and export see one ordinary network), and
``frozen`` trains the head alone on fixed embeddings (computed once, which makes it fast). Training
stops early when validation average precision has not improved for ``patience`` epochs; the best
epoch's weights are kept.
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
from shopguard.models.sequence.config import FinetuneConfig
from shopguard.models.sequence.network import (
    LORA_TARGETS,
    BehaviourTransformer,
    FoundationModel,
    autocast_dtype,
    resolve_device,
)
from shopguard.models.sequence.pretrain import seed_everything
from shopguard.models.sequence.sequences import SequenceBatch

HEAD_FILE = "head.safetensors"
FINETUNE_FILE = "finetune.json"


class ClassifierHead(nn.Module):
    def __init__(self, d_model: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(d_model, d_model), nn.GELU(),
                                 nn.Dropout(dropout), nn.Linear(d_model, 1))
        # Standardisation of the input; fitted on training embeddings for a frozen encoder, else identity.
        self.register_buffer("mu", torch.zeros(d_model))
        self.register_buffer("sigma", torch.ones(d_model))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net((h - self.mu) / self.sigma).squeeze(-1)


class SequenceClassifier(nn.Module):
    """Encoder + head: the logit of the target (last) event of each window."""

    def __init__(self, encoder: BehaviourTransformer, head: ClassifierHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, tokens: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.encode(tokens, dt)[:, -1, :])


class FineTunedModel(FoundationModel):
    """A fine-tuned encoder (usable for embeddings, like any FoundationModel) plus its classifier head."""

    def __init__(self, base: FoundationModel, head: ClassifierHead, finetune: dict[str, Any] | None = None) -> None:
        super().__init__(base.config, base.tokenizer, base.network, base.metadata)
        self.head = head
        self.finetune = finetune or {}

    @property
    def classifier(self) -> SequenceClassifier:
        return SequenceClassifier(self.network, self.head)

    def predict_proba(self, batch: SequenceBatch, **kw: Any) -> np.ndarray:
        """Probability that each target event is positive."""
        head = self.head

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
        head = ClassifierHead(base.config.d_model, float(info.get("config", {}).get("head_dropout", 0.1)))
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


def finetune(
    model: FoundationModel,
    train: SequenceBatch,
    y_train: np.ndarray,
    *,
    val: SequenceBatch | None = None,
    y_val: np.ndarray | None = None,
    config: FinetuneConfig | None = None,
    progress: Progress | None = None,
) -> FinetuneResult:
    """Fine-tune a copy of ``model`` on labelled target windows; the pretrained model is left as it was.

    Without ``val``, the latest ``val_frac`` of ``train`` by time is held out for early stopping.
    """
    cfg = config or FinetuneConfig()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    y_train = np.asarray(y_train, dtype=np.float32).reshape(-1)
    if len(y_train) != len(train):
        raise DataError(f"y has {len(y_train)} labels for {len(train)} sequences", field="y", value=len(y_train))
    if not np.isin(y_train, (0.0, 1.0)).all():
        raise DataError("labels must be 0 or 1", field="y")
    if val is None:
        tr, va = time_split(train, y_train, cfg.val_frac)
        val, y_val = train.subset(va), y_train[va]
        train, y_train = train.subset(tr), y_train[tr]
    y_val = np.asarray(y_val, dtype=np.float32).reshape(-1)
    if y_train.sum() == 0:
        raise DataError("no positive labels in the training part: cannot fine-tune a classifier", field="y")
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    amp = autocast_dtype(device, cfg.mixed_precision)
    batch_size = cfg.gpu_batch_size if device.type == "cuda" else cfg.batch_size
    base = FoundationModel(model.config, model.tokenizer, copy.deepcopy(model.network), dict(model.metadata))
    encoder = base.network
    for p in list(encoder.mfm_heads.parameters()) + list(encoder.next_heads.parameters()):
        p.requires_grad_(False)  # pretraining heads play no part in classification
    head = ClassifierHead(model.config.d_model, cfg.head_dropout)
    clf: nn.Module = SequenceClassifier(encoder, head)
    total = _count(encoder.parameters()) + _count(head.parameters())
    frozen = cfg.method == "frozen"
    if frozen:
        for p in encoder.parameters():
            p.requires_grad_(False)
        groups = [{"params": list(head.parameters()), "lr": cfg.lr}]
    elif cfg.method == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=LORA_TARGETS, modules_to_save=["head"])
        clf = get_peft_model(clf, lora)
        groups = [{"params": [p for p in clf.parameters() if p.requires_grad], "lr": cfg.lr}]
    else:
        if cfg.freeze_embeddings:
            for p in encoder.embeddings.parameters():
                p.requires_grad_(False)
        for block in list(encoder.blocks)[: cfg.freeze_layers]:
            for p in block.parameters():
                p.requires_grad_(False)
        enc_params = [p for p in encoder.parameters() if p.requires_grad]
        groups = [{"params": enc_params, "lr": cfg.encoder_lr}, {"params": list(head.parameters()), "lr": cfg.lr}]
    trainable = _count(p for p in clf.parameters() if p.requires_grad)
    clf.to(device)
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    pos = float(y_train.sum())
    pos_weight = torch.tensor(min(50.0, (len(y_train) - pos) / pos) if cfg.balance else 1.0, device=device)

    def features(b: SequenceBatch) -> torch.Tensor:
        """Frozen encoder: the target hidden states, once."""
        return torch.from_numpy(base.embeddings(b, device=str(device))).to(device)

    h_train = features(train) if frozen else None
    h_val = features(val) if frozen else None
    if h_train is not None:
        head.mu.copy_(h_train.mean(dim=0))
        head.sigma.copy_(h_train.std(dim=0).clamp(min=1e-4))

    @torch.no_grad()
    def predict(b: SequenceBatch, h: torch.Tensor | None) -> np.ndarray:
        clf.eval()
        outs = []
        for s in range(0, len(b), 512):
            if h is not None:
                logit = head(h[s:s + 512])
            else:
                with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                    logit = clf(torch.from_numpy(b.tokens[s:s + 512]).to(device),
                                torch.from_numpy(b.dt[s:s + 512]).to(device))
            outs.append(torch.sigmoid(logit.float()).cpu().numpy())
        return np.concatenate(outs) if outs else np.zeros(0, dtype=np.float32)

    def val_score(p: np.ndarray) -> float:
        if len(y_val) == 0 or y_val.sum() == 0:
            # No positives to rank: fall back to (negative) log loss so early stopping still works.
            return -float(F.binary_cross_entropy(torch.from_numpy(p).clamp(1e-6, 1 - 1e-6),
                                                 torch.from_numpy(y_val)).item()) if len(y_val) else 0.0
        return float(average_precision_score(y_val, p))

    rng = np.random.default_rng(cfg.seed)
    best, best_state, bad, history = -np.inf, None, 0, []
    task = progress.add_task(f"fine-tuning ({cfg.method})", total=cfg.epochs) if progress else None
    t0 = time.perf_counter()
    yt = torch.from_numpy(y_train).to(device)
    for epoch in range(cfg.epochs):
        clf.train()
        perm = rng.permutation(len(train))
        losses = []
        for s in range(0, len(perm), batch_size):
            idx = perm[s:s + batch_size]
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                if frozen:
                    assert h_train is not None
                    logit = head(h_train[torch.from_numpy(idx).to(device)])
                else:
                    logit = clf(torch.from_numpy(train.tokens[idx]).to(device),
                                torch.from_numpy(train.dt[idx]).to(device))
            loss = F.binary_cross_entropy_with_logits(logit.float(), yt[torch.from_numpy(idx).to(device)],
                                                      pos_weight=pos_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], cfg.grad_clip)
            opt.step()
            losses.append(float(loss.detach()))
        score = val_score(predict(val, h_val))
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_ap": score})
        if progress is not None and task is not None:
            progress.update(task, advance=1, description=f"fine-tuning ({cfg.method}) val AP {score:.3f}")
        if score > best + 1e-6:
            best, bad = score, 0
            best_state = {k: v.detach().clone() for k, v in clf.state_dict().items()}
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    if best_state is not None:
        clf.load_state_dict(best_state)
    if cfg.method == "lora":
        clf = clf.merge_and_unload()  # plain weights again: serving and export need no peft
        assert isinstance(clf, SequenceClassifier)
        encoder, head = clf.encoder, clf.head
    seconds = time.perf_counter() - t0
    encoder.cpu().eval()
    head.cpu().eval()
    for p in list(encoder.parameters()) + list(head.parameters()):
        p.requires_grad_(True)
    base.network = encoder
    info = {"method": cfg.method, "config": cfg.model_dump(), "history": history, "trainable_params": trainable,
            "total_params": total, "seconds": seconds, "best_val_ap": best,
            "train_sequences": len(train), "train_positives": int(pos)}
    return FinetuneResult(FineTunedModel(base, head, info), history, trainable, total, seconds, float(best))
