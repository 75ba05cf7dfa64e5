"""The closed-form baselines (corpus mean, NeuroQuery-style, Neurosynth-style).

Their maths against brute force or scipy on tiny problems (phrase matching, chi-square, FDR,
spheres; the ridge is tested in tests/models/test_ridge.py), and each head on the synthetic
corpus, where every topic word occurs only in studies whose peaks lie in that topic's region:
the word must light that region. Also the no-known-term path, bad input, the checkpoint ->
`load_predictor` -> NIfTI path and the shipped configs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import nibabel as nib
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.stats
import torch
import yaml
from model_configs import TINY_SYNONYMS, TINY_TERMS, tiny_init_args
from synthetic import (
    TOPICS,
    quiet_trainer,
    small_space,
    topic_centres,
    write_corpus_files,
)

from text2brain.brain import BrainSpace
from text2brain.cli import main
from text2brain.data import TextMapDataModule
from text2brain.inference import load_predictor
from text2brain.models import model_class
from text2brain.models.closed_form import ClosedFormModule
from text2brain.models.components.terms import (
    PhraseMatcher,
    TermCounter,
    Vocabulary,
    inverse_document_frequency,
    load_vocabulary,
    tfidf,
    words_of,
)
from text2brain.models.neuroquery.smoothing import nmf_term_embeddings, smooth_queries
from text2brain.models.neurosynth.association import (
    chi_square_z,
    count_active,
    fdr_threshold,
    sphere_activation,
)

REPO = Path(__file__).resolve().parents[2]
BASELINES = ("corpus_mean", "neuroquery", "neurosynth")
TERM_HEADS = ("neuroquery", "neurosynth")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    """Tiny problems run fastest on one thread (and far faster on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- phrase matching ---------------------------------------------------------------------------
def test_longest_phrase_wins_and_words_are_consumed_left_to_right() -> None:
    matcher = PhraseMatcher(["working memory", "memory", "working", "working memory task"])
    _, found = matcher.find(["Working-memory task and memory; working"])
    assert found.tolist() == [3, 1, 2]
    # Greedy from the left, not the best cover: "left motor" consumes "motor".
    matcher = PhraseMatcher(["left motor", "motor cortex", "cortex"])
    _, found = matcher.find(["left motor cortex"])
    assert found.tolist() == [0, 2]


def test_matching_normalises_words_and_drops_function_words() -> None:
    counter = TermCounter(
        Vocabulary.build(
            ["theory mind", "2 back", "reaction time", "reaction times", "barré"],
            {"reaction times": "reaction time"},
        )
    )
    assert counter.terms_in("Theory of Mind, 2-BACK vs 0-back; reaction times") == [
        "theory mind",
        "2 back",
        "reaction time",
    ]
    assert counter.terms_in("Barré") == ["barré"]
    assert words_of("Self-generated thought (DMN)") == ["self", "generated", "thought", "dmn"]


def test_unknown_words_and_segments_break_phrases() -> None:
    counter = TermCounter(Vocabulary.build(["working memory", "working", "memory"], {}))
    assert counter.terms_in("working spatial memory") == ["working", "memory"]
    counts = counter.count_documents([["working", "memory"], ["working memory", "memory"]])
    assert counts.toarray().tolist() == [[0, 1, 1], [1, 0, 1]]


def _greedy_reference(words: list[str], phrases: list[tuple[str, ...]]) -> list[int]:
    """Plain left-to-right longest-match scan, one position at a time (for comparison)."""
    index = {p: i for i, p in reversed(list(enumerate(phrases)))}
    longest = max(len(p) for p in phrases)
    found, i = [], 0
    while i < len(words):
        for length in range(min(longest, len(words) - i), 0, -1):
            if tuple(words[i : i + length]) in index:
                found.append(index[tuple(words[i : i + length])])
                i += length
                break
        else:
            i += 1
    return found


def test_vectorised_matcher_agrees_with_a_sequential_scan() -> None:
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "omega"]  # "omega" is in no phrase
    phrases = sorted(
        {tuple(rng.choice(words[:4], size=int(rng.integers(1, 4)))) for _ in range(12)}
    )
    matcher = PhraseMatcher([" ".join(p) for p in phrases])
    texts = [list(rng.choice(words, size=int(rng.integers(0, 30)))) for _ in range(300)]
    segment, found = matcher.find([" ".join(t) for t in texts])
    for i, text in enumerate(texts):
        assert found[segment == i].tolist() == _greedy_reference(text, phrases), text


