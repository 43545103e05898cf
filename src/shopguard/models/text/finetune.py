"""Fine-tuning all-MiniLM-L6-v2 as a text classifier, fully or with LoRA adapters (English).

``MiniLMClassifier`` is a scikit-learn style classifier (``fit(texts, y)``, ``predict_proba(texts)``):
the bundled MiniLM encoder, mean pooling over tokens (as the sentence embedding is defined) and a
linear head trained with cross-entropy. ``lora=True`` freezes the encoder and trains low-rank adapters
on the attention query/value projections (peft) plus the head: ~1% of the parameters, less to store,
and harder to overfit on small review sets.

On CPU fine-tuning is the slow part of the text models (about 0.3 s per review per epoch at 256
tokens on 2 cores), so ``epochs``, ``max_length`` and ``max_steps`` are explicit knobs. On a CUDA
machine (``device="auto"`` picks it) a fold of op_spam takes seconds; a fitted model pickles to CPU
tensors, so one trained on a GPU loads and scores on a CPU-only server.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Self

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from shopguard.errors import DataError, ModelError
from shopguard.models.text.encoders import check_texts, force_offline, masked_mean, minilm_path


def _build(lora: bool, r: int, alpha: int, dropout: float) -> tuple[Any, Any, Any]:
    force_offline()
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = str(minilm_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoder = AutoModel.from_pretrained(path)
    if lora:
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.05, target_modules=["query", "value"],
                         bias="none")
        encoder = get_peft_model(encoder, cfg)
    head = torch.nn.Sequential(torch.nn.Dropout(dropout), torch.nn.Linear(encoder.config.hidden_size, 2))
    return tokenizer, encoder, head


def _device(name: str | None) -> Any:
    import torch

    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {name!r}: CUDA is not available on this machine", field="device", value=name)
    return torch.device(name)


def _batches(lengths: np.ndarray, batch_size: int, bucket: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of shuffled batches; with ``bucket`` > 1, texts of similar length share a batch.

    Batches are padded to their longest text, so random batches of long reviews waste most of their
    compute on padding. Sorting within random pools of ``bucket`` batches (then shuffling the batches)
    keeps the epoch random while cutting the padding: about 40% less time on op_spam at 256 tokens.
    """
    order = rng.permutation(len(lengths))
    if bucket > 1:
        pool = batch_size * bucket
        order = np.concatenate([chunk[np.argsort(lengths[chunk], kind="stable")]
                                for chunk in np.array_split(order, max(1, -(-len(order) // pool)))])
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))] if bucket > 1 else batches


class MiniLMClassifier(BaseEstimator, ClassifierMixin):
    """all-MiniLM-L6-v2 + mean pooling + linear head, fine-tuned fully or with LoRA."""

    def __init__(self, lora: bool = False, epochs: int = 2, max_length: int = 256, batch_size: int = 16,
                 learning_rate: float | None = None, weight_decay: float = 0.01, warmup: float = 0.1,
                 lora_r: int = 8, lora_alpha: int = 16, dropout: float = 0.1, max_steps: int | None = None,
                 threads: int | None = None, bucket: int = 20, seed: int = 0,
                 device: str | None = "auto") -> None:
        self.lora = lora
        self.epochs = epochs
        self.max_length = max_length
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.warmup = warmup
        self.lora_r = lora_r
        self.lora_alpha = lora_alpha
        self.dropout = dropout
        self.max_steps = max_steps
        self.threads = threads
        self.bucket = bucket
        self.seed = seed
        self.device = device

    # -- training --------------------------------------------------------------------------------------
    def fit(self, X: Sequence[str], y: Sequence[int] | np.ndarray, progress: Any = None) -> Self:
        """Fine-tune on texts ``X`` with 0/1 labels ``y``; ``progress(step, total)`` is called per step."""
        import torch

        texts = check_texts(X)
        labels = np.asarray(y).astype(int)
        if len(texts) != len(labels):
            raise DataError(f"y: {len(labels)} labels for {len(texts)} texts", field="y")
        if set(np.unique(labels)) - {0, 1} or len(np.unique(labels)) < 2:
            raise DataError("y: needs both classes 0 and 1", field="y", value=np.unique(labels).tolist())
        if self.threads:
            torch.set_num_threads(self.threads)
        dev = _device(self.device)  # before loading anything: a bad device fails at once
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        self.tokenizer_, self.encoder_, self.head_ = _build(self.lora, self.lora_r, self.lora_alpha,
                                                            self.dropout)
        self.encoder_.to(dev)
        self.head_.to(dev)
        lr = self.learning_rate or (5e-4 if self.lora else 5e-5)
        params = [p for p in self.encoder_.parameters() if p.requires_grad] + list(self.head_.parameters())
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=self.weight_decay)
        steps_per_epoch = math.ceil(len(texts) / self.batch_size)
        total = steps_per_epoch * self.epochs
        if self.max_steps is not None:
            total = min(total, self.max_steps)
        warm = max(1, int(self.warmup * total))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
        loss_fn = torch.nn.CrossEntropyLoss()
        self.encoder_.train()
        self.head_.train()
        step = 0
        self.losses_: list[float] = []
        lengths = np.array([len(t) for t in texts])
        while step < total:
            for idx in _batches(lengths, self.batch_size, self.bucket, rng):
                batch = self.tokenizer_([texts[i] for i in idx], truncation=True, max_length=self.max_length,
                                        padding=True, return_tensors="pt").to(dev)
                hidden = self.encoder_(**batch).last_hidden_state
                logits = self.head_(masked_mean(hidden, batch["attention_mask"]))
                loss = loss_fn(logits, torch.as_tensor(labels[idx], device=dev))
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                self.losses_.append(float(loss.detach()))
                step += 1
                if progress is not None:
                    progress(step, total)
                if step >= total:
                    break
        self.encoder_.eval()
        self.head_.eval()
        self.classes_ = np.array([0, 1])
        return self

    # -- inference -------------------------------------------------------------------------------------
    def predict_proba(self, X: Sequence[str]) -> np.ndarray:
        import torch

        if not hasattr(self, "encoder_"):
            raise ModelError("MiniLMClassifier is not fitted: call fit() first")
        texts = check_texts(X)
        out = np.zeros((len(texts), 2), dtype=np.float64)
        dev = next(self.head_.parameters()).device
        order = np.argsort([len(t) for t in texts])  # similar lengths together: less padding
        with torch.inference_mode():
            for start in range(0, len(order), 32):
                idx = order[start:start + 32]
                batch = self.tokenizer_([texts[i] for i in idx], truncation=True, max_length=self.max_length,
                                        padding=True, return_tensors="pt").to(dev)
                hidden = self.encoder_(**batch).last_hidden_state
                logits = self.head_(masked_mean(hidden, batch["attention_mask"]))
                out[idx] = torch.softmax(logits, -1).double().cpu().numpy()
        return out

    def predict(self, X: Sequence[str]) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)

    # -- persistence: keep only what training changed --------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("tokenizer_", "encoder_", "head_")}
        if hasattr(self, "encoder_"):
            if self.lora:
                from peft import get_peft_model_state_dict

                enc = get_peft_model_state_dict(self.encoder_)
            else:
                enc = self.encoder_.state_dict()
            # CPU tensors: a model fine-tuned on a GPU must load on a CPU-only server
            state["_encoder_weights"] = {k: v.detach().cpu() for k, v in enc.items()}
            state["_head_weights"] = {k: v.detach().cpu() for k, v in self.head_.state_dict().items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        enc_w = state.pop("_encoder_weights", None)
        head_w = state.pop("_head_weights", None)
        state.setdefault("bucket", 1)  # models pickled before length bucketing existed
        state.setdefault("device", "auto")
        self.__dict__.update(state)
        if enc_w is None:
            return
        self.tokenizer_, self.encoder_, self.head_ = _build(self.lora, self.lora_r, self.lora_alpha,
                                                            self.dropout)
        if self.lora:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.encoder_, enc_w)
        else:
            self.encoder_.load_state_dict(enc_w)
        self.head_.load_state_dict(head_w)
        # a model trained on a GPU still loads where there is none: only "cpu" is kept as asked
        dev = _device("cpu" if self.device == "cpu" else "auto")
        self.encoder_.to(dev)
        self.head_.to(dev)
        self.encoder_.eval()
        self.head_.eval()
