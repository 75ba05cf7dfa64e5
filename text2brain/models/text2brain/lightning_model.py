"""The Text2Brain head in the zoo: regression of the masked map from text (MSE on the mask)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from text2brain.models.ridge import RELATIVE_ALPHAS
from text2brain.models.settings import DecoderSettings, OptimSettings, TextEncoderSettings
from text2brain.models.targets import parse_transform, scaled_targets, transform_targets
from text2brain.models.text2brain.torch_model import Text2BrainMaths
from text2brain.models.text_head import TextEncoderHead


class Text2Brain(Text2BrainMaths, TextEncoderHead):
    """Text2Brain: transformer text encoder + transposed-3D-CNN decoder, trained with MSE.

    The maths (building the layers, embedding, maps) is `Text2BrainMaths`, which the
    Lightning-free `Text2BrainInference` shares; this class adds the training.

    The loss covers mask voxels only (the original code's loss did not, while its metric did).
    The decoder is the paper's (DecoderSettings' defaults) and the defaults are those of the
    main job (configs/model/text2brain.yaml): the bundled MiniLM kept frozen, max-normalised
    targets raised to the power 0.1 (validation Dice-AUC of the readout alone 0.0750, vs 0.0703
    untransformed), the residual mean map and a rank-32 ridge readout. The paper's fine-tuned
    encoder is configs/model/text2brain-finetune.yaml; its SciBERT is `text: {encoder:
    allenai/scibert_scivocab_uncased, pooling: pooler}`.

    Args:
        text: the text encoder (text2brain.models.settings.TextEncoderSettings); frozen by
            default (embeddings and all 6 MiniLM layers).
        decoder: the transposed 3-D CNN (text2brain.models.settings.DecoderSettings).
        optim: the optimisation (text2brain.models.settings.OptimSettings).
        target_normalisation: "none", or "max" to divide each target by its maximum (the
            released Text2Brain code did); predictions are then on that scale.
        target_transform: a monotone transform of the (normalised) targets that the loss, the
            mean map and the readout fit see: "none", "sqrt", "power:P" or "log1p:C"
            (text2brain.models.targets); predictions are then on the transformed scale, which
            ranks voxels as the original one does.
        residual: predict the offset from the training split's mean map (kept in the
            checkpoint) with a zero-initialised output layer, so training starts at the
            corpus-mean floor instead of below it, and the decoder learns what a text changes.
        readout: "none", or "ridge" to add a linear readout from the text embedding to the
            map, fitted in closed form at the start of `fit` (ridge on the starting encoder's
            embeddings of the training titles, penalty by leave-one-out) and kept fixed; the
            decoder and the encoder then learn what it misses. Short CPU budgets need it to
            leave the floor.
        readout_rank: keep this many directions of the readout (reduced-rank ridge, stored as
            two factors); None keeps the full rank (the embedding size). A low rank regularises
            and shrinks the checkpoint: on NeuroQuery rank 32 beats the full rank.
        readout_alpha: the readout's ridge penalty, in units of the mean squared singular
            value of the centred title embeddings; None chooses it by leave-one-out squared
            error over text2brain.models.ridge.RELATIVE_ALPHAS (1e-3 .. 10).
        readout_sources: the training texts the readout is fitted on, each paired with its
            article's map: "title", "keywords" (all of an article's keywords in one text) and
            "abstract".
    """

    def __init__(
        self,
        text: TextEncoderSettings = TextEncoderSettings(freeze_embeddings=True, freeze_layers=6),
        decoder: DecoderSettings = DecoderSettings(),
        optim: OptimSettings = OptimSettings(encoder_lr=1e-5, lr=1e-2),
        target_normalisation: str = "max",
        target_transform: str = "power:0.1",
        residual: bool = True,
        readout: str = "ridge",
        readout_rank: int | None = 32,
        readout_alpha: float | None = None,
        readout_sources: Sequence[str] = ("title",),
    ) -> None:
        super().__init__(text=text, optim=optim)
        parse_transform(target_transform)  # a bad name fails here, not at fit
        self.target_transform = target_transform
        if readout_alpha is not None and not readout_alpha > 0:
            raise ValueError(f"readout_alpha must be > 0 or null, got {readout_alpha}")
        self.readout_alpha = readout_alpha
        self.readout_sources = tuple(readout_sources)
        self.configure(text, decoder, target_normalisation, residual, readout, readout_rank)

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
        if self.readout == "ridge":
            self.fit_readout()  # its targets give the mean map too
        elif self.residual:
            self.mean_map.copy_(self.training_mean_map())

    def fit_readout(self) -> None:
        """Fit the ridge readout on the training articles' `readout_sources` texts (and, with
        `residual`, the training-mean map it predicts over)."""
        datamodule = self.trainer.datamodule
        _, maps = datamodule.article_maps("train")
        targets = self.training_targets(maps, residual=self.residual)  # sets mean_map
        alphas = RELATIVE_ALPHAS if self.readout_alpha is None else [self.readout_alpha]
        embeddings, rows = self.readout_inputs(datamodule, self.readout_sources)
        self.fit_readout_from(embeddings, rows, targets, alphas)

    def forward(self, batch: dict[str, Any]) -> Tensor:
        return self.masked_maps(self.text_features(batch))

    def normalise_target(self, target: Tensor) -> Tensor:
        if self.target_normalisation == "max":
            return scaled_targets(target, self.target_transform)
        return transform_targets(target, self.target_transform)

    def training_loss(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        return {"loss": self.map_loss(self(batch), batch["map"].float())}
