"""`TextEncoderHead`: what the heads that read text with a transformer share.

Text2Brain, CLIP and MNM keep their transformer at ``self.net.text_encoder``. This base gives
them one tokenisation path and one way to turn texts into the encoder's pooled vectors:

- a trained encoder runs on the batch's tokens, with gradients, as any layer;
- a frozen encoder (no parameter trained: `freeze_embeddings` and `freeze_layers` = all layers)
  is a fixed function, kept in eval mode (no dropout), and with `embedding_cache` on (the
  default) its vectors of every text the sampler can draw are computed once at fit start and
  memory-mapped from the cache folder (text2brain.models.embedding_cache); texts outside that
  set are encoded live, so results are the same with and without the cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from text2brain.models.base import BrainMapModule
from text2brain.models.embedding_cache import (
    EmbeddingCache,
    cache_key,
    is_frozen,
    open_or_build,
    tokenizer_fingerprint,
)
from text2brain.models.encoders import TextEncoder
from text2brain.models.formats import state_fingerprint
from text2brain.models.settings import OptimSettings, TextEncoderSettings, as_settings
from text2brain.paths import cache_dir
from text2brain.tokens import token_lengths


class TextEncoderHead(BrainMapModule):
    """Base of the heads whose text side is a `TextEncoder` at ``self.net.text_encoder``.

    Args:
        text: the text encoder (text2brain.models.settings.TextEncoderSettings).
        optim: the optimisation (text2brain.models.settings.OptimSettings); None for a head
            that is not trained by gradient.
    """

    #: The frozen encoder's vectors of the data's texts, attached at fit start (or None).
    text_cache: EmbeddingCache | None = None

    def __init__(
        self, text: TextEncoderSettings | None = None, optim: OptimSettings | None = None
    ) -> None:
        super().__init__()
        self.text_settings = as_settings(TextEncoderSettings, text)
        self.optim_settings = None if optim is None else as_settings(OptimSettings, optim)

    @property
    def text_encoder(self) -> TextEncoder:
        return self.net.text_encoder

    @property
    def encoder_frozen(self) -> bool:
        """Whether the text encoder is a fixed function (no parameter of it is trained)."""
        return is_frozen(self.text_encoder)

    def train(self, mode: bool = True) -> TextEncoderHead:
        """Train mode for the head; a frozen encoder stays in eval mode (no dropout noise)."""
        super().train(mode)
        if mode and getattr(self, "net", None) is not None and self.encoder_frozen:
            self.text_encoder.eval()
        return self

    # -- texts -> pooled encoder vectors ------------------------------------------------------
    def tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        return self.text_encoder.tokenize(texts, self.text_settings.max_length)

    def text_features(self, batch: dict[str, Any]) -> Tensor:
        """Pooled encoder vectors (batch, dim) of the batch's texts (its `tokens` if any)."""
        if self.encoder_frozen:
            return self.encode_texts(batch["text"])
        tokens = batch.get("tokens") or self.tokenize(batch["text"])
        return self.text_encoder(**tokens)

    def encode_texts(self, texts: list[str], batch_size: int = 128) -> Tensor:
        """Vectors of the encoder in eval mode, without gradients: rows of the cache where
        there is one, the other texts encoded live (the readout fit, a frozen encoder)."""
        if self.text_cache is None:
            return self._encode_live(texts, batch_size)
        vectors, missing = self.text_cache.lookup(texts)
        vectors = vectors.to(self.device)
        if missing:
            vectors[missing] = self._encode_live([texts[i] for i in missing], batch_size)
        return vectors

    @torch.no_grad()
    def _encode_live(self, texts: list[str], batch_size: int) -> Tensor:
        was_training = self.text_encoder.training
        self.text_encoder.eval()
        # The trainer's autocast, so a vector is the same whether cached, encoded during a
        # step or for the readout fit (which runs outside the steps' precision context).
        trainer = self._trainer
        precision = trainer.precision_plugin.forward_context() if trainer else nullcontext()
        try:
            with precision:
                return torch.cat(
                    [
                        self.text_encoder(**self.tokenize(texts[i : i + batch_size])).float()
                        for i in range(0, len(texts), batch_size)
                    ]
                )
        finally:
            self.text_encoder.train(was_training)

    # -- the cache's life cycle ---------------------------------------------------------------
    def on_fit_start(self) -> None:
        self.attach_embedding_cache(build=True)
        super().on_fit_start()

    def on_validation_start(self) -> None:
        self.attach_embedding_cache(build=False)
        super().on_validation_start()

    def on_test_start(self) -> None:
        self.attach_embedding_cache(build=False)
        super().on_test_start()

    def encode_texts_cached(self, datamodule: Any, texts: list[str]) -> Tensor:
        """`encode_texts` of a fixed set of texts (a closed-form fit's, a feature-trained
        fit's), through a cache file of exactly these texts, so a second fit reads them at
        once (the data module's cache holds single keywords, not an article's joined ones).
        Without a frozen encoder or `embedding_cache: false`, plain `encode_texts`."""
        if not self.text_settings.embedding_cache or not self.encoder_frozen:
            return self.encode_texts(texts)
        distinct = sorted(set(texts))
        cache = self._open_cache(
            datamodule, distinct, True, lambda chunk: self.encode_texts(chunk, len(chunk))
        )
        vectors, missing = cache.lookup(texts)
        if missing:  # pragma: no cover - the file holds every distinct text
            raise RuntimeError(f"{len(missing)} texts missing from {cache.path}")
        return vectors.to(self.device)

    def attach_embedding_cache(self, build: bool) -> None:
        """Open (or, with `build`, first compute) the frozen encoder's cache of the data's texts.

        Nothing happens for a trained encoder, with `embedding_cache: false`, without a data
        module that lists its texts, or when the cache is attached already. Only the first
        process builds; the others wait and open its file.
        """
        if (
            self.text_cache is not None
            or not self.text_settings.embedding_cache
            or not self.encoder_frozen
        ):
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "cacheable_texts"):
            return
        cache = self._open_cache(
            datamodule,
            datamodule.cacheable_texts(),
            build,
            lambda chunk: self._encode_live(chunk, len(chunk)),
        )
        if cache is not None:
            rank_zero_info(
                f"frozen text encoder: {len(cache):,} texts read from the embedding cache "
                f"{cache.path}; other texts are encoded live"
            )
        self.text_cache = cache

    def _open_cache(
        self,
        datamodule: Any,
        texts: list[str],
        build: bool,
        encode: Callable[[list[str]], Tensor],
    ) -> EmbeddingCache | None:
        """The cache file of `texts` (sorted, distinct) for this encoder, opened or (with
        `build`) first computed with `encode`. Only the first process builds; the others wait
        and open its file."""
        encoder = self.text_encoder
        settings = {
            "max_length": encoder.token_limit(self.text_settings.max_length),
            "pooling": encoder.pooling,
            "precision": str(self.trainer.precision),
        }
        key = cache_key(
            state_fingerprint(encoder.state_dict()),
            tokenizer_fingerprint(encoder.tokenizer),
            settings,
            texts,
        )
        description = {
            "encoder": encoder.name_or_path,
            **settings,
            "corpus": datamodule.corpus.name,
        }
        directory = cache_dir() / "embeddings"
        trainer = self.trainer

        def lengths(chunk: Sequence[str]) -> list[int]:
            return token_lengths(encoder.tokenizer, chunk, settings["max_length"])

        cache = None
        if trainer.is_global_zero:
            cache = open_or_build(
                directory, key, texts, encoder.dim, encode, lengths, description, build=build
            )
        trainer.strategy.barrier("text2brain-embedding-cache")
        if cache is None:
            cache = open_or_build(
                directory, key, texts, encoder.dim, encode, lengths, description, build=False
            )
        return cache
