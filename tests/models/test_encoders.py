"""`TextEncoder` (text2brain.models.encoders) on the tiny BERT and the default MiniLM, offline:
shapes, pooling, freezing, options, bf16, other architectures and load errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from text2brain.models.encoders import TextEncoder
from text2brain.tokens import DEFAULT_ENCODER, load_tokenizer, tokenize

# -- TextEncoder -------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["mean", "cls", "pooler"])
def test_text_encoder_shapes(tiny_bert: Path, tiny_tokenizer, pooling: str) -> None:
    encoder = TextEncoder(str(tiny_bert), pooling=pooling).eval()
    batch = tokenize(tiny_tokenizer, ["working memory", "pain in the insula", "fear"], 16)
    assert "token_type_ids" in batch
    out = encoder(**batch)
    assert encoder.dim == 32
    assert out.shape == (3, 32)
    assert torch.isfinite(out).all()


def test_mean_pooling_ignores_padding(tiny_bert: Path, tiny_tokenizer) -> None:
    encoder = TextEncoder(str(tiny_bert), pooling="mean").eval()
    short = "working memory"
    alone = tokenize(tiny_tokenizer, [short], 32)
    padded = tokenize(tiny_tokenizer, [short, "the prefrontal cortex and the amygdala in fear"], 32)
    assert padded["attention_mask"][0].sum() < padded["attention_mask"].shape[1]  # really padded
    with torch.no_grad():
        a = encoder(**alone)[0]
        b = encoder(**padded)[0]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_freezing(tiny_bert: Path) -> None:
    encoder = TextEncoder(str(tiny_bert), freeze_embeddings=True, freeze_layers=1)
    model = encoder.model
    assert not any(p.requires_grad for p in model.embeddings.parameters())
    assert not any(p.requires_grad for p in model.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in model.encoder.layer[1].parameters())
    # The pooler is unused by mean pooling, so it is frozen (DDP needs every trainable
    # parameter to get a gradient); with pooling="pooler" it trains.
    assert not any(p.requires_grad for p in model.pooler.parameters())
    unfrozen = TextEncoder(str(tiny_bert))
    assert all(p.requires_grad for n, p in unfrozen.named_parameters() if ".pooler." not in n)
    pooled = TextEncoder(str(tiny_bert), pooling="pooler")
    assert all(p.requires_grad for p in pooled.parameters())
    with pytest.raises(ValueError, match="only 2 layers"):
        TextEncoder(str(tiny_bert), freeze_layers=3)


def test_text_encoder_options(tiny_bert: Path, tiny_tokenizer) -> None:
    with pytest.raises(ValueError, match=r"unknown pooling 'max'.*'cls', 'pooler', 'mean'"):
        TextEncoder(str(tiny_bert), pooling="max")
    random = TextEncoder(str(tiny_bert), pretrained=False, gradient_checkpointing=True).train()
    batch = tokenize(tiny_tokenizer, ["fear", "reward and language"], 16)
    out = random(**batch, length=torch.tensor([3, 5]))  # unknown tokenizer keys are dropped
    out.sum().backward()
    assert out.shape == (2, 32)
    assert all(p.grad is not None for p in random.model.encoder.layer.parameters())
    assert random.max_length == 64  # the tiny tokenizer has no limit; positions do
    model = random.model
    assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing


def test_text_encoder_bf16_autocast(tiny_bert: Path, tiny_tokenizer) -> None:
    encoder = TextEncoder(str(tiny_bert))
    batch = tokenize(tiny_tokenizer, ["fear", "reward and language"], 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = encoder(**batch)
    out.float().square().sum().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters() if p.grad is not None)


def test_missing_pooler_weights_warn(tiny_bert: Path, tmp_path: Path) -> None:
    from transformers import BertModel

    BertModel.from_pretrained(tiny_bert, add_pooling_layer=False).save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="no trained pooler weights"):
        TextEncoder(str(tmp_path), pooling="pooler")


def test_non_bert_architecture(tiny_bert: Path, tiny_tokenizer, tmp_path: Path) -> None:
    from transformers import DistilBertConfig, DistilBertModel

    config = DistilBertConfig(
        vocab_size=len(tiny_tokenizer), dim=32, n_layers=2, n_heads=2, hidden_dim=64
    )
    DistilBertModel(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="has none; use pooling='mean' or 'cls'"):
        TextEncoder(str(tmp_path), pooling="pooler")
    encoder = TextEncoder(str(tmp_path), freeze_layers=1).eval()
    assert not any(p.requires_grad for p in encoder.model.transformer.layer[0].parameters())
    batch = tokenize(tiny_tokenizer, ["fear", "pain"], 16)
    assert encoder(**batch).shape == (2, 32)  # token_type_ids dropped, DistilBERT takes none
    encoder.model.transformer = torch.nn.Identity()
    with pytest.raises(ValueError, match="BERT-like models only"):
        encoder.layers()


def test_load_errors_are_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(OSError, match="Could not load the tokenizer for .*no-such-model") as err:
        load_tokenizer(missing)
    assert DEFAULT_ENCODER in str(err.value) and err.value.__cause__ is not None
    with pytest.raises(OSError, match="Could not load the model for .*no-such-model"):
        TextEncoder(missing)


def test_default_minilm_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    encoder = TextEncoder().eval()
    batch = tokenize(encoder.tokenizer, ["working memory"], encoder.max_length)
    with torch.no_grad():
        out = encoder(**batch)
    assert encoder.dim == 384 and out.shape == (1, 384)
    assert encoder.max_length == 256  # sentence-transformers max_seq_length
    assert torch.isfinite(out).all() and out.norm() > 0


def test_pretrained_encoder_starts_in_train_mode(tiny_bert: Path) -> None:
    """Hugging Face loads models in eval mode; ours must train with dropout like any module."""
    encoder = TextEncoder(str(tiny_bert), pretrained=True)
    assert encoder.training and all(m.training for m in encoder.modules())
