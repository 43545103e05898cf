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


def test_minilm_layers_reads_every_layer_mean_and_max() -> None:
    import torch

    enc = shared_encoder("minilm_layers")
    texts = ["Great room, friendly staff.", "Terrible service, we will never come back.", ""]
    emb = enc.encode(texts)
    assert emb.shape == (3, 6 * 2 * 384) and enc.dim == emb.shape[1]
    assert not emb[2].any()  # empty text: zero row, like the other encoders
    # The block for the last layer's mean is what the sentence embedding normalises: check it against
    # the model run directly on one text (no padding involved).
    with torch.inference_mode():
        batch = enc.tokenizer(texts[:1], return_tensors="pt")
        hidden = enc.model(**batch, output_hidden_states=True).hidden_states
    last_mean = hidden[6][0].mean(0).numpy()
    first_max = hidden[1][0].amax(0).numpy()
    np.testing.assert_allclose(emb[0, 10 * 384:11 * 384], last_mean, atol=1e-4)
    np.testing.assert_allclose(emb[0, 384:2 * 384], first_max, atol=1e-4)
    # Padding in a batch with a longer text does not change a row.
    np.testing.assert_allclose(enc._encode_uncached(texts[:2])[0], emb[0], atol=1e-4)


def test_unknown_encoder_and_bad_texts() -> None:
    with pytest.raises(ValidationFailed, match="encoder"):
        shared_encoder("bert-large")
    with pytest.raises(ValidationFailed, match=r"text\[1\]"):
        shared_encoder("use").encode(["ok", 5])  # type: ignore[list-item]
