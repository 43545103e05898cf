"""Typed configuration of the behaviour foundation model: network size, pretraining and fine-tuning.

Three network presets: ``tiny`` (trains on one CPU core in minutes, the default), ``base`` and
``large`` (tens of millions of parameters, meant for a GPU). Unknown keys are rejected.

>>> preset("tiny").d_model, preset("large").n_layers
(64, 8)
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shopguard.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenizerConfig(_Strict):
    """How events become field tokens; the fitted vocabularies are saved with the model."""

    merchant_buckets: int = Field(1024, ge=8, description="Hashed buckets for merchant_id.")
    item_buckets: int = Field(1024, ge=8, description="Hashed buckets for item_id.")
    max_categories: int = Field(256, ge=1, description="Most frequent categories kept; others are UNK.")
    min_count: int = Field(2, ge=1, description="Values seen fewer times than this in training are UNK.")
    amount_buckets: int = Field(32, ge=2, description="Quantile buckets of log(1 + amount).")


class NetworkConfig(_Strict):
    """Size and shape of the causal transformer over a user's last ``max_len`` events."""

    d_model: int = Field(64, ge=8)
    n_layers: int = Field(2, ge=1)
    n_heads: int = Field(4, ge=1)
    d_ff: int = Field(128, ge=8)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    max_len: int = Field(64, ge=2, description="Events of history per sequence (the target included).")
    field_combiner: Literal["sum", "concat"] = Field(
        "sum", description="How the per-field embeddings of one event become one vector."
    )
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)

    @model_validator(mode="after")
    def _heads_divide(self) -> NetworkConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        return self


class PretrainConfig(_Strict):
    """Self-supervised pretraining: masked field modelling + next-event prediction."""

    epochs: int = Field(3, ge=1)
    batch_size: int = Field(64, ge=1, description="Sequences per step on CPU.")
    gpu_batch_size: int = Field(512, ge=1, description="Sequences per step when CUDA is present.")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_frac: float = Field(0.05, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    mask_prob: float = Field(0.15, gt=0, lt=1, description="Share of field tokens masked for MFM.")
    mfm_weight: float = Field(1.0, ge=0)
    next_weight: float = Field(1.0, ge=0)
    seed: int = 7
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    mixed_precision: bool = Field(True, description="bf16/fp16 autocast on CUDA (ignored on CPU).")
    max_sequences: int | None = Field(None, ge=1, description="Cap on training windows per epoch.")
    max_steps: int | None = Field(None, ge=1, description="Stop this run after N steps (time-boxed runs; "
                                  "--resume continues from the checkpoint).")
    checkpoint_every: int = Field(500, ge=1, description="Steps between checkpoints (and every epoch end).")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads (None: leave as is).")

    @model_validator(mode="after")
    def _some_objective(self) -> PretrainConfig:
        if self.mfm_weight == 0 and self.next_weight == 0:
            raise ValueError("at least one of mfm_weight / next_weight must be positive")
        return self


class FinetuneConfig(_Strict):
    """Fine-tuning a classification head (and the encoder, fully or through LoRA) on event labels."""

    method: Literal["full", "lora", "frozen"] = "full"
    # CPU-sized defaults: a few epochs with early stopping and negatives subsampled per epoch (the old
    # 10 epochs over every row took > 8 minutes for a 600-user shop on one core).
    epochs: int = Field(4, ge=1)
    batch_size: int = Field(64, ge=1)
    gpu_batch_size: int = Field(512, ge=1)
    lr: float = Field(1e-3, gt=0, description="Head (and LoRA) learning rate.")
    encoder_lr: float = Field(3e-4, gt=0, description="Encoder learning rate for full fine-tuning.")
    weight_decay: float = Field(0.01, ge=0)
    head_dropout: float = Field(0.1, ge=0, lt=1)
    patience: int = Field(2, ge=1, description="Epochs without a better validation AP before stopping.")
    val_frac: float = Field(0.2, gt=0, lt=1, description="Latest share of targets (by time) for validation.")
    freeze_embeddings: bool = Field(False, description="Keep the field embeddings fixed (full method).")
    freeze_layers: int = Field(0, ge=0, description="Keep the first N transformer blocks fixed (full).")
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    balance: bool = Field(True, description="Weight positives by the class ratio (capped at 50).")
    head_hidden: int | None = Field(None, ge=0, description="Hidden width of the head (None: d_model; 0: linear).")
    aux_weight: float = Field(0.0, ge=0, description="Weight of the pretraining loss (masked fields + next "
                              "event) on unlabeled windows, kept as an auxiliary objective (full / lora).")
    max_negatives: int | None = Field(2000, ge=1, description="Negatives drawn afresh each epoch (all "
                                      "positives kept): faster epochs on large, imbalanced sets.")
    probe: bool = Field(False, description="Fit the linear head exactly first (L-BFGS, L2 1/head_c; needs "
                        "head_hidden=0); frozen: that is the model, full / lora: fine-tune from it (LP-FT).")
    head_c: float = Field(0.1, gt=0, description="Inverse L2 strength of the linear probe (scikit-learn's C).")
    min_val_positives: int = Field(1, ge=0, description="Fewer positives than this in the validation "
                                   "slice: no early stopping, train on every labelled row for `epochs`.")
    refit: bool = Field(False, description="After early stopping, train again on every labelled row "
                        "(validation slice included) for the chosen number of epochs.")
    seed: int = 7
    device: str = "auto"
    mixed_precision: bool = True
    num_threads: int | None = Field(None, ge=1)


# Fusion fine-tuning defaults, settled on a simulator seed other than the benchmark's (see
# docs/foundation-model.md): an exact linear probe on [hidden state, standardised features, surprise],
# then (full / lora) a short joint fine-tuning from it at a low encoder learning rate; early stopping
# only when the time-held-out validation slice holds at least 5 positives.
FUSION_DEFAULTS: dict[str, object] = {
    "head_hidden": 0, "probe": True, "head_c": 0.1, "epochs": 3, "lr": 1e-3, "encoder_lr": 1e-4,
    "min_val_positives": 5, "max_negatives": 2000,
}


def fusion_config(method: str = "frozen", **overrides: object) -> FinetuneConfig:
    """``FinetuneConfig`` for fusion fine-tuning (``FUSION_DEFAULTS`` with ``overrides`` applied)."""
    return FinetuneConfig(**{**FUSION_DEFAULTS, "method": method, **overrides})


PRESETS: dict[str, dict] = {
    "tiny": {"d_model": 64, "n_layers": 2, "n_heads": 4, "d_ff": 128, "max_len": 64},
    "base": {"d_model": 256, "n_layers": 4, "n_heads": 8, "d_ff": 1024, "max_len": 128},
    # ~27M parameters in the blocks: pretrain on a GPU.
    "large": {"d_model": 512, "n_layers": 8, "n_heads": 8, "d_ff": 2048, "max_len": 256,
              "tokenizer": {"merchant_buckets": 8192, "item_buckets": 8192, "max_categories": 1024}},
}


def preset(name: str, **overrides: object) -> NetworkConfig:
    """The named network preset (``tiny``, ``base``, ``large``) with keyword overrides applied."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model config {name!r} (choose from {', '.join(PRESETS)})",
                          field="config", value=name)
    return NetworkConfig(**{**PRESETS[name], **overrides})
