"""The behaviour transformer: per-field embeddings, time-aware positions, causal attention blocks.

``BehaviourTransformer`` maps a window of field tokens (B, L, F) and time gaps (B, L) to hidden states
(B, L, D); position i only sees positions <= i (causal), padding is never attended to. Two sets of
per-field heads serve pretraining: ``mfm_heads`` predict masked fields of event i from h_i,
``next_heads`` predict the fields of event i+1 from h_i (which also gives the surprise score).
Linear layers are named like Hugging Face models (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``,
``fc1``, ``fc2``) so ``peft`` LoRA can target them.

``FoundationModel`` bundles the network with its fitted tokenizer and config; ``save``/``load``
write ``config.json``, ``tokenizer.json`` and ``model.safetensors`` into one folder.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch import nn

from shopguard.errors import ModelError
from shopguard.models.sequence.config import NetworkConfig
from shopguard.models.sequence.sequences import SequenceBatch, build_sequences
from shopguard.models.sequence.tokenizer import FIELDS, PAD, UNK, EventTokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
MODEL_TYPE = "shopguard-behaviour-transformer"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def _k(field: str) -> str:
    # ModuleDict keys may not shadow nn.Module attributes ("type" does).
    return "f_" + field


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast_dtype(device: torch.device, enabled: bool = True) -> torch.dtype | None:
    """bf16 where the GPU supports it, else fp16; None (full precision) on CPU or when disabled."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def inference_autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 (fp16) autocast for inference on CUDA, a no-op on CPU.

    Scoring on a GPU in fp32 leaves the tensor cores idle; the NLLs are computed from float32 logits
    either way (``field_nll`` upcasts), so bf16 only rounds the hidden states. CPU scoring is unchanged.
    """
    dtype = autocast_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = dropout
        self.use_sdpa = True  # export switches to the explicit form, which every ONNX opset has

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, length, d = x.shape
        h = self.n_heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, length, h, d // h).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        mask = allowed[:, None, :, :]
        if self.use_sdpa:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                               dropout_p=self.dropout if self.training else 0.0)
        else:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(d // h)
            scores = scores.masked_fill(~mask, -1e4)
            o = torch.softmax(scores, dim=-1) @ v
        return self.out_proj(o.transpose(1, 2).reshape(b, length, d))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_ff)
        self.fc2 = nn.Linear(cfg.d_ff, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), allowed))
        return x + self.drop(self.fc2(self.drop(F.gelu(self.fc1(self.ln2(x))))))


class BehaviourTransformer(nn.Module):
    """Causal transformer over windows of tokenized events."""

    def __init__(self, cfg: NetworkConfig, vocab_sizes: dict[str, int]) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_sizes = dict(vocab_sizes)
        d = cfg.d_model
        if cfg.field_combiner == "sum":
            self.embeddings = nn.ModuleDict({_k(f): nn.Embedding(vocab_sizes[f], d, padding_idx=PAD) for f in FIELDS})
            self.combine = nn.Identity()
        else:
            d_field = max(8, 2 * d // len(FIELDS))
            self.embeddings = nn.ModuleDict({_k(f): nn.Embedding(vocab_sizes[f], d_field, padding_idx=PAD) for f in FIELDS})
            self.combine = nn.Linear(d_field * len(FIELDS), d)
        self.position = nn.Embedding(cfg.max_len + 1, d)
        self.time = nn.Linear(1, d)  # continuous log time gap: time-aware positions
        self.ln_in = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_out = nn.LayerNorm(d)
        self.mfm_heads = nn.ModuleDict({_k(f): nn.Linear(d, vocab_sizes[f]) for f in FIELDS})
        self.next_heads = nn.ModuleDict({_k(f): nn.Linear(d, vocab_sizes[f]) for f in FIELDS})
        # Each field's table size (F,): an id outside it is read as UNK (``known_ids``). Not saved: it
        # follows from ``vocab_sizes``, so folders written before it load unchanged.
        self.register_buffer("vocab_limit", torch.tensor([vocab_sizes[f] for f in FIELDS], dtype=torch.long),
                             persistent=False)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def set_export_mode(self, on: bool = True) -> None:
        """Export-friendly forward: plain attention, and the 13 field embeddings as ONE table lookup.

        ONNX Runtime pays a fixed cost per node, and a served window is small. The fused lookup (every
        field's table stacked, ids shifted by each field's offset) replaces 13 slices, 13 gathers and
        their stacking with an add and one gather: a fusion graph went from 672 to 612 nodes and 10% less
        time per window. It gives the same vectors: the export tests compare the graph with this module's
        training-mode forward.
        """
        for m in self.modules():
            if isinstance(m, Attention):
                m.use_sdpa = not on
        self._fused = None
        if on:
            tables = [self.embeddings[_k(f)].weight.detach() for f in FIELDS]
            sizes = torch.tensor([0] + [t.shape[0] for t in tables[:-1]])
            self._fused = (torch.cat(tables, dim=0), torch.cumsum(sizes, dim=0))

    def known_ids(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` (..., F) with every id outside its field's table replaced by ``UNK``.

        The fitted tokenizer never emits such an id (unseen values are already ``UNK`` or a hash bucket),
        but windows can come from elsewhere (a tokenizer fitted on other events, a client's own tokens):
        they are read as "a value not seen in training" instead of failing, or, in the fused export lookup
        (``set_export_mode``), silently reading the next field's table. Same in PyTorch and ONNX.
        """
        return torch.where((tokens >= 0) & (tokens < self.vocab_limit), tokens, UNK)

    def encode(self, tokens: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, L, D) of windows ``tokens`` (B, L, F) with time gaps ``dt`` (B, L)."""
        b, length, _ = tokens.shape
        tokens = self.known_ids(tokens)
        fused = getattr(self, "_fused", None)
        if fused is not None:  # export mode: one lookup for every field (set_export_mode)
            table, offsets = fused
            found = F.embedding(tokens + offsets, table)  # (B, L, F, d)
            x = found.sum(dim=2) if self.cfg.field_combiner == "sum" else self.combine(found.flatten(2))
        else:
            embs = [self.embeddings[_k(f)](tokens[:, :, i]) for i, f in enumerate(FIELDS)]
            if self.cfg.field_combiner == "sum":
                x = torch.stack(embs, dim=0).sum(dim=0)
            else:
                x = self.combine(torch.cat(embs, dim=-1))
        pos = torch.arange(length, device=tokens.device) + (self.cfg.max_len + 1 - length)
        x = x + self.position(pos)[None, :, :] + self.time(dt.unsqueeze(-1) / 5.0)
        x = self.drop(self.ln_in(x))
        real = tokens[:, :, 0] != PAD
        idx = torch.arange(length, device=tokens.device)
        causal = idx[None, :] <= idx[:, None]  # (L, L): key <= query
        eye = idx[None, :] == idx[:, None]
        # A padded query attends to itself only, so no attention row is empty (no NaN).
        allowed = causal[None, :, :] & (real[:, None, :] | eye[None, :, :])
        for block in self.blocks:
            x = block(x, allowed)
        return self.ln_out(x)

    def field_nll(self, hidden: torch.Tensor, targets: torch.Tensor, heads: str = "next") -> torch.Tensor:
        """Per-field negative log-likelihood (N, F) of ``targets`` (N, F) from hidden states (N, D)."""
        table = self.next_heads if heads == "next" else self.mfm_heads
        targets = self.known_ids(targets)
        out = [F.cross_entropy(table[_k(f)](hidden).float(), targets[:, i], reduction="none") for i, f in enumerate(FIELDS)]
        return torch.stack(out, dim=1)

    def field_surprise(self, tokens: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        """Per-field NLL (B, F) of the last event's fields given only the events before it."""
        hidden = self.encode(tokens, dt)
        return self.field_nll(hidden[:, -2, :], tokens[:, -1, :], "next")

    def surprise(self, tokens: torch.Tensor, dt: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """NLL of the last event given its history, summed over fields (``weights``: (F,) per field): (B,)."""
        nll = self.field_surprise(tokens, dt)
        return (nll * weights).sum(dim=1) if weights is not None else nll.sum(dim=1)

    def embed(self, tokens: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        """Sequence embedding: the hidden state of the last (target) event, (B, D)."""
        return self.encode(tokens, dt)[:, -1, :]


def field_weights(fields: Sequence[str] | None) -> torch.Tensor | None:
    """(F,) 0/1 weights selecting ``fields`` (None: all fields)."""
    if fields is None:
        return None
    unknown = [f for f in fields if f not in FIELDS]
    if unknown:
        raise ModelError(f"unknown token field {unknown[0]!r} (fields: {', '.join(FIELDS)})", field="fields",
                         value=unknown[0])
    return torch.tensor([1.0 if f in fields else 0.0 for f in FIELDS])


class FoundationModel:
    """A pretrained behaviour transformer with the tokenizer and config it was trained with."""

    def __init__(self, config: NetworkConfig, tokenizer: EventTokenizer, network: BehaviourTransformer | None = None,
                 metadata: dict[str, Any] | None = None) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.network = network or BehaviourTransformer(config, tokenizer.vocab_sizes)
        self.metadata = metadata or {}

    @property
    def max_len(self) -> int:
        return self.config.max_len

    def n_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.network.parameters() if p.requires_grad or not trainable_only)

    def build(self, events: pl.DataFrame, target_event_ids: Any = None) -> SequenceBatch:
        """Windows for target events with this model's tokenizer and ``max_len``."""
        return build_sequences(events, target_event_ids, self.max_len, self.tokenizer)

    # -- inference helpers ---------------------------------------------------------------------------
    @torch.no_grad()
    def _batched(self, batch: SequenceBatch, fn: Any, batch_size: int = 512, device: str = "auto") -> np.ndarray:
        dev = resolve_device(device)
        net = self.network.to(dev)
        was_training = net.training
        net.eval()
        outs = []
        for s in range(0, len(batch), batch_size):
            tok = torch.from_numpy(batch.tokens[s:s + batch_size]).to(dev)
            dt = torch.from_numpy(batch.dt[s:s + batch_size]).to(dev)
            with inference_autocast(dev):
                out = fn(net, tok, dt)
            outs.append(out.float().cpu().numpy())
        net.train(was_training)
        if not outs:
            return np.zeros((0,), dtype=np.float32)
        return np.concatenate(outs, axis=0)

    def surprise(self, batch: SequenceBatch, fields: Sequence[str] | None = None, **kw: Any) -> np.ndarray:
        """Negative log-likelihood of each target event given its history (higher = more unusual).

        ``fields`` restricts the sum to some fields (e.g. leave out what a user happens to browse).
        """
        w = field_weights(fields)
        return self._batched(batch, lambda n, t, d: n.surprise(t, d, None if w is None else w.to(t.device)), **kw)

    def field_surprise(self, batch: SequenceBatch, **kw: Any) -> np.ndarray:
        """Per-field NLL (B, F) of each target event given its history (columns in ``FIELDS`` order)."""
        out = self._batched(batch, lambda n, t, d: n.field_surprise(t, d), **kw)
        return out.reshape(len(batch), len(FIELDS))

    def embeddings(self, batch: SequenceBatch, **kw: Any) -> np.ndarray:
        out = self._batched(batch, lambda n, t, d: n.embed(t, d), **kw)
        return out.reshape(len(batch), self.config.d_model)

    # -- persistence ---------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(path)
        cfg = {"model_type": MODEL_TYPE, "network": self.config.model_dump(),
               "vocab_sizes": self.network.vocab_sizes, "n_parameters": self.n_parameters(),
               "metadata": self.metadata}
        (path / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, default=str))
        state = {k: v.detach().cpu().contiguous() for k, v in self.network.state_dict().items()}
        save_file(state, str(path / WEIGHTS_FILE))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> FoundationModel:
        from safetensors.torch import load_file

        path = Path(folder)
        if not (path / CONFIG_FILE).exists() or not (path / WEIGHTS_FILE).exists():
            raise ModelError(f"no pretrained sequence model at {path} ({CONFIG_FILE} / {WEIGHTS_FILE} missing)",
                             field="pretrained", value=str(path))
        try:
            cfg = json.loads((path / CONFIG_FILE).read_text())
            if cfg.get("model_type") != MODEL_TYPE:
                raise ModelError(f"{path} holds a {cfg.get('model_type')!r}, not a {MODEL_TYPE}", field="pretrained")
            config = NetworkConfig(**cfg["network"])
            tokenizer = EventTokenizer.load(path)
            net = BehaviourTransformer(config, tokenizer.vocab_sizes)
            net.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"pretrained sequence model at {path} is unreadable: {exc}", field="pretrained",
                             value=str(path)) from exc
        return cls(config, tokenizer, net, cfg.get("metadata", {}))
