"""The contrastive heads (CLIP, MNM) beyond the registry-wide tests of tests/test_models.py.

Hierarchy batches of the data module, loss terms and their logging, maps by retrieval from the
bank, the checkpoint -> predictor round trip (maps, related articles, describing a map), the
`text2brain query` retrieval options, recall@k against a brute-force count, the entailment
direction option and bad inputs. Tiny heads (tests/model_configs.py) on the synthetic corpus,
one 3-step fit per head shared by the module.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from model_configs import tiny_init_args
from synthetic import quiet_trainer, small_space, write_corpus_files

from text2brain import lorentz
from text2brain.brain import render_article_maps, render_table_maps
from text2brain.cli import main
from text2brain.data import TextMapDataModule
from text2brain.inference import Predictor, load_predictor
from text2brain.models import MODELS, model_class
from text2brain.models.contrastive import losses
from text2brain.models.contrastive.retrieval import (
    matching_ranks,
    recall_at_k,
    retrieval_weights,
    scale_maps,
)
from text2brain.models.contrastive.torch_model import LorentzGeometry
from text2brain.paths import CACHE_DIR_ENV

REPO = Path(__file__).resolve().parents[3]
HEADS = ("clip", "mnm")
TEXTS = ["working memory in the prefrontal cortex", "pain and the insula", "visual cortex"]
HIERARCHY_TABLES = 2


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Any:
    """Tiny models run fastest on one thread (and far faster on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("contrastive-data")
    return {**write_corpus_files(folder), "cache": str(folder / "cache")}


def datamodule(files: dict[str, str], tiny_bert: Path, **kwargs: Any) -> TextMapDataModule:
    options: dict[str, Any] = {
        "corpus": files["corpus"],
        "mask": files["mask"],
        "split_file": files["split_file"],
        "n_test": 8,
        "n_val": 8,
        "keyword_max_df": 0.05,
        "tokenizer": str(tiny_bert),
        "batch_size": 8,
        "num_workers": 0,
        **kwargs,
    }
    return TextMapDataModule(**options)


def trainer(root: Path, **kwargs: Any) -> L.Trainer:
    return quiet_trainer(root, **{"num_sanity_val_steps": 0, **kwargs})


class Logged(L.Callback):
    """Every value logged at each training batch end (`trainer.callback_metrics`)."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append({k: float(v) for k, v in trainer.callback_metrics.items()})


@pytest.fixture(scope="module")
def fitted(
    files: dict[str, str], tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    """Each head fitted 3 bf16 steps on hierarchy batches, validated, then saved."""
    out = {}
    with pytest.MonkeyPatch.context() as mp:  # module scope: the autouse cache fixture is later
        mp.setenv(CACHE_DIR_ENV, files["cache"])
        for name in HEADS:
            root = tmp_path_factory.mktemp(name)
            data = datamodule(files, tiny_bert, hierarchy_tables=HIERARCHY_TABLES)
            L.seed_everything(0, verbose=False)
            model = model_class(name)(**tiny_init_args(name, tiny_bert))
            logged = Logged()
            run = trainer(root, max_steps=3, precision="bf16-mixed", callbacks=[logged])
            run.fit(model, datamodule=data)
            run.validate(model, datamodule=data, verbose=False)
            path = root / f"{name}.ckpt"
            run.save_checkpoint(path)
            out[name] = {
                "model": model.eval(),
                "data": data,
                "path": path,
                "logged": logged.steps,
                "metrics": {k: float(v) for k, v in run.callback_metrics.items()},
            }
    return out


@pytest.fixture(scope="module")
def predictors(fitted: dict[str, dict[str, Any]]) -> dict[str, Predictor]:
    return {name: load_predictor(run["path"], device="cpu") for name, run in fitted.items()}


# -- data module: hierarchy batches -----------------------------------------------------------
def test_hierarchy_batches_pair_article_maps_with_their_tables(
    files: dict[str, str], tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, files["cache"])
    data = datamodule(files, tiny_bert, hierarchy_tables=HIERARCHY_TABLES, batch_size=16)
    data.setup("fit")
    space, coords = data.space, data.corpus.coordinates
    torch.manual_seed(0)
    batch = next(iter(data.train_dataloader()))
    everything = torch.cat([batch["map"], batch["hierarchy_maps"]]).numpy()
    parents, children = batch["hierarchy_parent"].tolist(), batch["hierarchy_child"].tolist()

    # Each article with 2+ tables brings min(N, tables) pairs; one-table articles bring none.
    n_tables = [coords.loc[coords["id"] == a, "table_id"].nunique() for a in batch["article_id"]]
    assert len(parents) == sum(min(HIERARCHY_TABLES, n) for n in n_tables if n >= 2) > 0
    assert any(k == "table" for k in batch["kind"])  # rows of both kinds are exercised
    # A parent is its article's average map, each child one of that article's table maps,
    # and the batch's own rows are reused rather than rendered twice.
    for article_id in batch["article_id"]:
        peaks = coords[coords["id"] == article_id]
        average = render_article_maps(peaks, space)[1][0]
        _, tables = render_table_maps(peaks, space)
        rows = [p for p in set(parents) if np.allclose(everything[p], average, atol=1e-6)]
        if peaks["table_id"].nunique() < 2:
            assert not rows
            continue
        assert len(rows) == 1
        kids = [c for p, c in zip(parents, children, strict=True) if p == rows[0]]
        assert len(kids) == min(HIERARCHY_TABLES, len(tables)) == len(set(kids))
        for kid in kids:
            assert min(np.abs(everything[kid] - t).max() for t in tables) < 1e-6
    assert len(everything) == len(set(parents) | set(children) | set(range(16)))

    # The same seed gives the same pairs as without hierarchy (extra draws come after).
    plain = datamodule(files, tiny_bert, batch_size=16)
    torch.manual_seed(0)
    reference = next(iter(plain.train_dataloader()))
    assert "hierarchy_maps" not in reference
    assert reference["text"] == batch["text"] and torch.equal(reference["map"], batch["map"])
    # Evaluation batches never carry hierarchy keys.
    assert "hierarchy_maps" not in next(iter(data.val_dataloader()))


@pytest.mark.parametrize(("value", "error"), [(-1, ValueError), (1.5, TypeError)])
def test_hierarchy_tables_must_be_a_count(files: dict[str, str], value: Any, error: type) -> None:
    with pytest.raises(error, match="hierarchy_tables"):
        TextMapDataModule(corpus=files["corpus"], hierarchy_tables=value)


# -- training ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", HEADS)
def test_training_logs_each_term_and_stays_finite(
    fitted: dict[str, dict[str, Any]], name: str
) -> None:
    steps = fitted[name]["logged"]
    assert len(steps) == 3
    expected = {"train/loss", "train/contrastive", "train/logit_scale"}
    if name == "mnm":
        expected |= {
            "train/entailment", "train/hierarchy", "train/ordering", "train/curvature",
            "train/alpha_text", "train/alpha_brain", "train/dist0_text", "train/dist0_brain",
        }  # fmt: skip
    for step in steps:
        assert expected <= set(step)
        assert all(math.isfinite(step[k]) for k in expected)
    model = fitted[name]["model"]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    if name == "mnm":
        last = steps[-1]
        weights = model.hparams
        total = (
            last["train/contrastive"]
            + weights.entailment_weight * last["train/entailment"]
            + weights.hierarchy_weight * last["train/hierarchy"]
            + weights.ordering_weight * last["train/ordering"]
        )
        assert last["train/loss"] == pytest.approx(total, rel=1e-4)
        assert 0.1 <= last["train/curvature"] <= 10.0


@pytest.mark.parametrize("name", HEADS)
def test_validation_logs_recall_and_map_metrics(
    fitted: dict[str, dict[str, Any]], name: str
) -> None:
    metrics = fitted[name]["metrics"]
    for key in ("val/dice_auc", "val/contrastive", "val/recall@10_t2b", "val/recall@100_b2t"):
        assert math.isfinite(metrics[key]), key
    # 8 validation pairs: every match is among the 10 nearest.
    assert metrics["val/recall@10_t2b"] == metrics["val/recall@10_b2t"] == 1.0


# -- maps from the bank ------------------------------------------------------------------------
@pytest.mark.parametrize("name", HEADS)
def test_maps_are_weighted_averages_of_the_bank(
    fitted: dict[str, dict[str, Any]], name: str
) -> None:
    model, data = fitted[name]["model"], fitted[name]["data"]
    bank = model.bank
    ids, maps = data.article_maps("train")
    assert bank.ids == list(ids) and bank.maps.dtype == torch.float16
    expected_maps = scale_maps(torch.from_numpy(np.array(maps)))
    torch.testing.assert_close(bank.maps.float(), expected_maps, atol=1e-3, rtol=0)
    titles = {a.id: a.title for a in data.corpus.articles}
    assert bank.titles == [titles[i] for i in ids]
    # The embeddings are those of the final weights (refreshed after the last step).
    with torch.no_grad():
        torch.testing.assert_close(bank.embeddings, model.net.embed_maps(bank.maps.float()))

    with torch.no_grad():
        text = model.embed_text({"text": TEXTS})
        distance = model.net.geometry.cross_distance(text, bank.embeddings)
        k = model.hparams.retrieval_k
        nearest, indices = distance.topk(k, largest=False)
        weights = torch.softmax(-nearest * model.net.geometry.logit_scale(), dim=1)
        expected = torch.einsum("nk,nkv->nv", weights, bank.maps[indices].float())
    predicted = model.predict_texts(TEXTS)
    torch.testing.assert_close(predicted, expected, atol=1e-5, rtol=1e-4)
    assert predicted.max() <= 1.0 + 1e-6


def test_retrieval_weights_top_k_and_temperature() -> None:
    distance = torch.tensor([[3.0, 0.0, 1.0, 2.0]])
    indices, weights = retrieval_weights(distance, k=2, temperature=0.5)
    assert indices.tolist() == [[1, 2]]
    torch.testing.assert_close(weights, torch.softmax(torch.tensor([[0.0, -2.0]]), dim=1))
    assert retrieval_weights(distance, k=10, temperature=1.0)[0].shape == (1, 4)


# -- checkpoint -> predictor -------------------------------------------------------------------
@pytest.mark.parametrize("name", HEADS)
def test_predictor_from_checkpoint(
    fitted: dict[str, dict[str, Any]], predictors: dict[str, Predictor], name: str
) -> None:
    model, predictor = fitted[name]["model"], predictors[name]
    torch.testing.assert_close(
        torch.from_numpy(predictor.predict_vectors(TEXTS)), model.predict_texts(TEXTS)
    )
    (image,) = predictor.predict_maps(TEXTS[:1])
    assert image.shape == predictor.space.shape

    related = predictor.related_articles("working memory", k=4)
    assert len(related) == 4
    assert [r.distance for r in related] == sorted(r.distance for r in related)
    assert {r.article_id for r in related} <= set(model.bank.ids)
    first = related[0]
    row = model.bank.ids.index(first.article_id)
    assert (
        first.title == model.bank.titles[row] and list(first.keywords) == model.bank.keywords[row]
    )

    # A training article's own map is nearest to itself.
    row = 5
    image = predictor.space.to_nifti(model.bank.maps[row].float().numpy())
    described = predictor.describe_map(image, k=3)
    assert len(described) == 3 and described[0].distance == pytest.approx(0.0, abs=1e-4)
    at_zero = {r.article_id for r in described if r.distance <= 1e-4}
    assert model.bank.ids[row] in at_zero


def test_checkpoint_bank_matches_its_weights_mid_training(
    files: dict[str, str], tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A save in the step right after a validation still refreshes the bank's embeddings."""
    monkeypatch.setenv(CACHE_DIR_ENV, files["cache"])
    L.seed_everything(0, verbose=False)
    model = model_class("clip")(**tiny_init_args("clip", tiny_bert))
    every_3 = ModelCheckpoint(tmp_path, "{step}", save_top_k=-1, every_n_train_steps=3)
    run = trainer(
        tmp_path, max_steps=3, val_check_interval=2, enable_checkpointing=True, callbacks=[every_3]
    )
    run.fit(model, datamodule=datamodule(files, tiny_bert))
    loaded = load_predictor(tmp_path / "step=3.ckpt", device="cpu").model
    with torch.no_grad():
        expected = loaded.net.embed_maps(loaded.bank.maps.float())
    torch.testing.assert_close(loaded.bank.embeddings, expected)


def test_bank_travels_in_the_checkpoint(fitted: dict[str, dict[str, Any]]) -> None:
    checkpoint = torch.load(fitted["mnm"]["path"], map_location="cpu", weights_only=True)
    bank = checkpoint["text2brain"]["bank"]
    model = fitted["mnm"]["model"]
    assert bank["ids"] == model.bank.ids and bank["maps"].dtype == torch.float16
    assert not any(key.startswith("bank") for key in checkpoint["state_dict"])


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda p: p.predict_maps([" "]), ValueError, r"texts\[0\] is empty"),
        (lambda p: p.related_articles(""), ValueError, "text is empty"),
        (lambda p: p.related_articles(["pain"]), TypeError, "text must be a str"),
        (lambda p: p.related_articles("pain", k=0), ValueError, "k must be a positive int"),
        (
            lambda p: p.describe_map(nib.Nifti1Image(np.ones((5, 5, 5), np.float32), np.eye(4))),
            ValueError,
            r"image grid \(5, 5, 5\).*does not match",
        ),
        (
            lambda p: p.describe_map(p.space.to_nifti(np.zeros(p.space.n_voxels))),
            ValueError,
            "zero everywhere",
        ),
    ],
)
def test_predictor_rejects_bad_input(
    predictors: dict[str, Predictor], call: Any, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        call(predictors["clip"])


def test_retrieval_needs_a_bank(tiny_bert: Path) -> None:
    model = model_class("clip")(**tiny_init_args("clip", tiny_bert))
    model.set_space(small_space())
    with pytest.raises(ValueError, match="no retrieval bank"):
        model.related_articles(["pain"])
    with pytest.warns(UserWarning, match="no retrieval bank"):
        assert not model.predict_texts(["pain"]).any()


def test_text2brain_predictor_says_it_cannot_retrieve(
    tiny_bert: Path,
    files: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, files["cache"])
    model = model_class("text2brain")(**tiny_init_args("text2brain", tiny_bert))
    run = trainer(tmp_path, max_steps=1, limit_val_batches=0)
    run.fit(model, datamodule=datamodule(files, tiny_bert))
    run.save_checkpoint(tmp_path / "t2b.ckpt")
    predictor = load_predictor(tmp_path / "t2b.ckpt", device="cpu")
    with pytest.raises(TypeError, match="Text2Brain .* cannot find the articles related"):
        predictor.related_articles("pain")
    with pytest.raises(TypeError, match="cannot describe a map"):
        predictor.describe_map(predictor.space.to_nifti(np.ones(predictor.space.n_voxels)))
    argv = ["query", "pain", "--related", "--ckpt", str(tmp_path / "t2b.ckpt")]
    assert_exits_with(argv, "cannot find the articles related to a text", capsys)


# -- text2brain query --------------------------------------------------------------------------
def test_query_command_related_and_describe(
    fitted: dict[str, dict[str, Any]],
    predictors: dict[str, Predictor],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, predictor = fitted["mnm"]["path"], predictors["mnm"]
    image = tmp_path / "map.nii.gz"
    predictor.space.to_nifti(fitted["mnm"]["model"].bank.maps[0].float().numpy()).to_filename(image)
    main(["query", "pain", "--ckpt", str(path), "--related", "-k", "3", "--describe", str(image)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "query\trank\tarticle_id\tdistance\ttitle\tkeywords"
    related = predictor.related_articles("pain", k=3)
    for line, article in zip(lines[1:4], related, strict=True):
        query, rank, article_id, _, title, keywords = line.split("\t")
        assert (query, article_id, title) == ("pain", article.article_id, article.title)
        assert keywords == "; ".join(article.keywords)
    assert lines[4] == "map\trank\tarticle_id\tdistance\ttitle\tkeywords"
    assert len(lines) == 8 and lines[5].startswith(f"{image}\t1\t")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pain"], "give -o/--out-dir to write their maps, or --related"),
        ([], "no query given"),
        (["--describe", "{tmp}/none.nii.gz"], "none.nii.gz"),
    ],
)
def test_query_command_retrieval_errors(
    fitted: dict[str, dict[str, Any]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    argv = ["query", *(a.format(tmp=tmp_path) for a in args), "--ckpt", str(fitted["clip"]["path"])]
    assert_exits_with(argv, message, capsys)


def assert_exits_with(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The command fails with exit status 2 and one line naming the problem."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("text2brain query: error: ") and "\n" not in err
    assert message in err, err


@pytest.mark.parametrize("name", HEADS)
def test_shipped_configs_parse(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["fit", "-c", str(REPO / "configs" / f"{name}.yaml"), "--print_config"])
    assert info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == MODELS[name]
    assert printed["model"]["init_args"]["text"]["encoder"] == printed["data"]["tokenizer"]
    assert printed["data"]["batch_size"] == 128
    assert printed["data"]["hierarchy_tables"] == (2 if name == "mnm" else 0)
    folders = {
        callback["init_args"].get("dirpath")
        for callback in printed["trainer"]["callbacks"]
        if callback["class_path"].endswith("ModelCheckpoint")
    }
    assert folders == {f"checkpoints/{name}"}  # never over another head's checkpoints
    assert not list(tmp_path.iterdir())


# -- recall@k ----------------------------------------------------------------------------------
def brute_force_recall(distance: np.ndarray, k: int) -> float:
    """Row i's match counts as found if fewer than k other columns are at most as far."""
    hits = 0
    for i, row in enumerate(distance):
        others = [row[j] for j in range(len(row)) if j != i]
        hits += sum(d <= row[i] for d in others) < k
    return hits / len(distance)


@pytest.mark.parametrize("seed", range(3))
def test_recall_matches_a_brute_force_count(seed: int) -> None:
    rng = np.random.default_rng(seed)
    distance = rng.integers(0, 6, size=(40, 40)).astype(np.float32)  # many ties
    for k in (1, 5, 10, 100):
        expected = brute_force_recall(distance, k)
        assert recall_at_k(torch.from_numpy(distance), k).item() == pytest.approx(expected)
        assert recall_at_k(torch.from_numpy(distance.T.copy()), k).item() == pytest.approx(
            brute_force_recall(distance.T, k)
        )


def test_recall_counts_ties_against_the_query() -> None:
    assert matching_ranks(torch.zeros(4, 4)).tolist() == [3, 3, 3, 3]
    assert recall_at_k(torch.zeros(4, 4), 3).item() == 0.0
    assert recall_at_k(torch.zeros(4, 4), 4).item() == 1.0
    with pytest.raises(ValueError, match="square"):
        matching_ranks(torch.zeros(3, 4))


# -- MNM options -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["distance", "angle"])
def test_entailment_parent_option(kind: str) -> None:
    torch.manual_seed(0)
    text, brain = torch.randn(6, 8), torch.randn(6, 8)
    by_parent = {p: LorentzGeometry(8, logits=kind, parent=p) for p in ("text", "brain")}
    points = {p: (g.embed(text, "text"), g.embed(brain, "brain")) for p, g in by_parent.items()}
    t, b = points["text"]
    assert torch.equal(t, points["brain"][0]) and torch.equal(b, points["brain"][1])
    c = by_parent["text"].curvature()
    torch.testing.assert_close(
        by_parent["text"].entailment_loss(t, b), losses.entailment_loss(t, b, c)
    )
    torch.testing.assert_close(
        by_parent["brain"].entailment_loss(t, b), losses.entailment_loss(b, t, c)
    )
    if kind == "angle":  # the cone apex is the parent in the logits too
        torch.testing.assert_close(
            by_parent["brain"].cross_distance(t, b),
            lorentz.pairwise_exterior_angle(b, t, c).transpose(0, 1),
        )
        torch.testing.assert_close(
            by_parent["text"].cross_distance(t, b), lorentz.pairwise_exterior_angle(t, b, c)
        )
    else:
        torch.testing.assert_close(
            by_parent["brain"].cross_distance(t, b), by_parent["text"].cross_distance(t, b)
        )
    assert not torch.allclose(
        by_parent["text"].entailment_loss(t, b), by_parent["brain"].entailment_loss(t, b)
    )


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"entailment_parent": "map"}, "entailment_parent must be one of"),
        ({"logits": "cosine"}, "logits must be one of"),
        ({"hierarchy_weight": -1.0}, "loss weights must be >= 0"),
        ({"curvature": 0.0}, "curvature and min_radius must be > 0"),
        ({"retrieval_k": 0}, "retrieval_k must be a positive int"),
        ({"retrieval_temperature": 0.0}, "retrieval_temperature must be > 0"),
    ],
)
def test_mnm_rejects_bad_options(tiny_bert: Path, overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        model_class("mnm")(**{**tiny_init_args("mnm", tiny_bert), **overrides})


def test_curvature_collapse_is_warned_once(tiny_bert: Path) -> None:
    model = model_class("mnm")(**tiny_init_args("mnm", tiny_bert))
    model.set_space(small_space())
    with torch.no_grad():
        model.net.geometry.curvature.log_value.fill_(-100.0)
    model.net.geometry.curvature()  # clamps to the lower bound, as every use does
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.on_train_batch_end(None, None, 0)
        model.on_train_batch_end(None, None, 1)
    assert len(caught) == 1
    assert "curvature reached its lower bound c = 0.1" in str(caught[0].message)


def test_describe_errors_name_the_file(
    fitted: dict[str, dict[str, Any]],
    predictors: dict[str, Predictor],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    space = predictors["clip"].space
    good = space.to_nifti(fitted["clip"]["model"].bank.maps[0].float().numpy())
    volume = np.asarray(good.dataobj)
    files = {
        "good.nii.gz": good,
        "also_good.nii.gz": good,
        "nan.nii.gz": nib.Nifti1Image(
            np.where(space.mask, np.nan, 0).astype(np.float32), space.affine
        ),
        "two.nii.gz": nib.Nifti1Image(np.stack([volume, volume], axis=-1), space.affine),
    }
    for name, image in files.items():
        image.to_filename(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image\n")
    run = ["query", "--ckpt", str(fitted["clip"]["path"]), "--describe"]
    good_files = [str(tmp_path / "good.nii.gz"), str(tmp_path / "also_good.nii.gz")]
    nan_file, two, notes = (str(tmp_path / n) for n in ("nan.nii.gz", "two.nii.gz", "notes.txt"))
    assert_exits_with([*run, *good_files, nan_file], f"'{nan_file}' has NaN", capsys)
    assert_exits_with([*run, two], f"'{two}' holds 2 volumes", capsys)
    assert_exits_with([*run, notes], f"'{notes}' is not a readable NIfTI image", capsys)
