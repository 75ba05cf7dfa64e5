"""text2brain.training: what a head needs from its run, and the shipped configs that rely on it.

A head's registry name sets its checkpoint folder (or `checkpoint_dir` does), a head declares
the trainer arguments it needs and the callbacks it drops (`trainer_arguments`,
`dropped_callbacks`), and `--print_config` prints the run with them applied. The shipped
configs must still give exactly the runs they gave when each of them spelled all of this out.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonargparse import Namespace

import text2brain.training
from text2brain.cli import main
from text2brain.models import MODELS, model_class
from text2brain.models.closed_form import ClosedFormModule
from text2brain.training import (
    apply_run_needs,
    checkpoint_name,
    explicit_trainer_keys,
    head_class,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SHIPPED = [
    "text2brain",
    "text2brain-finetune",
    "release",
    "clip",
    "mnm",
    "corpus_mean",
    "neuroquery",
    "neurosynth",
]
CLOSED_FORM = {"corpus_mean", "neuroquery", "neurosynth"}
CHECKPOINT = "lightning.pytorch.callbacks.ModelCheckpoint"


# -- the configs as every top-level config spelled them out before heads declared their needs ----
def old_callbacks(folder: str, closed_form: bool) -> list[dict[str, Any]]:
    """The callbacks that each top-level config used to repeat to set its checkpoint folder."""
    best = {"dirpath": folder, "filename": "best", "monitor": "val/dice_auc", "mode": "max"}
    last = {"dirpath": folder, "save_top_k": 0, "save_last": True, "every_n_train_steps": 100}
    figures = {"class_path": "text2brain.callbacks.MapFigureLogger", "init_args": {"n_maps": 4}}
    if closed_form:
        return [{"class_path": CHECKPOINT, "init_args": best}, figures]
    return [
        {"class_path": CHECKPOINT, "init_args": best},
        {"class_path": CHECKPOINT, "init_args": last},
        {
            "class_path": "lightning.pytorch.callbacks.LearningRateMonitor",
            "init_args": {"logging_interval": "step"},
        },
        figures,
    ]


#: The trainer keys of the old closed-form configs.
OLD_CLOSED_FORM_TRAINER = {
    "trainer.precision": "32-true",
    "trainer.gradient_clip_val": None,
    "trainer.max_epochs": 1,
    "trainer.limit_train_batches": 1,
    "trainer.num_sanity_val_steps": 0,
    "trainer.log_every_n_steps": 1,
}


def old_style(name: str, folder: Path) -> Path:
    """The shipped config `name` as it was written before: callbacks with their dirpath and,
    for a closed-form head, its trainer keys; no checkpoint_dir (its includes made absolute)."""
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    config.pop("checkpoint_dir", None)
    for group in ("trainer", "model", "data"):
        config[group] = str(CONFIGS / config[group])
    if name in CLOSED_FORM:
        config.update(OLD_CLOSED_FORM_TRAINER)
    config["trainer.callbacks"] = old_callbacks(f"checkpoints/{name}", name in CLOSED_FORM)
    path = folder / f"old-{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def printed(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> dict[str, Any]:
    """`text2brain fit ARGV --print_config`, parsed; no warning about a replaced value."""
    with warnings.catch_warnings(record=True) as warned, pytest.raises(SystemExit) as exc:
        warnings.simplefilter("always")
        main(["fit", *(str(a) for a in argv), "--print_config"])
    assert exc.value.code in (0, None)
    said = [str(w.message) for w in warned]
    assert not [m for m in said if "is replaced" in m or "does not use" in m], said
    return yaml.safe_load(capsys.readouterr().out)


def checkpoint_dirs(config: dict[str, Any]) -> list[str | None]:
    callbacks = config["trainer"]["callbacks"]
    return [c["init_args"]["dirpath"] for c in callbacks if c["class_path"] == CHECKPOINT]


def callback_names(config: dict[str, Any]) -> list[str]:
    return [c["class_path"].rsplit(".", 1)[1] for c in config["trainer"]["callbacks"]]


@pytest.fixture
def run_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working directory, empty: parsing a config must write nothing there."""
    monkeypatch.chdir(tmp_path_factory.mktemp("run"))
    return Path.cwd()