def test_vocabulary_errors_name_the_bad_entries(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not vocabulary terms"):
        Vocabulary.build(["memory"], {"memories": "recall"})
    with pytest.raises(ValueError, match="repeated.*memory"):
        Vocabulary.build(["memory", "memory"], {})
    with pytest.raises(ValueError, match="without any word"):
        Vocabulary.build(["memory", "--"], {})
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        load_vocabulary(str(tmp_path / "missing.csv"), None)
    bad = tmp_path / "synonyms.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        load_vocabulary(["memory"], str(bad))


def test_vocabulary_from_files(tmp_path: Path) -> None:
    (tmp_path / "vocabulary.csv").write_text("memory,0.3\nmemories,0.01\nrecall,0.1\n")
    (tmp_path / "synonyms.json").write_text('{"memories": "memory"}')
    vocabulary = load_vocabulary(str(tmp_path / "vocabulary.csv"), str(tmp_path / "synonyms.json"))
    assert vocabulary.terms == ("memory", "recall")
    assert dict(vocabulary.synonyms) == {"memories": "memory"}


def test_neuroquery_vocabulary_files(neuroquery_dir: Path) -> None:
    vocabulary = load_vocabulary("neuroquery", "neuroquery", neuroquery_dir)
    assert len(vocabulary.terms) == 6308 and len(vocabulary.synonyms) == 1239
    counter = TermCounter(vocabulary)
    assert counter.terms_in("Theory of mind and reaction times") == [
        "theory mind",
        "reaction time",
    ]


def test_tfidf_rows() -> None:
    counts = sp.csr_matrix(np.array([[2, 0, 1], [0, 0, 0], [1, 1, 0]], dtype=float))
    idf = inverse_document_frequency(np.array([2, 1, 1]), 3)
    assert idf == pytest.approx(1 - np.log([2 / 3, 1 / 3, 1 / 3]))
    rows = tfidf(counts, idf).toarray()
    assert np.linalg.norm(rows, axis=1) == pytest.approx([1, 0, 1])
    expected = np.array([2 * idf[0], 0, idf[2]])
    assert rows[0] == pytest.approx(expected / np.linalg.norm(expected))


# -- smoothing -----------------------------------------------------------------------------------
def test_nmf_embeddings_and_smoothing() -> None:
    # Terms 0 and 1 always co-occur, term 2 never with them, term 3 in no document.
    x = sp.csr_matrix(np.array([[1, 1, 0, 0], [2, 2, 0, 0], [0, 0, 1, 0], [0, 0, 3, 0.0]]))
    embeddings = nmf_term_embeddings(x, n_components=2, iterations=200)
    assert (embeddings >= 0).all()
    assert np.linalg.norm(embeddings, axis=1) == pytest.approx([1, 1, 1, 0], abs=1e-6)
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1] > 0.99 and similarity[0, 2] < 0.05

    query = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    smoothed = smooth_queries(query, torch.from_numpy(embeddings), 0.1)
    assert smoothed.norm() == pytest.approx(1.0)
    assert smoothed[0, 1] > 0.04 and smoothed[0, 2] < 1e-3 and smoothed[0, 3] == 0
    assert torch.equal(smooth_queries(query, torch.from_numpy(embeddings), 0.0), query)


# -- association test ----------------------------------------------------------------------------
def test_chi_square_z_matches_scipy() -> None:
    tables = [(12, 8, 5, 75), (3, 17, 30, 50), (10, 10, 40, 40), (0, 20, 20, 60)]  # a+b = 20
    a = torch.tensor([t[0] for t in tables])
    n_about = 20
    active = torch.tensor([t[0] + t[2] for t in tables])
    z = chi_square_z(a, n_about, active, 100)
    for value, (ta, tb, tc, td) in zip(z.tolist(), tables, strict=True):
        chi2 = scipy.stats.chi2_contingency([[ta, tb], [tc, td]], correction=False).statistic
        assert abs(value) == pytest.approx(math.sqrt(chi2))
        assert np.sign(value) == np.sign(ta * td - tb * tc)
    # Empty margins (no active study at a voxel, or every study about the query): z = 0.
    assert chi_square_z(torch.tensor([0]), 20, torch.tensor([0]), 100).item() == 0
    assert chi_square_z(torch.tensor([7]), 100, torch.tensor([7]), 100).item() == 0


