"""Tests for text2brain.callbacks.MapFigureLogger (and the config the CLI sends to loggers).

A tiny Text2Brain (random 2-layer BERT, 3-block decoder) is trained for a few two-batch epochs
on a synthetic corpus, on CPU, with each kind of logger.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from model_configs import tiny_init_args
from PIL import Image
from synthetic import small_space, tiny_data_args, tiny_datamodule

from text2brain.callbacks import MapFigureLogger, shorten
from text2brain.models.text2brain import Text2Brain

REPO = Path(__file__).resolve().parents[1]
MAP_FILES = {"map_0.png", "map_1.png", "dice_curve.png"}


# -- fixtures ----------------------------------------------------------------------------------


def fit_tiny(
    tiny_bert: Path,
    data_files: dict[str, str],
    root: Path,
    callback: MapFigureLogger,
    logger: Any = False,
    **options: Any,
) -> L.Trainer:
    """Trains the tiny Text2Brain for two 2-batch epochs on CPU with `callback`."""
    L.seed_everything(0, verbose=False)
    settings = {
        "max_epochs": 2,
        "limit_train_batches": 2,
        "accelerator": "cpu",
        "devices": 1,
        "logger": logger,
        "callbacks": [callback],
        "default_root_dir": str(root),
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "log_every_n_steps": 1,
        **options,
    }
    trainer = L.Trainer(**settings)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(
            Text2Brain(**tiny_init_args("text2brain", tiny_bert)),
            datamodule=tiny_datamodule(data_files, tiny_bert),
        )
    assert trainer.state.finished
    return trainer


@pytest.fixture
def fit(tiny_bert: Path, data_files: dict[str, str], tmp_path: Path):
    """fit(callback, logger=..., **trainer options) -> the trainer, after a tiny training."""

    def run(callback: MapFigureLogger, logger: Any = False, **options: Any) -> L.Trainer:
        return fit_tiny(tiny_bert, data_files, tmp_path, callback, logger, **options)

    return run


@pytest.fixture
def log_spy(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Records each time MapFigureLogger hands figures to the loggers."""
    calls: list[dict[str, Any]] = []
    original = MapFigureLogger._log

    def spy(self: MapFigureLogger, trainer: L.Trainer, figures: list) -> None:
        calls.append(
            {
                "epoch": trainer.current_epoch,
                "sanity": trainer.sanity_checking,
                "names": [name for name, _, _ in figures],
            }
        )
        original(self, trainer, figures)

    monkeypatch.setattr(MapFigureLogger, "_log", spy)
    return calls


class TolerantLoader(yaml.SafeLoader):
    """Safe YAML loading that reads `!!python/object` nodes as plain mappings."""


TolerantLoader.add_multi_constructor(
    "tag:yaml.org,2002:python/",
    lambda loader, suffix, node: (
        loader.construct_mapping(node) if isinstance(node, yaml.MappingNode) else None
    ),
)


def assert_png(path: Path) -> None:
    assert path.stat().st_size > 2000, path
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 100 and image.height > 100
        image.verify()


