"""The Text2Brain head in the zoo: regression of the masked map from text (MSE on the mask)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from text2brain.models.encoders import DEFAULT_ENCODER
from text2brain.models.ridge import RELATIVE_ALPHAS, fit_ridge
from text2brain.models.text2brain.torch_model import (
    Text2BrainMaths,
    Text2BrainNet,
    check_options,
)
from text2brain.models.text_head import TextEncoderHead


class Text2Brain(Text2BrainMaths, TextEncoderHead):
    """Text2Brain: transformer text encoder + transposed-3D-CNN decoder, trained with MSE.

    The maths (building the layers, embedding, maps) is `Text2BrainMaths`, which the
    Lightning-free `Text2BrainInference` shares; this class adds the training.

    The loss covers mask voxels only (the original code's loss did not, while its metric did).
    Defaults follow the paper's architecture (4x5x4x64 seed, 32/16/8 channels, batch norm,
    Hardtanh(-6, 6), output placed at [3:-3, 3:-4, :-6] of the 4 mm grid) with the bundled
    MiniLM encoder; `encoder: allenai/scibert_scivocab_uncased, pooling: pooler` is the paper's.

    Args:
        encoder: Hugging Face model name or local path (default: the bundled MiniLM).
        pooling: "mean", "cls" or "pooler".
        freeze_embeddings, freeze_layers: freeze the embeddings / the lowest N layers.
        pretrained: False builds the encoder with random weights (tests, ablations).
        max_length: token limit when the head tokenises raw text itself.
        embedding_cache: with a frozen encoder, embed every text the data can give once at
            fit start and read the vectors from the cache folder afterwards
            (text2brain.models.text_head); no effect on a trained encoder.
        target_normalisation: "none", or "max" to divide each target by its maximum (the
            released Text2Brain code did); predictions are then on that scale.
        residual: predict the offset from the training split's mean map (kept in the
            checkpoint) with a zero-initialised output layer, so training starts at the
            corpus-mean floor instead of below it, and the decoder learns what a text changes.
        readout: "none", or "ridge" to add a linear readout from the text embedding to the
            map, fitted in closed form at the start of `fit` (ridge on the starting encoder's
            embeddings of the training titles, penalty by leave-one-out; see
            text2brain.models.text2brain.readout) and kept fixed; the decoder and the encoder
            then learn what it misses. Short CPU budgets need it to leave the floor.
        readout_rank: keep this many directions of the readout (reduced-rank ridge, stored as
            two factors); None keeps the full rank (the embedding size). A low rank regularises
            and shrinks the checkpoint: on NeuroQuery rank 32 beats the full rank.
        seed_shape, seed_channels, channels, dropout, norm, activation, output_crop,
            output_offset, output_norm_act: the decoder (text2brain.models.decoders.
            Text2BrainDecoder); None for seed_shape / channels / output_crop / output_offset
            means the paper's values on the 4 mm grid: [4, 5, 4], [32, 16, 8], [40, 48, 40]
            placed at [3, 3, 0].
        encoder_lr, lr, weight_decay, warmup_steps, schedule: see BrainMapModule.
    """

    def __init__(
        self,
        encoder: str = DEFAULT_ENCODER,
        pooling: str = "mean",
        freeze_embeddings: bool = False,
        freeze_layers: int = 0,
        pretrained: bool = True,
        max_length: int = 128,
        embedding_cache: bool = True,
        target_normalisation: str = "none",
        residual: bool = True,
        readout: str = "none",
        readout_rank: int | None = None,
        seed_shape: list[int] | None = None,
        seed_channels: int = 64,
        channels: list[int] | None = None,
        dropout: float = 0.5,
        norm: str = "batch",
        activation: str = "hardtanh",
        output_crop: list[int] | None = None,
        output_offset: list[int] | None = None,
        output_norm_act: bool = False,
        encoder_lr: float = 3e-5,
        lr: float = 3e-3,
        weight_decay: float = 0.01,
        warmup_steps: float = 0.05,
        schedule: str = "cosine",
    ) -> None:
        super().__init__(encoder_lr, lr, weight_decay, warmup_steps, schedule)
        check_options(target_normalisation, readout, readout_rank)
        self.save_hyperparameters()
        self.net: Text2BrainNet | None = None

    def on_fit_start(self) -> None:
        """Fit the mean map and the readout from the training split, unless resuming.

        Here rather than in `setup`: Lightning restores a checkpoint after `setup` and before
        this hook, and only then says whether it resumes (`trainer.ckpt_path`); a resumed run
        keeps the fitted buffers of its checkpoint instead of refitting them (about a minute
        on NeuroQuery on a CPU).
        """
        super().on_fit_start()
        if self.trainer.ckpt_path is not None:
            return
        if self.hparams.residual:
            self.mean_map.copy_(self.training_mean_map())
        if self.hparams.readout == "ridge":
            self.fit_readout()

    @torch.no_grad()
    def fit_readout(self, batch_size: int = 128) -> None:
        """Fit the ridge readout on the training titles (the evaluation texts are titles)."""
        datamodule = self.trainer.datamodule
        _, maps = datamodule.article_maps("train")
        titles = [datamodule.corpus.articles[i].title for i in datamodule.indices_of("train")]
        rows = [i for i, title in enumerate(titles) if title and title.strip()]
        if len(rows) < len(titles):
            warnings.warn(
                f"ridge readout: {len(titles) - len(rows):,} training articles without a "
                "title are not used",
                stacklevel=2,
            )
        embeddings = self.encode_texts([titles[i] for i in rows], batch_size).cpu()
        # `maps` is already an in-memory copy (1.2 GB on NeuroQuery): normalised in place, block
        # by block, rather than copied again.
        targets = torch.from_numpy(np.asarray(maps, np.float32))
        if len(rows) < len(titles):
            targets = targets[rows]
        for block in targets.split(1024):
            block.copy_(self.normalise_target(block))
        if self.hparams.residual:
            targets -= self.mean_map.cpu()
        fit = fit_ridge(
            embeddings,
            targets,
            RELATIVE_ALPHAS,
            relative=True,
            loo_voxels=4096,
            rank=self.readout_in.shape[1],
            dtype=torch.float64,
        )
        weight_in, weight_out = fit.factored()
        self.readout_in.copy_(weight_in)
        self.readout_out.copy_(weight_out)
        self.readout_bias.copy_(fit.intercept)
        rank_zero_info(
            f"ridge readout fitted on {len(rows):,} training titles (alpha {fit.alpha:.3g}, "
            f"rank {self.readout_in.shape[1]})"
        )

    def forward(self, batch: dict[str, Any]) -> Tensor:
        return self.masked_maps(self.text_features(batch))

    def normalise_target(self, target: Tensor) -> Tensor:
        if self.hparams.target_normalisation == "max":
            return target / target.amax(dim=1, keepdim=True).clamp_min(1e-12)
        return target

    def training_loss(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        return {"loss": self.map_loss(self(batch), batch["map"].float())}
