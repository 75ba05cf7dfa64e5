"""A comparison file: reading and checking it, and fitting the models it names by config."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: Queries of the Text2Brain paper's qualitative figures, and a few classic contrasts.
PAPER_QUERIES = (
    "self-generated thought",
    "task-unrelated thought",
    "default network",
    "2-back vs 0-back",
    "move tongue",
    "face recognition",
    "reward anticipation",
    "pain",
)


def load_spec(path: str | Path) -> dict[str, Any]:
    """A comparison file (YAML), checked: out_dir, data, models, queries."""
    import yaml

    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"cannot read comparison file {str(path)!r}: {err}") from err
    if not isinstance(spec, dict) or not isinstance(spec.get("models"), dict) or not spec["models"]:
        raise ValueError(f"{str(path)!r} must hold a mapping with a non-empty 'models' mapping")
    unknown = sorted(set(spec) - {"out_dir", "data", "models", "queries"})
    if unknown:
        raise ValueError(
            f"{str(path)!r}: unknown keys {unknown} (known: out_dir, data, models, queries)"
        )
    queries = spec.get("queries", "paper")
    if queries == "paper":
        queries = list(PAPER_QUERIES)
    if not isinstance(queries, list) or not all(isinstance(q, str) and q.strip() for q in queries):
        raise ValueError(f"{str(path)!r}: queries must be 'paper' or a list of non-empty texts")
    models = {}
    for name, entry in spec["models"].items():
        entry = {"path": entry} if isinstance(entry, str) else dict(entry or {})
        source = (
            entry.pop("config", None) or entry.pop("checkpoint", None) or entry.pop("path", None)
        )
        args = [str(a) for a in entry.pop("args", [])]
        if source is None or entry:
            raise ValueError(
                f"{str(path)!r}: model {name!r} needs a config or checkpoint path "
                f"(and optional args); got {spec['models'][name]!r}"
            )
        models[str(name)] = {"source": str(source), "args": args}
    return {
        "out_dir": Path(spec.get("out_dir") or "runs/compare"),
        "data": dict(spec.get("data") or {}),
        "models": models,
        "queries": queries,
    }


def fit_config(config: str, args: Sequence[str], data: Mapping[str, Any], workdir: Path) -> str:
    """`text2brain fit -c config` on the comparison's data, its checkpoints in `workdir`; the
    path of its best checkpoint."""
    import yaml

    from text2brain.training import run_lightning_cli

    workdir.mkdir(parents=True, exist_ok=True)
    data_config = workdir / "data.yaml"  # kept: says what the model was fitted on
    data_config.write_text(yaml.safe_dump({"data": dict(data)}), encoding="utf-8")
    # A fit of its own folder, replaced by a rerun: its best checkpoint is scored at once.
    own = ["--checkpoint_dir", str(workdir / "checkpoints"), "--overwrite", "true"]
    cli = run_lightning_cli(["fit", "-c", config, "-c", str(data_config), *own, *args])
    callback = cli.trainer.checkpoint_callback
    best = getattr(callback, "best_model_path", "") if callback else ""
    if not best or not Path(best).is_file():
        raise RuntimeError(
            f"fitting {config!r} wrote no best checkpoint: its trainer needs a ModelCheckpoint "
            "monitoring val/dice_auc (as the shipped configs have)"
        )
    return best
