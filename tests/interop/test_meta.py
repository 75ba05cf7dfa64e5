"""Meta-analyses of retrieved studies (text2brain.interop.meta, `Predictor.meta_analysis`,
`text2brain query --meta-analysis`) on tiny generated corpora, with FDR or a few Monte-Carlo
iterations."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from synthetic import make_corpus, topic_centres, topic_region

from text2brain.brain import BrainSpace
from text2brain.cli import main
from text2brain.interop.meta import meta_analysis, write_meta_analysis
from text2brain.models.contrastive.retrieval import RelatedArticle

pytest.importorskip("nimare")
pytestmark = pytest.mark.usefixtures("one_thread")


class MapPredictor:
    """A head without an embedding space whose map of any query is a fixed vector."""

    def __init__(self, space: BrainSpace, vector: np.ndarray) -> None:
        self.space, self.vector, self.model = space, vector.astype(np.float32), object()

    def predict_vectors(self, texts, batch_size=64):
        return np.stack([self.vector] * len(texts))


class EmbeddingPredictor(MapPredictor):
    """A contrastive head whose bank holds `bank` (article ids), nearest first."""

    def __init__(self, space: BrainSpace, vector: np.ndarray, bank: list[str]) -> None:
        super().__init__(space, vector)
        self.bank = bank
        self.model = self  # has related_articles

    def related_articles(self, text, k=10):
        return [RelatedArticle(i, "", (), float(d)) for d, i in enumerate(self.bank[:k])]


def memory_corpus(space: BrainSpace):
    """Articles about four topics; the memory ones share a focus."""
    return make_corpus(space, 40, seed=1)


def distance_to(space: BrainSpace, topic: str) -> np.ndarray:
    centres = space.affine[:3, :3] @ np.argwhere(space.mask).T + space.affine[:3, 3:4]
    return np.linalg.norm(centres.T - topic_centres(space)[topic], axis=1)


def test_studies_sharing_a_focus_are_significant_there_and_nowhere_far(
    small_space: BrainSpace, tmp_path: Path
) -> None:
    corpus = memory_corpus(small_space)
    predictor = MapPredictor(small_space, topic_region(small_space, "memory").astype(float))
    result = meta_analysis(predictor, "memory", k=10, corpus=corpus)
    assert result.retrieval == "map correlation"
    assert len(result.studies) == 10
    assert all("memory" in s.title and s.score > 0 and s.n_peaks > 0 for s in result.studies)
    z = small_space.from_nifti_image(result.thresholded_map)
    distance = distance_to(small_space, "memory")
    assert z[np.argmin(distance)] > 0
    assert (z[distance > 16] == 0).all() and result.n_significant == (z > 0).sum()
    assert 0 < result.dice <= 1
    assert result.settings["estimator_args"]["kernel_transformer__fwhm"] == 9.0

    paths = write_meta_analysis(result, tmp_path, "000_memory")
    assert [p.name for p in paths] == [
        "000_memory_ale-fdr_z.nii.gz",
        "000_memory_ale-fdr_thresholded.nii.gz",
        "000_memory_ale-fdr.png",
        "000_memory_ale-fdr_studies.tsv",
    ]
    assert np.allclose(nib.load(paths[1]).get_fdata()[small_space.mask], z)
    assert paths[2].read_bytes().startswith(b"\x89PNG")
    with paths[3].open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [r["article_id"] for r in rows] == [s.article_id for s in result.studies]


def test_embedding_heads_use_related_articles(small_space: BrainSpace) -> None:
    corpus = memory_corpus(small_space)
    memory = [a.id for a in corpus.articles if "memory" in a.title]
    vector = np.zeros(small_space.n_voxels)
    predictor = EmbeddingPredictor(small_space, vector, memory)
    result = meta_analysis(predictor, "memory", k=5, estimator="mkda", corpus=corpus)
    assert result.retrieval == "embedding" and [s.article_id for s in result.studies] == memory[:5]
    assert math.isnan(result.dice) or result.n_significant > 0
    with pytest.raises(ValueError, match="k=11 is more than the 10 articles of the model's"):
        meta_analysis(predictor, "memory", k=11, corpus=corpus)
    stranger = EmbeddingPredictor(small_space, vector, ["not-in-corpus"])
    with pytest.raises(ValueError, match="not in corpus 'synthetic'"):
        meta_analysis(stranger, "memory", k=1, corpus=corpus)


def test_bad_input(small_space: BrainSpace) -> None:
    corpus = memory_corpus(small_space)
    predictor = MapPredictor(small_space, topic_region(small_space, "memory").astype(float))
    with pytest.raises(ValueError, match="k=41 is more than the 40 candidate articles"):
        meta_analysis(predictor, "memory", k=41, corpus=corpus)
    flat = MapPredictor(small_space, np.zeros(small_space.n_voxels))
    with pytest.raises(ValueError, match="no study is retrieved"):
        meta_analysis(flat, "memory", k=5, corpus=corpus)
    for bad in ({"k": 0}, {"estimator": "kda"}, {"correction": "bonferroni"}):
        with pytest.raises(ValueError):
            meta_analysis(predictor, "memory", corpus=corpus, **{"k": 5, **bad})
    with pytest.raises(ValueError, match="query"):
        meta_analysis(predictor, "  ", k=5, corpus=corpus)


def test_the_predictor_and_the_command_on_a_tiny_model(
    tiny_predictor, tiny_checkpoint: Path, data_files: dict[str, str], tmp_path: Path, capsys
) -> None:
    from text2brain.corpus.jsonl import load_jsonl_corpus

    corpus = load_jsonl_corpus(data_files["corpus"], tiny_predictor.space)
    result = tiny_predictor.meta_analysis(
        "visual cortex", k=8, estimator="mkda", correction="fwe", n_iters=10, corpus=corpus
    )
    assert len(result.studies) <= 8 and result.settings["n_iters"] == 10

    out = tmp_path / "out"
    argv = ["query", "visual cortex", "--ckpt", str(tiny_checkpoint), "-o", str(out)]
    meta = ["--meta-analysis", "mkda", "-k", "8", "--corpus", data_files["corpus"]]
    main(argv + meta)
    printed = capsys.readouterr().out
    assert "MKDADensity of" in printed and "Dice with the learned map" in printed
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "000_visual_cortex.nii.gz",
        "000_visual_cortex_mkda-fdr.png",
        "000_visual_cortex_mkda-fdr_studies.tsv",
        "000_visual_cortex_mkda-fdr_thresholded.nii.gz",
        "000_visual_cortex_mkda-fdr_z.nii.gz",
        "queries.tsv",
    ]
    main(argv + ["--overwrite"])  # the previous run's meta-analysis files go with its maps
    assert sorted(p.name for p in out.iterdir()) == ["000_visual_cortex.nii.gz", "queries.tsv"]


def test_command_line_checks(tiny_checkpoint: Path, capsys) -> None:
    base = ["query", "x", "--ckpt", str(tiny_checkpoint)]
    for extra, message in (
        (["--meta-analysis", "ale", "--n-iters", "5"], "needs --correction fwe"),
        (["--corpus", "c.jsonl", "-o", "out"], "--corpus is for --meta-analysis"),
        (["--meta-analysis", "ale", "--alpha", "2"], "--alpha must be in (0, 1)"),
    ):
        with pytest.raises(SystemExit):
            main(base + extra)
        assert message in capsys.readouterr().err


def test_a_k_above_the_studies_is_refused_before_any_file(
    tiny_checkpoint: Path, data_files: dict[str, str], tmp_path: Path, capsys
) -> None:
    """-k used to be checked after the query's map was written."""
    from text2brain.corpus.jsonl import load_jsonl_corpus
    from text2brain.inference import load_predictor

    n = len(load_jsonl_corpus(data_files["corpus"], load_predictor(tiny_checkpoint).space))
    out = tmp_path / "out"
    argv = ["query", "x", "--ckpt", str(tiny_checkpoint), "-o", str(out), "-k", str(n + 1)]
    with pytest.raises(SystemExit) as info:
        main([*argv, "--meta-analysis", "mkda", "--corpus", data_files["corpus"]])
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"-k {n + 1} is more than the {n} studies" in err
    assert not out.exists()
