"""Review-risk detector: is this review text fake (deceptive, bought, templated)? Higher = riskier.

Components, each a text classifier with probabilities:

- ``ngram``: TF-IDF word + character n-grams and a logistic regression (en + zh; jieba for Chinese).
  The classic strong baseline on deceptive reviews (Ott et al. 2011).
- ``ngram_nb``: NB-SVM style: binary word 1-2-gram presence scaled by naive-Bayes log-count ratios
  and a logistic regression (Wang & Manning 2012); a second n-gram view for the stacker.
- ``use``: frozen multilingual Universal Sentence Encoder v3 embeddings + logistic head (en + zh).
- ``minilm``: frozen all-MiniLM-L6-v2 embeddings + logistic head (English).
- ``minilm_layers``: the same frozen network, every layer's mean and max pooled token vectors,
  standardised, + logistic head (English): writing style rather than meaning, and no fine-tuning.
- ``minilm_ft``: MiniLM fine-tuned end to end (English).
- ``minilm_lora``: MiniLM fine-tuned with LoRA adapters (English).

A logistic-regression stacker over the components' logits combines them into one calibrated
probability. It is trained only on predictions for texts the component did not see: out-of-fold
predictions (``stack_folds``-fold) for the cheap components, and a stratified hold-out
(``finetune_holdout``) for the fine-tuned ones, which are too slow on CPU to train once per fold; when
a fine-tuned component is on, the stacker learns from the hold-out rows. English-only components give
the neutral logit 0 on other languages, so the stacker falls back to the multilingual ones there.

>>> det = ReviewRiskDetector(components=("ngram",), stack_folds=2)
>>> texts = ["best hotel ever!!! amazing amazing", "room was fine, a bit noisy at night"] * 6
>>> bool(det.fit(texts, [1, 0] * 6).score(["amazing amazing best hotel"])[0] > 0.5)
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Self

import numpy as np
import polars as pl
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from shopguard.errors import DataError, ValidationFailed
from shopguard.models.base import Detector
from shopguard.models.text.encoders import shared_encoder
from shopguard.models.text.finetune import MiniLMClassifier
from shopguard.models.text.inputs import as_labels, as_texts
from shopguard.models.text.ngrams import ngram_classifier

COMPONENTS = ("ngram", "ngram_nb", "use", "minilm", "minilm_layers", "minilm_ft", "minilm_lora")
ENGLISH_ONLY = frozenset({"minilm", "minilm_layers", "minilm_ft", "minilm_lora"})
FINETUNED = frozenset({"minilm_ft", "minilm_lora"})
DEFAULT_COMPONENTS = ("ngram", "use", "minilm_layers")
_EPS = 1e-4


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


class _EmbeddingHead:
    """Frozen encoder embeddings + a logistic regression (picklable; the encoder is shared, not stored).

    ``standardize`` scales each embedding column first: needed for the layer-pooled MiniLM features,
    whose columns (means and maxima of different layers) live on very different scales.
    """

    def __init__(self, encoder: str, C: float, seed: int, standardize: bool = False) -> None:
        self.encoder = encoder
        self.C = C
        self.seed = seed
        self.standardize = standardize

    def fit(self, texts: list[str], y: np.ndarray) -> _EmbeddingHead:
        emb = shared_encoder(self.encoder).encode(texts)
        linear = LogisticRegression(C=self.C, max_iter=3000, random_state=self.seed)
        self.model_ = make_pipeline(StandardScaler(), linear) if self.standardize else linear
        self.model_.fit(emb, y)
        return self

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return self.model_.predict_proba(shared_encoder(self.encoder).encode(texts))


class ReviewRiskDetector(Detector):
    """Fake-review text detector: n-grams, frozen encoders, fine-tuned MiniLM, calibrated stacking.

    ``fit(X, y)`` takes texts (list/array/Series) or a frame with a ``text`` column (and optionally
    ``language`` and ``label``); ``score(X)`` returns the stacked probability that a review is fake.
    """

    name: ClassVar[str] = "review_text"
    supervised: ClassVar[bool] = True

    def __init__(self, components: Sequence[str] = DEFAULT_COMPONENTS, stack_folds: int = 5,
                 finetune_holdout: float = 0.2, ngram_C: float = 10.0, ngram_nb_C: float = 0.1,
                 embedding_C: float = 10.0, layers_C: float = 0.01,
                 finetune_epochs: int = 2, finetune_max_length: int = 256, finetune_batch_size: int = 16,
                 finetune_max_steps: int | None = None, min_english: int = 20, seed: int = 0) -> None:
        self.components = components
        self.stack_folds = stack_folds
        self.finetune_holdout = finetune_holdout
        self.ngram_C = ngram_C
        self.ngram_nb_C = ngram_nb_C
        self.embedding_C = embedding_C
        self.layers_C = layers_C
        self.finetune_epochs = finetune_epochs
        self.finetune_max_length = finetune_max_length
        self.finetune_batch_size = finetune_batch_size
        self.finetune_max_steps = finetune_max_steps
        self.min_english = min_english
        self.seed = seed

    # -- building blocks -------------------------------------------------------------------------------
    def _validate(self) -> list[str]:
        comps = list(self.components)
        unknown = [c for c in comps if c not in COMPONENTS]
        if not comps or unknown:
            raise ValidationFailed(f"components: unknown {unknown} (choose from {', '.join(COMPONENTS)})",
                                   field="components", value=comps)
        if not 0.05 <= self.finetune_holdout <= 0.5:
            raise ValidationFailed("finetune_holdout: must be between 0.05 and 0.5", field="finetune_holdout",
                                   value=self.finetune_holdout)
        if self.stack_folds < 2:
            raise ValidationFailed("stack_folds: must be at least 2", field="stack_folds",
                                   value=self.stack_folds)
        return comps

    def _new(self, comp: str) -> Any:
        if comp == "ngram":
            return ngram_classifier(C=self.ngram_C, seed=self.seed)
        if comp == "ngram_nb":
            return ngram_classifier(C=self.ngram_nb_C, seed=self.seed, kind="nb")
        if comp in ("use", "minilm"):
            return _EmbeddingHead(comp, self.embedding_C, self.seed)
        if comp == "minilm_layers":
            return _EmbeddingHead(comp, self.layers_C, self.seed, standardize=True)
        return MiniLMClassifier(lora=comp == "minilm_lora", epochs=self.finetune_epochs,
                                max_length=self.finetune_max_length, batch_size=self.finetune_batch_size,
                                max_steps=self.finetune_max_steps, seed=self.seed)

    @staticmethod
    def _fit_one(model: Any, texts: list[str], y: np.ndarray, progress: Callable[..., Any] | None) -> Any:
        if isinstance(model, MiniLMClassifier):
            return model.fit(texts, y, progress=progress)
        return model.fit(texts, y)

    # -- the contract ----------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None, progress: Callable[[str, int, int], Any] | None = None) -> Self:
        """Fit every component and the stacker; ``progress(component, step, total)`` reports fine-tuning."""
        comps = self._validate()
        texts, langs = as_texts(X)
        labels = as_labels(y, len(texts), X)
        if len(np.unique(labels)) < 2 or np.bincount(labels).min() < self.stack_folds:
            raise DataError(f"y: need at least {self.stack_folds} reviews of each class to fit, got "
                            f"{np.bincount(labels, minlength=2).tolist()}", field="y")
        n = len(texts)
        is_en = np.array([lang == "en" for lang in langs])
        en_ok = is_en.sum() >= self.min_english and np.bincount(labels[is_en], minlength=2).min() >= 2
        active = [c for c in comps if c not in ENGLISH_ONLY or en_ok]
        self.skipped_ = [c for c in comps if c not in active]
        if not active:
            raise DataError(f"components: all of {comps} need >= {self.min_english} English reviews of both "
                            "classes", field="components")
        finetuned = [c for c in active if c in FINETUNED]
        holdout = np.zeros(n, dtype=bool)
        if finetuned:
            _, ho = train_test_split(np.arange(n), test_size=self.finetune_holdout, stratify=labels,
                                     random_state=self.seed)
            holdout[ho] = True
        oof = np.zeros((n, len(active)))
        self.models_: dict[str, Any] = {}
        for j, comp in enumerate(active):
            rows = np.flatnonzero(is_en) if comp in ENGLISH_ONLY else np.arange(n)
            sub_texts = [texts[i] for i in rows]
            sub_y = labels[rows]
            cb = (lambda s, t, c=comp: progress(c, s, t)) if progress else None
            if comp in FINETUNED:
                train_rows = rows[~holdout[rows]]
                model = self._fit_one(self._new(comp), [texts[i] for i in train_rows], labels[train_rows], cb)
                pred_rows = rows[holdout[rows]]
                if len(pred_rows):
                    oof[pred_rows, j] = logit(model.predict_proba([texts[i] for i in pred_rows])[:, 1])
            else:
                folds = StratifiedKFold(min(self.stack_folds, int(np.bincount(sub_y).min())), shuffle=True,
                                        random_state=self.seed)
                for tr, te in folds.split(np.zeros(len(rows)), sub_y):
                    m = self._fit_one(self._new(comp), [sub_texts[i] for i in tr], sub_y[tr], None)
                    oof[rows[te], j] = logit(m.predict_proba([sub_texts[i] for i in te])[:, 1])
                model = self._fit_one(self._new(comp), sub_texts, sub_y, None)
            self.models_[comp] = model
            if progress:
                progress(comp, 1, 1)
        stack_rows = holdout if finetuned else np.ones(n, dtype=bool)
        if len(np.unique(labels[stack_rows])) < 2:
            raise DataError("y: the stacking rows hold one class only; give more labelled reviews", field="y")
        self.component_names_ = active
        self.stacker_ = LogisticRegression(C=1.0, max_iter=1000).fit(oof[stack_rows], labels[stack_rows])
        self.n_train_ = n
        return self

    def score_components(self, X: Any) -> dict[str, np.ndarray]:
        """Each component's probability per text; ``NaN`` where an English-only component does not apply."""
        self.check_fitted()
        texts, langs = as_texts(X)
        is_en = np.array([lang == "en" for lang in langs], dtype=bool)
        out: dict[str, np.ndarray] = {}
        for comp in self.component_names_:
            p = np.full(len(texts), np.nan)
            rows = np.flatnonzero(is_en) if comp in ENGLISH_ONLY else np.arange(len(texts))
            if len(rows):
                p[rows] = self.models_[comp].predict_proba([texts[i] for i in rows])[:, 1]
            out[comp] = p
        return out

    def _stack_features(self, comps: dict[str, np.ndarray]) -> np.ndarray:
        # A component that did not apply (NaN: English-only model, other language) gives logit 0.
        return np.column_stack([np.where(np.isnan(comps[c]), 0.0, logit(np.nan_to_num(comps[c], nan=0.5)))
                                for c in self.component_names_])

    def score(self, X: Any) -> np.ndarray:
        """Calibrated probability that each review is fake (higher = riskier)."""
        comps = self.score_components(X)
        return self.stacker_.predict_proba(self._stack_features(comps))[:, 1]

    def score_all(self, X: Any) -> dict[str, np.ndarray]:
        """Component probabilities plus ``ensemble``, computing each component once."""
        comps = self.score_components(X)
        comps["ensemble"] = self.stacker_.predict_proba(self._stack_features(comps))[:, 1]
        return comps

    def explain(self, X: Any) -> pl.DataFrame:
        """Each component's contribution to the ensemble logit (coefficient x component logit)."""
        feats = self._stack_features(self.score_components(X))
        contrib = feats * self.stacker_.coef_[0]
        return pl.DataFrame({c: contrib[:, j] for j, c in enumerate(self.component_names_)})



__all__ = ["COMPONENTS", "DEFAULT_COMPONENTS", "ReviewRiskDetector"]
