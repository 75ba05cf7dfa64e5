"""`BrainMapHead`: a head as a plain torch module (brain space, prediction), no Lightning.

`BrainMapModule`, the LightningModule base of every head, builds on it and adds training.
Inference classes build on it alone, so a process that only predicts maps never imports
Lightning (about 3 s of imports on a 2-core CPU); see `INFERENCE_MODELS` in text2brain.models.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from text2brain.brain import BrainSpace
from text2brain.models.formats import upgrade_checkpoint

#: Arguments that only matter for training (the optimisation settings, what Text2Brain's
#: targets and readout fit are): a checkpoint's hyper-parameters hold them, and an inference
#: class ignores them.
TRAINING_HPARAMS = ("optim", "target_transform", "readout_alpha", "readout_sources")


class BrainMapHead(nn.Module):
    """Texts -> masked brain maps on a grid and mask (the brain space) it is built for.

    Subclasses implement `build(space)` (modules that depend on the grid) and `predict_texts`.
    """

    #: Hyper-parameters that the class does not take and that loading a checkpoint drops.
    ignored_hparams: tuple[str, ...] = TRAINING_HPARAMS
    #: Whether the head only predicts (its text encoder may then skip transformers).
    inference_only = True
    #: Set by text2brain.checkpoint.build_model: whether the head's text encoders start from
    #: the installed base weights, so a head made of other heads (the ensemble) builds its
    #: members' encoders alike (an export leaves those weights out and takes them from there).
    pretrained_encoders = False

    def __init__(self) -> None:
        super().__init__()
        self.space: BrainSpace | None = None

    def set_space(self, space: BrainSpace) -> None:
        """Attach the grid and mask (from the data, or from a checkpoint) and build the head."""
        if self.space is not None:
            if self.space.to_dict() != space.to_dict():
                raise ValueError(
                    f"this model was built for a {self.space.shape} grid with "
                    f"{self.space.n_voxels} mask voxels; the data uses {space.shape} with "
                    f"{space.n_voxels}: use the same mask for training and evaluation"
                )
            return
        self.space = space
        self.register_buffer(
            "mask_index", torch.from_numpy(space.mask.ravel().nonzero()[0]), persistent=False
        )
        self.build(space)

    def build(self, space: BrainSpace) -> None:
        """Create the modules that depend on the grid (called once, before training/loading)."""

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        info = checkpoint.get("text2brain")
        if info is None:
            raise ValueError(
                "this checkpoint has no 'text2brain' section: it was not written by a "
                "text2brain model"
            )
        upgrade_checkpoint(checkpoint)
        self.set_space(BrainSpace.from_dict(info["space"]))

    def predict_texts(self, texts: list[str]) -> Tensor:
        """Predicted masked maps (len(texts), n_voxels) for raw texts."""
        raise NotImplementedError

    def to_masked(self, volume: Tensor) -> Tensor:
        """(batch, *grid) volumes -> (batch, n_voxels) masked vectors."""
        return volume.flatten(1)[:, self.mask_index]


def match_buffer_shapes(module: nn.Module, state: dict[str, Any], names: Sequence[str]) -> None:
    """Re-create the buffers `names` of `module` with the shapes they have in the state dict
    `state` (zeros, the module's dtype and device), so that a strict load fits: the buffers
    whose shape a closed-form fit decides (a vocabulary's size, a weight grid's)."""
    for name in names:
        value = state.get(name)
        if isinstance(value, Tensor):
            current = getattr(module, name)
            module.register_buffer(
                name, torch.zeros(value.shape, dtype=current.dtype, device=current.device)
            )