# -- arguments and configs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [{"n_maps": -1}, {"every_n_epochs": 0}, {"plot": "surface"}, {"dpi": 0}],
)
def test_rejects_bad_arguments(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        MapFigureLogger(**options)


def test_shorten() -> None:
    assert shorten("  working\n memory  ", 80) == "working memory"
    cut = shorten("word " * 40, 80)
    assert len(cut) <= 80 and cut.endswith("…")


def test_trainer_config_adds_the_callback() -> None:
    config = yaml.safe_load((REPO / "configs" / "trainer" / "default.yaml").read_text())
    paths = [c["class_path"] for c in config["callbacks"]]
    assert "lightning.pytorch.callbacks.ModelCheckpoint" in paths
    assert "lightning.pytorch.callbacks.LearningRateMonitor" in paths
    (entry,) = [c for c in config["callbacks"] if c["class_path"].endswith("MapFigureLogger")]
    assert entry["class_path"] == "text2brain.callbacks.MapFigureLogger"
    assert MapFigureLogger(**entry["init_args"]).n_maps == 4


@pytest.mark.parametrize("plot", ["glass_brain", "stat_map"])
def test_map_figure_of_each_plot_kind(plot: str, tmp_path: Path) -> None:
    from text2brain.callbacks import save_png, to_image

    space = small_space()
    rng = np.random.default_rng(0)
    target = rng.random(space.n_voxels).astype(np.float32)
    callback = MapFigureLogger(plot=plot, dpi=50)
    fig = callback._map_figure(space, "working memory " * 20, target, target - 0.5)
    texts = {t.get_text() for ax in fig.axes for t in ax.texts}
    assert {"target", "prediction"} <= texts
    assert fig.get_suptitle() == shorten("working memory " * 20, 80)
    image = to_image(fig)
    assert image.mode == "RGB" and image.size == (400, 275)
    save_png(fig, tmp_path / "map.png", 50)
    assert_png(tmp_path / "map.png")
    assert plt.get_fignums() == []  # drawn outside pyplot: nothing left open


# -- one run, three loggers -------------------------------------------------------------------


@pytest.fixture(scope="module")
def logged_run(tiny_bert: Path, data_files: dict[str, str], tmp_path_factory) -> dict[str, Any]:
    """Two epochs (no sanity check) with a CSV, a TensorBoard and an offline wandb logger.

    Spies record what reaches TensorBoard and wandb, and the texts given to predict_texts.
    (conftest's session-wide isolation keeps it offline and out of the user's cache.)
    """
    pytest.importorskip("wandb")
    import wandb

    root = tmp_path_factory.mktemp("logged-run")
    wandb_home = root / "wandb-home"
    wandb_home.mkdir()
    record: dict[str, Any] = {"root": root, "wandb": [], "tensorboard_figures": [], "predicted": []}

    def log_image(self: WandbLogger, key: str, images: list, step: int | None = None, **kw):
        record["wandb"].append({"key": key, "images": images, "step": step, **kw})
        return original_log_image(self, key, images, step, **kw)

    def predict_texts(self: Text2Brain, texts: list[str]) -> torch.Tensor:
        record["predicted"].append((list(texts), self.training, torch.is_grad_enabled()))
        return original_predict(self, texts)

    original_log_image = WandbLogger.log_image
    original_predict = Text2Brain.predict_texts

    with pytest.MonkeyPatch.context() as patch:
        for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
            patch.setenv(name, str(wandb_home))
        patch.setenv("WANDB_MODE", "offline")
        patch.setenv("WANDB_SILENT", "true")
        patch.setenv("WANDB_CONSOLE", "off")
        patch.setattr(WandbLogger, "log_image", log_image)
        patch.setattr(Text2Brain, "predict_texts", predict_texts)
        csv = CSVLogger(root / "csv", name="run")
        tensorboard = TensorBoardLogger(root / "tb", name="run")
        original_add_figure = tensorboard.experiment.add_figure

        def add_figure(tag: str, figure: Any, global_step: int | None = None, **kw: Any) -> None:
            record["tensorboard_figures"].append((tag, global_step, kw.get("close")))
            original_add_figure(tag, figure, global_step, **kw)

        patch.setattr(tensorboard.experiment, "add_figure", add_figure)
        wandb_logger = WandbLogger(project="text2brain-test", save_dir=str(root), offline=True)
        callback = MapFigureLogger(n_maps=2)
        try:
            trainer = fit_tiny(
                tiny_bert,
                data_files,
                root,
                callback,
                logger=[csv, tensorboard, wandb_logger],
                num_sanity_val_steps=0,
            )
            record["wandb_run_dir"] = Path(wandb_logger.experiment.dir).parent
        finally:
            wandb.finish()
    record.update(trainer=trainer, callback=callback, csv=csv, tensorboard=tensorboard)
    record["open_figures"] = plt.get_fignums()
    return record


def test_csv_logger_writes_pngs(logged_run: dict[str, Any]) -> None:
    figures = Path(logged_run["csv"].log_dir) / "figures"
    # No sanity check ran: epoch 0's Dice curve can only come from epoch 0's own validation,
    # so the figures are drawn after the module has computed the epoch's metrics.
    assert sorted(p.name for p in figures.iterdir()) == ["epoch_000", "epoch_001"]
    for epoch in figures.iterdir():
        assert {p.name for p in epoch.iterdir()} == MAP_FILES
        for png in epoch.iterdir():
            assert_png(png)
    assert logged_run["trainer"].current_epoch == 2
    # Only the non-image logger got files.
    assert not list(logged_run["root"].glob("tb/**/figures"))
    assert not (logged_run["root"] / "figures").exists()


def test_tensorboard_logger_gets_figures(logged_run: dict[str, Any]) -> None:
    expected = [
        (tag, step, False)
        for step in (2, 4)
        for tag in ("val/dice_curve", "val/maps/0", "val/maps/1")
    ]
    assert sorted(logged_run["tensorboard_figures"]) == sorted(expected)
    (events,) = Path(logged_run["tensorboard"].log_dir).glob("events.out.tfevents.*")
    assert events.stat().st_size > 10_000  # the images are in it


def test_wandb_offline_logs_images(logged_run: dict[str, Any]) -> None:
    logged = logged_run["wandb"]
    assert [(c["key"], c["step"]) for c in logged] == [
        ("val/maps", 2),
        ("val/dice_curve", 2),
        ("val/maps", 4),
        ("val/dice_curve", 4),
    ]
    maps = logged[0]
    assert len(maps["images"]) == 2 and len(maps["caption"]) == 2
    assert all(isinstance(image, Image.Image) for image in maps["images"])
    assert all(isinstance(caption, str) and caption for caption in maps["caption"])
    media = list((logged_run["wandb_run_dir"] / "files" / "media" / "images").rglob("*.png"))
    assert len(media) == 2 * (2 + 1)  # two epochs of two maps and a Dice curve


def test_examples_are_fixed_and_predicted_in_eval_mode(logged_run: dict[str, Any]) -> None:
    predicted = logged_run["predicted"]
    assert len(predicted) == 2
    (texts, training, grad), (texts_again, _, _) = predicted
    assert texts == texts_again and len(texts) == 2
    assert not training and not grad
    trainer = logged_run["trainer"]
    dataset = trainer.datamodule.dataset("val")
    batch = trainer.val_dataloaders.collate_fn([dataset[i] for i in range(2)])
    assert texts == batch["text"]
    examples = logged_run["callback"].examples(trainer)
    np.testing.assert_array_equal(examples["map"], batch["map"].numpy())


def test_no_figure_left_open(logged_run: dict[str, Any]) -> None:
    assert logged_run["open_figures"] == []


# -- when figures are made ---------------------------------------------------------------------


def test_every_n_epochs_and_no_sanity_check_figures(fit, tmp_path: Path, log_spy: list) -> None:
    logger = CSVLogger(tmp_path / "logs", name="run")
    fit(MapFigureLogger(n_maps=1, every_n_epochs=2), logger=logger, num_sanity_val_steps=1)
    figures = Path(logger.log_dir) / "figures"
    assert sorted(p.name for p in figures.iterdir()) == ["epoch_001"]
    assert {p.name for p in (figures / "epoch_001").iterdir()} == {"map_0.png", "dice_curve.png"}
    assert log_spy == [{"epoch": 1, "sanity": False, "names": ["map_0", "dice_curve"]}]


def fake_trainer(**state: Any) -> SimpleNamespace:
    defaults = {
        "sanity_checking": False,
        "fast_dev_run": False,
        "is_global_zero": True,
        "state": SimpleNamespace(fn="fit"),
        "current_epoch": 0,
    }
    return SimpleNamespace(**{**defaults, **state})


def test_due() -> None:
    callback = MapFigureLogger(every_n_epochs=3)
    assert [callback._due(fake_trainer(current_epoch=e)) for e in range(6)] == [
        False,
        False,
        True,
        False,
        False,
        True,
    ]
    assert not callback._due(fake_trainer(current_epoch=2, sanity_checking=True))
    assert not callback._due(fake_trainer(current_epoch=2, fast_dev_run=True))
    assert not callback._due(fake_trainer(current_epoch=2, is_global_zero=False))
    assert callback._due(fake_trainer(current_epoch=0, state=SimpleNamespace(fn="validate")))


def test_png_folders_without_image_logger(tmp_path: Path) -> None:
    from text2brain.figures import new_figure

    def figures() -> list:
        fig = new_figure((2.0, 2.0), 50)
        fig.add_subplot().plot([0, 1], [1, 0])
        return [("map_0", fig, "a text"), ("dice_curve", fig, "epoch 3")]

    callback = MapFigureLogger()
    # No logger: the trainer's default_root_dir.
    trainer = fake_trainer(
        loggers=[], default_root_dir=str(tmp_path / "root"), global_step=7, current_epoch=3
    )
    callback._log(trainer, figures())
    written = tmp_path / "root" / "figures" / "epoch_003"
    assert {p.name for p in written.iterdir()} == {"map_0.png", "dice_curve.png"}
    # Two CSV loggers in one folder write once; a logger with a save_dir only writes there.
    csv = CSVLogger(tmp_path / "csv", name="run", version=0)
    other = SimpleNamespace(save_dir=str(tmp_path / "other"))
    trainer.loggers = [csv, CSVLogger(tmp_path / "csv", name="run", version=0), other]
    callback._log(trainer, figures())
    for folder in (Path(csv.log_dir), tmp_path / "other"):
        assert {p.name for p in (folder / "figures" / "epoch_003").iterdir()} == {
            "map_0.png",
            "dice_curve.png",
        }


def test_plotting_failure_warns_once_and_training_goes_on(fit, tmp_path: Path, monkeypatch) -> None:
    import nilearn.plotting

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("no glass today")

    monkeypatch.setattr(nilearn.plotting, "plot_glass_brain", broken)
    logger = CSVLogger(tmp_path / "logs", name="run")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = fit(MapFigureLogger(n_maps=2), logger=logger, num_sanity_val_steps=0)
    ours = [w for w in caught if "MapFigureLogger" in str(w.message)]
    assert len(ours) == 1
    assert "no glass today" in str(ours[0].message)
    assert trainer.current_epoch == 2
    figures = Path(logger.log_dir) / "figures"
    for epoch in ("epoch_000", "epoch_001"):  # the Dice curve does not depend on nilearn
        assert {p.name for p in (figures / epoch).iterdir()} == {"dice_curve.png"}
    assert plt.get_fignums() == []


# -- the CLI sends the full config to the logger ------------------------------------------------


def test_cli_logs_full_config(
    tiny_bert: Path, data_files: dict[str, str], tmp_path: Path, monkeypatch
) -> None:
    from text2brain.training import run_lightning_cli

    monkeypatch.chdir(tmp_path)
    config = {
        "model": {
            "class_path": "text2brain.models.text2brain.Text2Brain",
            "init_args": tiny_init_args("text2brain", tiny_bert),
        },
        "data": tiny_data_args(data_files, tiny_bert),
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 1,
            "limit_train_batches": 2,
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(tmp_path / "logs")},
            },
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "log_every_n_steps": 1,
            "default_root_dir": str(tmp_path),
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(tmp_path / "ckpt")},
                },
                {
                    "class_path": "text2brain.callbacks.MapFigureLogger",
                    "init_args": {"n_maps": 0},
                },
            ],
        },
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        cli = run_lightning_cli(["fit", "-c", str(path), "--trainer.max_epochs", "1"])
    log_dir = Path(cli.trainer.logger.log_dir)
    hparams = yaml.load((log_dir / "hparams.yaml").read_text(), Loader=TolerantLoader)
    logged = hparams["config"]
    assert {"model", "data", "trainer"} <= set(logged)
    assert logged["model"]["class_path"] == "text2brain.models.text2brain.Text2Brain"
    assert logged["model"]["init_args"]["decoder"]["seed_channels"] == 8
    assert logged["data"]["n_val"] == 8
    assert logged["trainer"]["max_epochs"] == 1
    assert (log_dir / "config.yaml").is_file()
    # The callback given in the YAML ran (n_maps: 0 -> the Dice curve only).
    assert {p.name for p in (log_dir / "figures" / "epoch_000").iterdir()} == {"dice_curve.png"}
    assert any((tmp_path / "ckpt").glob("*.ckpt"))
