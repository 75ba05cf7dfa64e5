"""The ensemble head's maths in plain torch: members' per-map normalised maps, weighted.

`EnsembleMaths` holds it once, for the LightningModule (`Ensemble`, which adds the fit: loading
the members from their files and choosing the weights on validation) and for
`EnsembleInference`, which `load_predictor` builds: predicting then needs no Lightning, and the
members are built as `load_predictor` builds each head alone (Lightning-free where the head
has an inference class). Both keep the same buffers and the same "members" entry in the
checkpoint's "text2brain" section, so checkpoints and exports load into either.

Heads predict on different scales (a ridge readout, a NeuroQuery-style regression, a mean of
retrieved maps), so each member's map is first put on a common one by itself: its z-score
across voxels, or its centred voxel ranks. The ensemble's map is the sum of those with
non-negative weights that sum to 1.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from text2brain.checkpoint import build_model, registered_class
from text2brain.models.formats import upgrade_checkpoint
from text2brain.models.head import TRAINING_HPARAMS, BrainMapHead, match_buffer_shapes
from text2brain.text import check_texts

log = logging.getLogger(__name__)

NORMALISE = ("zscore", "rank")
#: Texts a member predicts per call.
CHUNK = 256
#: Most points of the weight simplex a fit searches.
MAX_GRID = 10_000
#: How far the given weights' sum may be from 1.
WEIGHT_SUM_TOLERANCE = 1e-6
_MEMBER_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


class EnsembleMaths:
    """Members, their weights and the weighted sum, mixed into a `BrainMapHead` (see Ensemble).

    The class using it provides `device`.
    """

    #: Buffers whose shape depends on the fit (the weight grid searched and its scores).
    fitted_buffers = ("weight_grid", "validation_scores")
    pretrained_encoders: bool

    def configure(
        self,
        members: dict[str, str],
        normalise: str,
        weight_step: float,
        weights: dict[str, float] | None,
    ) -> None:
        """Check and keep the settings, and make the buffers (both constructors call this)."""
        names = checked_members(members)
        if normalise not in NORMALISE:
            raise ValueError(f"normalise must be one of {NORMALISE}, got {normalise!r}")
        steps = grid_steps(weight_step)
        given = checked_weights(weights, names)
        points = math.comb(steps + len(names) - 1, len(names) - 1)
        if given is None and points > MAX_GRID:
            raise ValueError(
                f"weight_step {weight_step} over {len(names)} members makes {points:,} weight "
                f"vectors to score (at most {MAX_GRID:,}): use a larger weight_step or give "
                "weights"
            )
        self.member_names, self.steps, self.given_weights = names, steps, given
        self.normalise = normalise
        self.members = nn.ModuleDict()
        #: name -> the member's hyper-parameters and "text2brain" section, as its file had them.
        self.member_records: dict[str, dict[str, Any]] = {}
        self.register_buffer("member_weights", torch.zeros(len(names)))
        self.register_buffer("weight_grid", torch.zeros(0, len(names)))
        self.register_buffer("validation_scores", torch.zeros(0))

    @property
    def weights_by_member(self) -> dict[str, float]:
        """name -> the member's weight (all 0 before the fit)."""
        return dict(zip(self.member_names, self.member_weights.tolist(), strict=True))

    def _check_space(self, name: str, member: BrainMapHead, origin: str) -> None:
        theirs, ours = member.space, self.space
        if theirs is None or ours is None or theirs.to_dict() != ours.to_dict():
            raise ValueError(
                f"ensemble member {name!r} ({origin}) predicts on a "
                f"{getattr(theirs, 'shape', None)} grid with {getattr(theirs, 'n_voxels', 0)} "
                f"mask voxels, the ensemble on {getattr(ours, 'shape', None)} with "
                f"{getattr(ours, 'n_voxels', 0)} (or the masks differ): every member must "
                "predict on the data's grid and mask"
            )

    # -- prediction ---------------------------------------------------------------------------
    def _member_maps(self, name: str, texts: list[str], quiet: bool = True) -> Tensor:
        """The member's normalised maps (len(texts), voxels) float32, predicted in chunks.

        `quiet`: the member's own warnings (a term head's texts without a known term) are
        logged, once per call, not raised (at fit, and in evaluation, where every batch would
        repeat them).
        """
        member, mode = self.members[name], self.members[name].training
        parts = []
        with warnings.catch_warnings(record=quiet) as said:
            if quiet:
                warnings.simplefilter("always")
            member.eval()  # a fixed head: it always predicts as in inference
            try:
                for start in range(0, len(texts), CHUNK):
                    maps = member.predict_texts(texts[start : start + CHUNK])
                    parts.append(normalise_maps(maps.float().to(self.device), self.normalise))
            finally:
                member.train(mode)
        if said:
            log.info(
                "ensemble member %r: %d warnings, the first: %s", name, len(said), said[0].message
            )
        if not parts:
            return torch.zeros(0, self.space.n_voxels, device=self.device)
        return torch.cat(parts)

    @torch.inference_mode()
    def ensemble_maps(self, texts: list[str], quiet: bool = False) -> Tensor:
        """Maps (len(texts), voxels) float32: the weighted sum of the members' normalised maps
        (all zero before the fit)."""
        out = torch.zeros(len(texts), self.space.n_voxels, device=self.device)
        if not len(self.members):
            return out
        for name, weight in self.weights_by_member.items():
            if weight:  # a member without weight is not run
                out += weight * self._member_maps(name, texts, quiet)
        return out

    def forward(self, batch: dict[str, Any]) -> Tensor:
        return self.ensemble_maps(list(batch["text"]), quiet=True)

    def predict_texts(self, texts: list[str]) -> Tensor:
        return self.ensemble_maps(check_texts(texts, allow_empty=False))

    # -- checkpoint ---------------------------------------------------------------------------
    def save_members(self, checkpoint: dict[str, Any]) -> None:
        """Each member's hyper-parameters and section go into the ensemble's section; a member
        with its own hook writes that section and stores its weights as it does alone."""
        state = checkpoint["state_dict"]
        saved = {}
        for name, member in self.members.items():
            prefix = f"members.{name}."
            sub = member_checkpoint(state, prefix, self.member_records[name])
            hook = getattr(member, "on_save_checkpoint", None)
            if hook is not None:
                hook(sub)
            replace_member_state(state, prefix, sub["state_dict"])
            saved[name] = {k: sub[k] for k in ("hyper_parameters", "text2brain")}
        checkpoint["text2brain"]["members"] = saved

    def load_members_from(self, checkpoint: dict[str, Any]) -> None:
        """Rebuild every member from the ensemble's section before its weights are loaded."""
        saved = checkpoint["text2brain"].get("members") or {}
        if set(saved) != set(self.member_names):
            raise ValueError(
                f"this ensemble checkpoint holds the members {sorted(saved)}, its "
                f"hyper-parameters name {self.member_names}: it was saved before its fit, or "
                "is damaged"
            )
        state = checkpoint.get("state_dict", {})
        members: dict[str, BrainMapHead] = {}
        records: dict[str, dict[str, Any]] = {}
        for name in self.member_names:
            prefix = f"members.{name}."
            sub = member_checkpoint(state, prefix, saved[name])
            upgrade_checkpoint(sub)  # a member saved in an older format comes up to this one
            replace_member_state(state, prefix, sub["state_dict"])
            label = Path(f"member {name!r} of the ensemble checkpoint")
            info = sub["text2brain"]
            cls = registered_class(
                label, info.get("class_path") or sub["hyper_parameters"].get("_class_path")
            )
            member = build_model(label, cls, sub, pretrained=self.pretrained_encoders)
            self._check_space(name, member, "in the checkpoint")
            members[name] = member.requires_grad_(False)
            records[name] = {k: sub[k] for k in ("hyper_parameters", "text2brain")}
        self.members = nn.ModuleDict(members).to(self.device).train(self.training)
        self.member_records = records