def test_fdr_threshold_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    z = torch.from_numpy(np.concatenate([rng.normal(0, 1, 900), rng.normal(4, 1, 100)]))
    kept = fdr_threshold(z, 0.01)
    p = 2 * scipy.stats.norm.sf(np.abs(z.numpy()))
    significant = scipy.stats.false_discovery_control(p) <= 0.01
    assert np.array_equal(kept.numpy() != 0, significant)
    assert torch.equal(kept[significant], z[significant])
    assert not fdr_threshold(torch.zeros(10, dtype=torch.float64), 0.01).any()
    with pytest.raises(ValueError, match="q must be in"):
        fdr_threshold(z, 1.5)


def test_spheres_hold_the_voxels_within_the_radius() -> None:
    space = small_space()
    xyz = np.array([[0.0, 0.0, 0.0], [5.3, -7.1, 2.2], [-20.0, 0.0, 0.0]])
    active = sphere_activation(space, np.array([0, 1, 1]), xyz, 2, radius_mm=6.0)
    centres = space.affine[:3, :3] @ np.argwhere(space.mask).T + space.affine[:3, 3:4]
    distance = np.linalg.norm(centres.T[None] - xyz[:, None], axis=-1)
    within = distance <= 6.0
    assert np.array_equal(active[0], within[0])
    assert np.array_equal(active[1], within[1] | within[2])
    assert (
        active[0].sum() == 19
    )  # a voxel centre, its 6 face (4 mm) and 12 edge (5.7 mm) neighbours


def test_count_active_on_sparse_rows() -> None:
    rng = np.random.default_rng(0)
    active = rng.random((50, 37)) < 0.3
    active[4] = False  # a study without any active voxel
    csr = sp.csr_matrix(active)
    pointer, voxels = torch.from_numpy(csr.indptr), torch.from_numpy(csr.indices)
    rows = torch.tensor([1, 4, 9, 33, 49])
    counts = count_active(pointer, voxels, rows, 37)
    assert counts.tolist() == active[rows.numpy()].sum(0).tolist()
    assert count_active(pointer, voxels, rows[:0], 37).tolist() == [0] * 37


# -- the heads on the synthetic corpus ---------------------------------------------------------
@pytest.fixture(scope="module")
def space() -> BrainSpace:
    return small_space()


@pytest.fixture(scope="module")
def data_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_corpus_files(tmp_path_factory.mktemp("baseline-data"))


def make_datamodule(files: dict[str, str]) -> TextMapDataModule:
    return TextMapDataModule(
        n_test=8, n_val=8, keyword_max_df=0.05, tokenizer=None, num_workers=0, **files
    )


def trainer(root: Path, **kwargs: Any) -> L.Trainer:
    return quiet_trainer(**{"max_epochs": 1, **kwargs})


def fitted(name: str, files: dict[str, str], root: Path, **overrides: Any) -> ClosedFormModule:
    model = model_class(name)(**{**tiny_init_args(name, ""), **overrides})
    trainer(root, limit_val_batches=0).fit(model, datamodule=make_datamodule(files))
    assert model.is_fitted
    return model.eval()


