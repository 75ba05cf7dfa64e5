"""Lightning callbacks of the zoo: figures of predicted maps during training.

`MapFigureLogger` draws, after validation, the target and predicted maps of a few fixed
validation examples and the validation Dice curve, and sends them to whatever logger the run
uses (wandb images, TensorBoard figures, or PNG files next to a CSV log). Figures are drawn on
plain matplotlib `Figure` objects with the Agg canvas, so no pyplot window or global figure
state is involved, whatever matplotlib backend the process uses.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

from text2brain.figures import new_figure
from text2brain.metrics import DICE_THRESHOLDS, dice_auc_from_curve

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

PLOTS = ("glass_brain", "stat_map")
#: Longest figure title (the example's text, shortened); wandb captions get more.
TITLE_CHARS = 80
CAPTION_CHARS = 500
#: Fraction of the mask shown in each map panel (its most activated voxels).
DISPLAY_TOP = 0.10


class MapFigureLogger(L.Callback):
    """Logs target vs predicted maps of a few validation examples, and the Dice curve.

    After each due validation (on rank zero, never during the sanity check or a fast_dev_run),
    the first `n_maps` examples of the validation set (collected once, then reused so that
    epochs compare) are predicted with `pl_module.predict_texts`; each gets a figure with a
    "target" and a "prediction" panel titled by its text, each showing its top 10% voxels by
    magnitude (the voxels Dice@10 compares; positive red, negative blue). A second figure
    shows the mean validation Dice curves of `pl_module.last_curves` with their AUC.

    Where the figures go depends on each of `trainer.loggers`:

    - WandbLogger: `log_image` under "val/maps" (captioned by the texts) and "val/dice_curve";
    - TensorBoardLogger: `add_figure` under "val/maps/<i>" and "val/dice_curve";
    - any other logger, or none: PNG files in `<log_dir>/figures/epoch_<epoch>/` (`map_<i>.png`,
      `dice_curve.png`), `log_dir` being the logger's (else the trainer's default_root_dir).

    A figure that fails (plotting, a missing brain space, ...) never stops training: the
    first failure of each kind is reported with a warning, later ones at debug level.

    The figures are drawn in `on_validation_end`, not `on_validation_epoch_end`: Lightning runs
    the callbacks' epoch-end hooks before the module's, so the module's Dice curves of the
    epoch only exist once validation has ended (the model is still in eval mode then).

    Args:
        n_maps: number of validation examples drawn each time (0: Dice curve only).
        every_n_epochs: draw after the validations of every n-th epoch (epochs n, 2n, ...
            counting from 1). Standalone `trainer.validate` runs always draw.
        plot: "glass_brain" (nilearn plot_glass_brain) or "stat_map" (plot_stat_map on the
            MNI template).
        dpi: resolution of the figures.
    """

    def __init__(
        self,
        n_maps: int = 4,
        every_n_epochs: int = 1,
        plot: str = "glass_brain",
        dpi: int = 80,
    ) -> None:
        super().__init__()
        if n_maps < 0:
            raise ValueError(f"n_maps must be >= 0, got {n_maps}")
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        if plot not in PLOTS:
            raise ValueError(f"plot must be one of {PLOTS}, got {plot!r}")
        if dpi < 1:
            raise ValueError(f"dpi must be >= 1, got {dpi}")
        self.n_maps = n_maps
        self.every_n_epochs = every_n_epochs
        self.plot = plot
        self.dpi = dpi
        self._examples: dict[str, Any] | None = None
        self._warned: set[str] = set()

    # -- hooks --------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # A new fit/validate run may use other data: collect the examples again.
        self._examples = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._due(trainer):
            return
        epoch = trainer.current_epoch
        figures: list[tuple[str, Figure, str]] = []  # (name, figure, caption)
        try:
            if self.n_maps > 0:
                figures += self._try("the map figures", self._map_figures, trainer, pl_module)
            figures += self._try("the Dice curve figure", self._dice_figure, pl_module, epoch)
            if figures:
                self._try("logging the figures", self._log, trainer, figures)
        finally:
            for _, fig, _ in figures:
                fig.clear()
            figures.clear()

    def _due(self, trainer: L.Trainer) -> bool:
        if trainer.sanity_checking or trainer.fast_dev_run or not trainer.is_global_zero:
            return False
        if trainer.state.fn != "fit":
            return True
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def _try(self, what: str, fn: Any, *args: Any) -> Any:
        """`fn(*args)`, or [] with a warning (first time for `what`) when it fails."""
        try:
            return fn(*args)
        except Exception as error:  # noqa: BLE001 - a figure must never stop training
            reason = f"{type(error).__name__}: {error}"
            if what not in self._warned:
                self._warned.add(what)
                warnings.warn(
                    f"MapFigureLogger: {what} failed ({reason}); training goes on without "
                    "them (later failures of the same kind are not reported again)",
                    RuntimeWarning,
                    stacklevel=2,
                )
            else:
                log.debug("MapFigureLogger: %s failed again (%s)", what, reason)
            return []

    # -- examples -----------------------------------------------------------------------------
    def examples(self, trainer: L.Trainer) -> dict[str, Any]:
        """The first `n_maps` validation examples: {"text": [...], "map": (n, n_voxels)}."""
        if self._examples is None:
            batch = first_validation_examples(trainer, self.n_maps)
            texts = [str(t) for t in batch["text"]][: self.n_maps]
            maps = batch["map"]
            maps = maps.detach().float().cpu().numpy() if torch.is_tensor(maps) else maps
            maps = np.asarray(maps, dtype=np.float32)[: len(texts)]
            if maps.ndim != 2 or len(maps) != len(texts):
                raise ValueError(
                    f"validation batches must hold one map per text, got {len(texts)} texts "
                    f"and maps of shape {maps.shape}"
                )
            self._examples = {"text": texts, "map": maps}
        return self._examples

    # -- figures ------------------------------------------------------------------------------
    def _map_figures(
        self, trainer: L.Trainer, pl_module: L.LightningModule
    ) -> list[tuple[str, Figure, str]]:
        space = getattr(pl_module, "space", None)
        if space is None:
            raise RuntimeError("the model has no brain space (pl_module.space)")
        examples = self.examples(trainer)
        texts, targets = examples["text"], examples["map"]
        if not texts:
            return []
        with torch.inference_mode(), trainer.precision_plugin.forward_context():
            preds = pl_module.predict_texts(texts)
        preds = np.asarray(torch.as_tensor(preds).detach().float().cpu().numpy())
        if preds.shape != targets.shape:
            raise ValueError(
                f"predict_texts returned shape {tuple(preds.shape)} for targets of shape "
                f"{targets.shape}"
            )
        figures = []
        try:
            for i, (text, target, pred) in enumerate(zip(texts, targets, preds, strict=True)):
                fig = self._map_figure(space, text, target, pred)
                figures.append((f"map_{i}", fig, shorten(text, CAPTION_CHARS)))
        except BaseException:
            for _, fig, _ in figures:
                fig.clear()
            raise
        return figures

    def _map_figure(self, space: Any, text: str, target: np.ndarray, pred: np.ndarray) -> Figure:
        from nilearn import plotting

        draw = plotting.plot_glass_brain if self.plot == "glass_brain" else plotting.plot_stat_map
        # Positive red, negative blue (predictions can be negative), each panel on its scale.
        options: dict[str, Any] = {"colorbar": True, "symmetric_cbar": True}
        if self.plot == "glass_brain":
            options["plot_abs"] = False
        fig = new_figure((8.0, 5.5), self.dpi)
        try:
            axes = fig.subplots(2, 1)
            with warnings.catch_warnings():
                # nilearn warns about e.g. flat or empty maps: noise in a training log.
                warnings.simplefilter("ignore")
                for ax, title, vector in zip(
                    axes, ("target", "prediction"), (target, pred), strict=True
                ):
                    draw(
                        space.to_nifti(vector),
                        figure=fig,
                        axes=ax,
                        title=title,
                        threshold=display_threshold(vector),
                        **options,
                    )
            fig.suptitle(shorten(text, TITLE_CHARS), fontsize="medium")
        except BaseException:
            fig.clear()
            raise
        return fig

    def _dice_figure(
        self, pl_module: L.LightningModule, epoch: int
    ) -> list[tuple[str, Figure, str]]:
        curves = getattr(pl_module, "last_curves", None) or {}
        if not curves:
            return []
        x = np.asarray(DICE_THRESHOLDS) * 100
        fig = new_figure((6.0, 4.0), self.dpi)
        try:
            ax = fig.add_subplot()
            for name, curve in sorted(curves.items()):
                curve = torch.as_tensor(curve).detach().float().cpu()
                auc = float(dice_auc_from_curve(curve, DICE_THRESHOLDS))
                ax.plot(x, curve.numpy(), marker=".", label=f"{name} (AUC {auc:.4f})")
            ax.plot(x, x / 100, linestyle="--", color="grey", label="chance")
            ax.set_xlabel("top voxels (% of the mask)")
            ax.set_ylabel("Dice")
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
            ax.set_title(f"validation Dice, epoch {epoch}")
            fig.tight_layout()
        except BaseException:
            fig.clear()
            raise
        return [("dice_curve", fig, f"epoch {epoch}")]

    # -- logging ------------------------------------------------------------------------------
    def _log(self, trainer: L.Trainer, figures: list[tuple[str, Figure, str]]) -> None:
        step = trainer.global_step
        maps = [(name, fig, caption) for name, fig, caption in figures if name != "dice_curve"]
        dice = [(fig, caption) for name, fig, caption in figures if name == "dice_curve"]
        folders: list[Path] = []
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                if maps:
                    logger.log_image(
                        key="val/maps",
                        images=[to_image(fig) for _, fig, _ in maps],
                        caption=[caption for _, _, caption in maps],
                        step=step,
                    )
                if dice:
                    logger.log_image(
                        key="val/dice_curve",
                        images=[to_image(fig) for fig, _ in dice],
                        caption=[caption for _, caption in dice],
                        step=step,
                    )
            elif isinstance(logger, TensorBoardLogger):
                for name, fig, _ in maps:
                    tag = f"val/maps/{name.removeprefix('map_')}"
                    logger.experiment.add_figure(tag, fig, global_step=step, close=False)
                for fig, _ in dice:
                    logger.experiment.add_figure(
                        "val/dice_curve", fig, global_step=step, close=False
                    )
            else:
                folder = Path(
                    getattr(logger, "log_dir", None)
                    or getattr(logger, "save_dir", None)
                    or trainer.default_root_dir
                )
                if folder not in folders:
                    folders.append(folder)
        if not trainer.loggers:
            folders.append(Path(trainer.default_root_dir))
        for folder in folders:
            out = folder / "figures" / f"epoch_{trainer.current_epoch:03d}"
            out.mkdir(parents=True, exist_ok=True)
            for name, fig, _ in figures:
                save_png(fig, out / f"{name}.png", self.dpi)


def first_validation_examples(trainer: L.Trainer, n: int) -> dict[str, Any]:
    """A batch of the first `n` examples of the (first) validation set.

    Built from the validation loader's dataset and collate function (no loader workers, no
    distributed sampler); an iterable dataset gives its loader's first batch instead.
    """
    loader = trainer.val_dataloaders
    if loader is None and getattr(trainer, "datamodule", None) is not None:
        loader = trainer.datamodule.val_dataloader()
    if isinstance(loader, dict):
        loader = next(iter(loader.values()), None)
    if isinstance(loader, (list, tuple)):
        loader = loader[0] if loader else None
    if loader is None:
        raise RuntimeError("the trainer has no validation dataloader")
    dataset = getattr(loader, "dataset", None)
    collate = getattr(loader, "collate_fn", None)
    if (
        collate is not None
        and not isinstance(dataset, torch.utils.data.IterableDataset)
        and hasattr(dataset, "__getitem__")
        and hasattr(dataset, "__len__")
    ):
        return collate([dataset[i] for i in range(min(n, len(dataset)))])
    return next(iter(loader))


def display_threshold(vector: np.ndarray, top: float = DISPLAY_TOP) -> float:
    """Magnitude below which a map's voxels are hidden: its top `top` fraction of the mask
    is shown (the voxels Dice@10 compares); a sparser map shows its non-negligible voxels."""
    magnitude = np.abs(np.asarray(vector, dtype=np.float64))
    threshold = float(np.quantile(magnitude, 1.0 - top)) if magnitude.size else 0.0
    if threshold <= 0.0:
        # Most voxels are 0: hide the zeros and the faint kernel tails around the peaks.
        threshold = 1e-3 * float(magnitude.max(initial=0.0))
    return threshold if threshold > 0.0 else 1e-12


def to_image(fig: Figure) -> Any:
    """The figure rendered as an RGB PIL image."""
    from PIL import Image

    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return Image.fromarray(rgba[..., :3].copy())


def save_png(fig: Figure, path: Path, dpi: int) -> None:
    """Write the figure as a PNG file atomically (a reader never sees half a file)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)


def shorten(text: str, width: int) -> str:
    """`text` on one line, cut to at most `width` characters with an ellipsis."""
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"