class EnsembleInference(EnsembleMaths, BrainMapHead):
    """The ensemble head for prediction only: what `load_predictor` builds, without Lightning.
    It takes the ensemble's arguments; the member paths are not read (the members come from
    the checkpoint)."""

    #: The head's name in messages (the registered LightningModule's).
    model_name = "Ensemble"
    ignored_hparams = TRAINING_HPARAMS

    def __init__(
        self,
        members: dict[str, str],
        normalise: str = "zscore",
        weight_step: float = 0.1,
        weights: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.configure(members, normalise, weight_step, weights)

    @property
    def device(self) -> torch.device:
        return self.member_weights.device

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        match_buffer_shapes(self, checkpoint.get("state_dict", {}), self.fitted_buffers)
        self.load_members_from(checkpoint)


# -- arguments ------------------------------------------------------------------------------------


def checked_members(members: Any) -> list[str]:
    """The member names, in order, once `members` is a valid name -> path mapping."""
    if not isinstance(members, dict) or not members:
        raise ValueError(
            "members must map at least one name to the checkpoint or export of a registered "
            f"head, got {members!r}"
        )
    taken = nn.ModuleDict()
    for name, path in members.items():
        if not isinstance(name, str) or not _MEMBER_NAME.fullmatch(name) or hasattr(taken, name):
            raise ValueError(
                f"member name {name!r} is not allowed: a letter, then letters, digits, _ or -, "
                "and not an attribute of torch's ModuleDict"
            )
        if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
            raise ValueError(f"member {name!r}: its path must be a non-empty str, got {path!r}")
    return list(members)


def grid_steps(weight_step: Any) -> int:
    """n, for a weight step of 1/n."""
    valid = (
        isinstance(weight_step, (int, float))
        and not isinstance(weight_step, bool)
        and 0 < weight_step <= 1
    )
    steps = round(1 / weight_step) if valid else 0
    if not valid or abs(steps * weight_step - 1) > 1e-6:
        raise ValueError(
            "weight_step must be 1/n for an integer n (1, 0.5, 0.25, 0.1, ...), got "
            f"{weight_step!r}"
        )
    return steps


def checked_weights(weights: Any, names: list[str]) -> list[float] | None:
    """The given weights in member order (None: choose them), checked."""
    if weights is None:
        return None
    if not isinstance(weights, dict) or set(weights) != set(names):
        got = sorted(weights) if isinstance(weights, dict) else weights
        raise ValueError(f"weights must give one weight per member {names}, got {got!r}")
    values = [weights[name] for name in names]
    bad = {
        name: value
        for name, value in zip(names, values, strict=True)
        if isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    }
    if bad:
        raise ValueError(f"weights must be finite numbers >= 0, got {bad}")
    if abs(sum(values) - 1) > WEIGHT_SUM_TOLERANCE:
        raise ValueError(f"weights must sum to 1, got {sum(values):g} ({dict(weights)})")
    return [float(v) for v in values]


# -- maths ----------------------------------------------------------------------------------------


def simplex_grid(n_members: int, steps: int) -> Tensor:
    """Every vector of `n_members` non-negative multiples of 1/`steps` that sums to 1:
    (points, n_members) float64, C(steps + n_members - 1, n_members - 1) points."""
    slots = steps + n_members - 1
    rows = []
    for bars in itertools.combinations(range(slots), n_members - 1):  # stars and bars
        edges = (-1, *bars, slots)
        rows.append([edges[i + 1] - edges[i] - 1 for i in range(n_members)])
    return torch.tensor(rows, dtype=torch.float64) / steps


def normalise_maps(maps: Tensor, how: str) -> Tensor:
    """Each map (row) on its own scale, float32: "zscore" or "rank" (see `Ensemble`).

    A constant row, the all-zero map included, becomes all zeros (never NaN).
    """
    maps = maps.float()
    constant = maps.amax(dim=1) == maps.amin(dim=1)
    if how == "zscore":
        centred = maps - maps.mean(dim=1, keepdim=True)
        scale = centred.square().mean(dim=1, keepdim=True).sqrt()
        out = centred / scale.clamp_min(torch.finfo(torch.float32).tiny)
    elif how == "rank":
        out = average_ranks(maps) * (2.0 / max(maps.shape[1] - 1, 1)) - 1.0
    else:
        raise ValueError(f"normalise must be one of {NORMALISE}, got {how!r}")
    out[constant] = 0.0
    return out


def average_ranks(maps: Tensor) -> Tensor:
    """0-based ranks of each row's values (float32), tied values sharing their mean rank."""
    values, order = maps.sort(dim=1)
    n = maps.shape[1]
    position = torch.arange(n, device=maps.device).expand_as(values)
    starts = torch.ones_like(values, dtype=torch.bool)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    first = torch.where(starts, position, 0).cummax(dim=1).values
    last = torch.where(ends, position, n - 1).flip(1).cummin(dim=1).values.flip(1)
    mean = (first + last).float() / 2
    return torch.empty_like(mean).scatter_(1, order, mean)


def combined(maps: Tensor, weights: Tensor) -> Tensor:
    """The weighted sum (n, voxels) of the members' maps (members, n, voxels)."""
    return torch.einsum("m,mnv->nv", weights, maps)


def member_checkpoint(state: dict[str, Any], prefix: str, record: dict[str, Any]) -> dict[str, Any]:
    """A member's own checkpoint dict: its part of the ensemble's state dict (`prefix` taken
    off the keys) and its record (hyper-parameters and "text2brain" section), copied."""
    return {
        "state_dict": {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)},
        "hyper_parameters": dict(record["hyper_parameters"]),
        "text2brain": dict(record["text2brain"]),
    }


def replace_member_state(state: dict[str, Any], prefix: str, member_state: dict[str, Any]) -> None:
    """Put a member's state dict into the ensemble's, under `prefix`, in place of the old one."""
    for key in [k for k in state if k.startswith(prefix)]:
        del state[key]
    state.update({prefix + k: v for k, v in member_state.items()})
