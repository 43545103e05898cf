from __future__ import annotations

import numpy as np
import pytest

from shopguard.errors import ValidationFailed
from shopguard.models.text.encoders import minilm_path, shared_encoder


def test_minilm_weights_are_bundled() -> None:
    assert (minilm_path() / "config.json").exists()


def test_use_is_multilingual_and_normalised() -> None:
    enc = shared_encoder("use")
    emb = enc.encode(["The package never arrived.", "包裹一直没有到。", "I love this red dress.", ""])
    assert emb.shape == (4, 512)
    np.testing.assert_allclose(np.linalg.norm(emb[:3], axis=1), 1.0, atol=1e-4)
    assert not emb[3].any()  # empty text: zero vector
    same, unrelated = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert same > unrelated + 0.2


def test_minilm_embeddings_and_cache() -> None:
    enc = shared_encoder("minilm")
    a = enc.encode(["Great room, friendly staff.", "Terrible service."])
    b = enc.encode(["Great room, friendly staff."])  # from the cache: identical
    assert a.shape == (2, 384)
    np.testing.assert_array_equal(a[0], b[0])
    assert shared_encoder("minilm") is enc


def test_unknown_encoder_and_bad_texts() -> None:
    with pytest.raises(ValidationFailed, match="encoder"):
        shared_encoder("bert-large")
    with pytest.raises(ValidationFailed, match=r"text\[1\]"):
        shared_encoder("use").encode(["ok", 5])  # type: ignore[list-item]