@pytest.fixture(scope="module")
def heads(data_files: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("baseline-runs")
    return {name: fitted(name, data_files, root) for name in BASELINES}


def _region_voxels(space: BrainSpace, topic: str, radius_mm: float = 8.0) -> np.ndarray:
    centres = space.affine[:3, :3] @ np.argwhere(space.mask).T + space.affine[:3, 3:4]
    return np.linalg.norm(centres.T - topic_centres(space)[topic], axis=1) <= radius_mm


@pytest.mark.parametrize("name", TERM_HEADS)
def test_a_topic_word_lights_its_region(name: str, heads: dict, space: BrainSpace) -> None:
    maps = heads[name].predict_texts(list(TOPICS)).numpy()
    for topic, prediction in zip(TOPICS, maps, strict=True):
        top = np.argsort(-prediction)[:20]  # the top 2% voxels (an 8 mm ball holds 33)
        inside = {t: _region_voxels(space, t)[top].mean() for t in TOPICS}
        assert inside[topic] >= 0.9, (topic, inside)
        assert sum(inside.values()) == inside[topic], (topic, inside)


def test_corpus_mean_predicts_the_training_mean_for_any_text(
    heads: dict, data_files: dict[str, str]
) -> None:
    datamodule = make_datamodule(data_files)
    _, maps = datamodule.article_maps("train")
    maps = heads["corpus_mean"].predict_texts(["vision", "anything at all"])
    expected = torch.from_numpy(np.asarray(datamodule.article_maps("train")[1]).mean(0))
    assert torch.allclose(maps, expected.expand(2, -1).float(), atol=1e-6)


@pytest.mark.parametrize("name", TERM_HEADS)
def test_queries_without_known_terms(name: str, heads: dict, data_files, tmp_path) -> None:
    model = heads[name]
    texts = ["vision", "quantum chromodynamics", "working memory"]
    # "working memory" is a vocabulary phrase but no training document has it.
    assert model.has_known_terms(texts) == [True, False, False]
    assert model.terms_in("visual audition, and working memory") == ["vision", "audition"]
    with pytest.warns(UserWarning, match="2 of 3 texts have no term.*all-zero"):
        maps = model.predict_texts(texts)
    assert maps[0].abs().sum() > 0 and not maps[1:].any()

    mean = fitted(name, data_files, tmp_path, unknown_query="mean")
    with pytest.warns(UserWarning, match="1 of 2 texts.*training mean"):
        maps = mean.predict_texts(["vision", "quantum chromodynamics"])
    assert torch.equal(maps[1], mean.mean_map)
    assert not torch.equal(maps[0], mean.mean_map)
    with pytest.raises(ValueError, match="unknown_query must be one of"):
        model_class(name)(unknown_query="nan")


@pytest.mark.parametrize("name", TERM_HEADS)
def test_evaluation_counts_unknown_queries(name: str, data_files, tmp_path) -> None:
    # Only "vision" known: the other three topics' titles have no fitted term.
    model = model_class(name)(vocabulary=["vision"], synonyms=None)
    datamodule = make_datamodule(data_files)
    (results,) = trainer(tmp_path).test(model, datamodule=datamodule, verbose=False)
    datamodule.setup()
    titles = [datamodule.corpus.articles[i].title for i in datamodule.indices_of("test")]
    expected = sum("vision" not in t for t in titles)
    assert 0 < expected < len(titles)
    assert results["test/unknown_queries"] == expected
    assert 0 <= results["test/dice_auc"] <= 0.25


@pytest.mark.parametrize("name", BASELINES)
def test_bad_queries_get_the_predictor_errors(name: str, heads: dict) -> None:
    model = heads[name]
    with pytest.raises(ValueError, match=r"texts\[1\] is empty or whitespace-only"):
        model.predict_texts(["vision", "  "])
    with pytest.raises(TypeError, match="single str"):
        model.predict_texts("vision")


@pytest.mark.parametrize("name", BASELINES)
def test_checkpoint_to_predictor_to_nifti(
    name: str, data_files: dict[str, str], space: BrainSpace, tmp_path: Path
) -> None:
    model = model_class(name)(**tiny_init_args(name, ""))
    fit = trainer(tmp_path, limit_val_batches=0)
    fit.fit(model, datamodule=make_datamodule(data_files))
    path = tmp_path / f"{name}.ckpt"
    fit.save_checkpoint(path)

    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if name in TERM_HEADS:
        vocabulary = checkpoint["text2brain"]["vocabulary"]
        assert vocabulary["terms"][:4] == TINY_TERMS[:4]
        assert vocabulary["synonyms"] == TINY_SYNONYMS
    if name == "neuroquery":
        assert checkpoint["state_dict"]["coef"].dtype == torch.float16

    predictor = load_predictor(path, device="cpu")
    texts = ["vision", "motor cortex"]
    images = predictor.predict_maps(texts)
    assert all(isinstance(image, nib.Nifti1Image) for image in images)
    assert images[0].shape == space.shape and np.allclose(images[0].affine, space.affine)
    model.eval()
    expected = model.predict_texts(texts).numpy()
    assert np.allclose(space.to_vector(np.asarray(images[1].dataobj)), expected[1], atol=1e-6)
    assert np.allclose(predictor.predict_vectors(texts), expected, atol=1e-6)
    with pytest.raises(ValueError, match=r"texts\[0\] is empty"):
        predictor.predict_maps([""])


def test_neurosynth_options(data_files: dict[str, str], tmp_path: Path) -> None:
    spheres = fitted("neurosynth", data_files, tmp_path, fdr_q=None)
    gaussian = fitted("neurosynth", data_files, tmp_path, fdr_q=None, activation="map")
    thresholded = fitted("neurosynth", data_files, tmp_path, fdr_q=1e-6)
    z_spheres, z_maps = spheres.predict_texts(["vision"]), gaussian.predict_texts(["vision"])
    assert not torch.equal(z_spheres, z_maps)
    assert (z_spheres != 0).sum() > (thresholded.predict_texts(["vision"]) != 0).sum()
    # A two-word query uses the union of the studies about either word.
    union = spheres.predict_texts(["vision audition"])[0].numpy()
    assert (union[_region_voxels(spheres.space, "vision")] > 0).all()
    assert (union[_region_voxels(spheres.space, "audition")] > 0).all()
    with pytest.raises(ValueError, match="activation must be one of"):
        model_class("neurosynth")(activation="cubes")


def test_validate_without_fit_fits_first(data_files: dict[str, str], tmp_path: Path) -> None:
    model = model_class("corpus_mean")()
    assert not model.is_fitted
    (results,) = trainer(tmp_path).validate(model, datamodule=make_datamodule(data_files))
    assert model.is_fitted and model.mean_map.abs().sum() > 0
    assert 0 < results["val/dice_auc"] <= 0.25


# -- configs and the command line ----------------------------------------------------------------
@pytest.mark.parametrize("name", BASELINES)
def test_shipped_configs_parse(
    name: str, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["fit", "-c", str(REPO / "configs" / f"{name}.yaml"), "--print_config"])
    assert exc.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (
        printed["model"]["class_path"]
        == f"{model_class(name).__module__.rsplit('.', 1)[0]}.{model_class(name).__name__}"
    )
    assert printed["data"]["corpus"] == "neuroquery"
    assert printed["trainer"]["precision"] == "32-true"
    callbacks = printed["trainer"]["callbacks"]
    dirpaths = [c["init_args"].get("dirpath") for c in callbacks]
    assert f"checkpoints/{name}" in dirpaths
    # No learning-rate monitor: it refuses to run without an optimizer.
    assert not any(c["class_path"].endswith("LearningRateMonitor") for c in callbacks)


def test_fit_and_test_with_the_shipped_config(
    data_files: dict[str, str], tmp_path: Path, monkeypatch, cli_overrides
) -> None:
    # The NeuroQuery-style head: the other two share every part of this path but the maths.
    name = "neuroquery"
    monkeypatch.chdir(tmp_path)
    config = ["-c", str(REPO / "configs" / f"{name}.yaml"), "-c", str(cli_overrides(name))]
    main(["fit", *config])
    best = tmp_path / "checkpoints" / name / "best.ckpt"
    assert best.is_file()
    logs = sorted((tmp_path / "runs").rglob("metrics.csv"))
    assert logs and "val/dice_auc" in logs[-1].read_text().splitlines()[0]
    assert list((tmp_path / "runs").rglob("dice_curve.png"))  # the shipped map figures

    main(["test", *config, "--ckpt_path", str(best)])
    header = sorted((tmp_path / "runs").rglob("metrics.csv"))[-1].read_text().splitlines()[0]
    assert "test/dice_auc" in header
    assert "test/unknown_queries" in header
    assert load_predictor(best, device="cpu").predict_vectors(["vision"]).shape == (
        1,
        small_space().n_voxels,
    )


@pytest.fixture
def cli_overrides(data_files: dict[str, str], tmp_path: Path):
    """A second config for the shipped one: tiny data and model, CSV logs, no downloads."""

    def write(name: str) -> Path:
        overrides = {
            "trainer": {
                "accelerator": "cpu",
                "devices": 1,
                "enable_progress_bar": False,
                "logger": {
                    "class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": "runs"},
                },
            },
            "model": {"init_args": tiny_init_args(name, "")},
            "data": {
                **data_files,
                "n_test": 8,
                "n_val": 8,
                "keyword_max_df": 0.05,
                "num_workers": 0,
            },
        }
        path = tmp_path / f"{name}-tiny.yaml"
        path.write_text(yaml.safe_dump(overrides, sort_keys=False))
        return path

    return write
