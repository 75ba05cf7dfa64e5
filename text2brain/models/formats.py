"""Checkpoint format versions, and the upgrades that let old checkpoints load.

Every checkpoint records `text2brain.format_version`. When what a checkpoint holds changes,
the version goes up and an upgrade from the previous version is added here, so a checkpoint
(or an export) written by an older text2brain loads unchanged in a newer one: both Lightning's
resume (`BrainMapModule.on_load_checkpoint`) and `load_predictor` upgrade in memory. A version
with no upgrade path fails with a message that says how to convert it.

History:
- 1: first release format (grid and mask, class path, logger run id).
- 2: the Text2Brain ridge readout is stored as two factors, `readout_in` (d, rank) and
  `readout_out` (rank, voxels), so it can have a reduced rank; format 1 stored `readout_weight`
  (d, voxels), which is `readout_in` = identity, `readout_out` = that weight.
- 3: a head's shared settings are grouped in its hyper-parameters (`text`, `brain`, `decoder`,
  `optim`: text2brain.models.settings); format 2 had every field flat (`encoder_lr`,
  `brain_channels`, ...).
- 4: a contrastive head's brain encoder may read maps scaled to a total activation
  (`brain.input_scale: mass`, the default now) and the retrieval head averages transformed
  maps (`target_transform`, power 0.1 by default now); format 3 knew neither, so its heads
  read max-scaled maps (`max`) and averaged them untransformed (`none`).
- 5: the retrieval head keeps its training articles as a retrieval bank of peaks, titles and
  title embeddings in the "text2brain" section ("bank"), as the contrastive heads do; format 4
  stored their transformed maps and embeddings in the state dict (`bank_maps`,
  `bank_embeddings`), which move to a "dense_bank" entry that still predicts, and its
  `map_dtype` argument is gone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any

import torch

from text2brain.models.settings import group_legacy_hparams

#: Version of what text2brain stores in a checkpoint (under the "text2brain" key).
CHECKPOINT_FORMAT = 5
#: The oldest format this text2brain can upgrade.
OLDEST_FORMAT = 1


def _class_path(checkpoint: dict[str, Any]) -> str:
    """The head's class path, from the text2brain section or the hyper-parameters."""
    hparams = checkpoint.get("hyper_parameters")
    saved = hparams.get("_class_path") if isinstance(hparams, dict) else None
    return checkpoint["text2brain"].get("class_path") or saved or ""


def _factor_ridge_readout(checkpoint: dict[str, Any]) -> None:
    """Format 1 -> 2: `readout_weight` (d, voxels) becomes identity x weight."""
    state = checkpoint["state_dict"]
    weight = state.pop("readout_weight", None)
    if weight is not None:
        state["readout_in"] = torch.eye(weight.shape[0], dtype=weight.dtype)
        state["readout_out"] = weight


def _group_settings(checkpoint: dict[str, Any]) -> None:
    """Format 2 -> 3: flat hyper-parameters move into their settings groups; a Text2Brain head
    (one with a decoder) of format 2 had no target transform, which is not the default now."""
    if isinstance(checkpoint.get("hyper_parameters"), dict):
        grouped, _ = group_legacy_hparams(checkpoint["hyper_parameters"])
        if "decoder" in grouped:
            grouped.setdefault("target_transform", "none")
        checkpoint["hyper_parameters"] = grouped


def _keep_format_3_scales(checkpoint: dict[str, Any]) -> None:
    """Format 3 -> 4: the scales a format-3 head was trained with, where the defaults moved."""
    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, dict):
        return
    if isinstance(hparams.get("brain"), dict):
        hparams["brain"] = {
            **hparams["brain"],
            "input_scale": hparams["brain"].get("input_scale", "max"),
        }
    if _class_path(checkpoint).endswith(".Retrieval"):
        hparams.setdefault("target_transform", "none")


def _retrieval_bank_out_of_state(checkpoint: dict[str, Any]) -> None:
    """Format 4 -> 5: a retrieval head's dense bank leaves the state dict."""
    if not _class_path(checkpoint).endswith(".Retrieval"):
        return
    hparams = checkpoint.get("hyper_parameters")
    if isinstance(hparams, dict):
        hparams.pop("map_dtype", None)
    state = checkpoint.get("state_dict", {})
    if "bank_maps" in state:
        checkpoint["text2brain"]["dense_bank"] = {
            "embeddings": state.pop("bank_embeddings"),
            "maps": state.pop("bank_maps"),
        }


#: version -> the upgrade of a checkpoint dict from that version to the next, in place.
UPGRADES: dict[int, Callable[[dict[str, Any]], None]] = {
    1: _factor_ridge_readout,
    2: _group_settings,
    3: _keep_format_3_scales,
    4: _retrieval_bank_out_of_state,
}


def upgrade_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Bring a checkpoint dict (its "text2brain" section and state dict) to CHECKPOINT_FORMAT.

    Raises:
        ValueError: the version is missing, newer than this text2brain's, or older than any
            it can upgrade; the message says what to do.
    """
    info = checkpoint["text2brain"]
    version = info.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(
            f"checkpoint format {version!r} is not a format version (an int): the file was "
            "not written by text2brain, or its 'text2brain' section is damaged"
        )
    if version > CHECKPOINT_FORMAT:
        raise ValueError(
            f"checkpoint format {version} is newer than this text2brain reads (format "
            f"{CHECKPOINT_FORMAT}): upgrade text2brain (pip install -U text2brain)"
        )
    if version < OLDEST_FORMAT:
        raise ValueError(
            f"checkpoint format {version} is older than any this text2brain can upgrade (formats "
            f"{OLDEST_FORMAT}-{CHECKPOINT_FORMAT}): load it with the text2brain version that "
            "wrote it and re-export it (`text2brain export`), or retrain"
        )
    while version < CHECKPOINT_FORMAT:
        UPGRADES[version](checkpoint)
        version += 1
    info["format_version"] = version
    return checkpoint


def state_fingerprint(state: dict[str, torch.Tensor], keys: Iterable[str] | None = None) -> str:
    """sha256 of the named tensors' names, dtypes, shapes and bytes (all keys when None).

    What identifies a set of weights: an export records it for the base encoder it leaves out,
    the embedding cache keys its files by it.
    """
    digest = hashlib.sha256()
    for key in sorted(state if keys is None else keys):
        value = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()