# -- the shipped configs -------------------------------------------------------------------------
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_give_the_runs_they_spelled_out_before(
    name: str, run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each shipped config, now the model choice and what differs, prints the same run as the
    old one that listed its callbacks and closed-form trainer; both still parse."""
    new = printed(capsys, "-c", CONFIGS / f"{name}.yaml")
    old = printed(capsys, "-c", old_style(name, tmp_path))
    assert new.pop("checkpoint_dir") == (None if name in MODELS else f"checkpoints/{name}")
    assert old.pop("checkpoint_dir") is None
    assert new == old
    assert set(checkpoint_dirs(new)) == {f"checkpoints/{name}"}  # never another job's folder
    if name in CLOSED_FORM:
        assert callback_names(new) == ["ModelCheckpoint", "MapFigureLogger"]
        assert new["trainer"]["precision"] == "32-true" and new["trainer"]["max_epochs"] == 1
    else:
        assert callback_names(new) == [
            "ModelCheckpoint",
            "ModelCheckpoint",
            "LearningRateMonitor",
            "MapFigureLogger",
        ]
        assert new["trainer"]["precision"] == "auto"
    assert not list(run_dir.iterdir())  # parsing alone writes nothing


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_head_runs_from_the_default_config_and_its_model_file(
    name: str, run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`-c configs/default.yaml --model configs/model/<name>.yaml`: no top-level config needed."""
    config = printed(
        capsys, "-c", CONFIGS / "default.yaml", "--model", CONFIGS / "model" / f"{name}.yaml"
    )
    assert config["model"]["class_path"] == MODELS[name]
    assert set(checkpoint_dirs(config)) == {f"checkpoints/{name}"}
    trainer = config["trainer"]
    head = model_class(name)
    assert {k: trainer[k] for k in head.trainer_arguments} == head.trainer_arguments
    if issubclass(head, ClosedFormModule):
        assert callback_names(config) == ["ModelCheckpoint", "MapFigureLogger"]
    else:
        assert callback_names(config) == [
            "ModelCheckpoint",
            "ModelCheckpoint",
            "LearningRateMonitor",
            "MapFigureLogger",
        ]


def test_checkpoint_dir_and_an_explicit_dirpath(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = printed(capsys, "-c", CONFIGS / "clip.yaml", "--checkpoint_dir", "elsewhere/clip")
    assert checkpoint_dirs(config) == ["elsewhere/clip", "elsewhere/clip"]
    # A dirpath on a callback is kept; the checkpoint callbacks without one get the folder.
    callbacks = [
        {"class_path": CHECKPOINT, "init_args": {"dirpath": "mine", "monitor": "val/dice_auc"}},
        {"class_path": CHECKPOINT, "init_args": {"save_last": True}},
    ]
    own = tmp_path / "own.yaml"
    own.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    config = printed(capsys, "-c", CONFIGS / "text2brain.yaml", "-c", own)
    assert checkpoint_dirs(config) == ["mine", "checkpoints/text2brain"]


# -- needs and explicit values -------------------------------------------------------------------
def test_a_need_replaces_an_explicit_value_with_a_warning(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    own = tmp_path / "own.yaml"
    lr_monitor = {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor"}
    own.write_text(
        yaml.safe_dump({"trainer.precision": "bf16-mixed", "trainer.callbacks": [lr_monitor]})
    )
    argv = ["fit", "-c", str(CONFIGS / "neuroquery.yaml"), "-c", str(own)]
    with pytest.warns(UserWarning) as warned, pytest.raises(SystemExit):
        main([*argv, "--trainer.max_epochs", "5", "--print_config"])
    said = sorted(str(w.message) for w in warned if "NeuroQuery" in str(w.message))
    assert said == [
        "NeuroQuery does not use these callbacks, dropped: ['LearningRateMonitor']",
        "NeuroQuery needs trainer.max_epochs=1: the config's 5 is replaced",
        "NeuroQuery needs trainer.precision='32-true': the config's 'bf16-mixed' is replaced",
    ]
    trainer = yaml.safe_load(capsys.readouterr().out)["trainer"]
    assert trainer["max_epochs"] == 1 and trainer["precision"] == "32-true"
    assert trainer["callbacks"] == []


def run_config(class_path: str, **changes: Any) -> Namespace:
    """A parsed-looking run config of the head `class_path` over trainer/default.yaml."""
    trainer = yaml.safe_load((CONFIGS / "trainer" / "default.yaml").read_text())
    trainer.update({"limit_train_batches": None, "num_sanity_val_steps": None, **changes})
    config = {"model": {"class_path": class_path}, "trainer": trainer, "checkpoint_dir": None}
    return namespace(config)


def namespace(value: Any) -> Any:
    if isinstance(value, dict):
        return Namespace(**{k: namespace(v) for k, v in value.items()})
    return [namespace(v) for v in value] if isinstance(value, list) else value


@pytest.mark.parametrize("name", sorted(MODELS))
def test_run_needs_of_each_registered_head(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    said: list[str] = []
    monkeypatch.setattr(text2brain.training, "rank_zero_info", said.append)
    config = run_config(MODELS[name])
    before = copy.deepcopy(config.trainer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing explicit: no warning
        apply_run_needs(config)
    head = model_class(name)
    assert checkpoint_name(head) == name and head_class(MODELS[name]) is head
    trainer = config.trainer
    dirs = [c.init_args.dirpath for c in trainer.callbacks if c.class_path == CHECKPOINT]
    closed_form = issubclass(head, ClosedFormModule)
    assert dirs == [f"checkpoints/{name}"] * (1 if closed_form else 2)
    if not closed_form:
        assert head.trainer_arguments == {} and head.dropped_callbacks == {}
        assert said == [f"{head.__name__} run: checkpoints in checkpoints/{name}/"]
        for callback in before.callbacks:
            if callback.class_path == CHECKPOINT:
                callback.init_args.dirpath = f"checkpoints/{name}"
        assert trainer == before
        return
    assert {k: trainer[k] for k in head.trainer_arguments} == {
        "precision": "32-true",
        "gradient_clip_val": None,
        "max_epochs": 1,
        "limit_train_batches": 1,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 1,
    }
    assert [c.class_path.rsplit(".", 1)[1] for c in trainer.callbacks] == [
        "ModelCheckpoint",
        "MapFigureLogger",
    ]
    assert said == [
        f"{head.__name__} run: trainer precision=32-true, gradient_clip_val=None, max_epochs=1, "
        "limit_train_batches=1, num_sanity_val_steps=0, log_every_n_steps=1; callbacks "
        "dropped: ModelCheckpoint(save_last=True, monitor=None), LearningRateMonitor; "
        f"checkpoints in checkpoints/{name}/"
    ]


def test_a_head_not_in_the_registry_gets_its_class_name_in_snake_case() -> None:
    config = run_config("text2brain.models.closed_form.ClosedFormModule")
    apply_run_needs(config)
    assert {c.init_args.get("dirpath") for c in config.trainer.callbacks} >= {
        "checkpoints/closed_form_module"
    }
    assert config.trainer.precision == "32-true"  # its needs apply all the same

    class CLIPLikeHead(ClosedFormModule):
        pass

    assert checkpoint_name(CLIPLikeHead) == "clip_like_head"


def test_a_float_limit_is_not_the_needed_int() -> None:
    """limit_train_batches 1.0 is every batch, 1 is one batch: the need replaces it."""
    config = run_config(MODELS["corpus_mean"], limit_train_batches=1.0)
    with pytest.warns(UserWarning, match="limit_train_batches=1: the config's 1.0 is replaced"):
        apply_run_needs(config, explicit={"limit_train_batches"})
    assert config.trainer.limit_train_batches == 1
    assert isinstance(config.trainer.limit_train_batches, int)


def test_explicit_trainer_keys(tmp_path: Path) -> None:
    """The command line's and the configs' own trainer keys; not an included trainer file's."""
    (tmp_path / "trainer.yaml").write_text("precision: auto\nmax_epochs: 20\n")
    job = tmp_path / "job.yaml"
    job.write_text("trainer: trainer.yaml\ntrainer.max_epochs: 3\nmodel: m.yaml\n")
    nested = tmp_path / "nested.yaml"
    nested.write_text("trainer:\n  logger: false\n")
    argv = [
        "fit",
        "-c",
        str(job),
        f"--config={nested}",
        "--config",
        "{trainer: {devices: 2}, data.batch_size: 8}",
        "--trainer",
        str(tmp_path / "trainer.yaml"),
        "--trainer",
        "{accelerator: cpu}",
        "--trainer.precision=bf16-mixed",
        "--trainer.callbacks+=x",
        "--model.init_args.lr",
        "1",
    ]
    assert explicit_trainer_keys(argv) == {
        "max_epochs",
        "logger",
        "devices",
        "accelerator",
        "precision",
        "callbacks",
    }
    assert explicit_trainer_keys(["fit", "-c", str(CONFIGS / "neuroquery.yaml")]) == set()
