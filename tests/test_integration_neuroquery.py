"""The real NeuroQuery corpus from the shared folder: counts, text, grid, and rendering.

Skipped when the corpus cannot be found (see the `neuroquery_dir` fixture in conftest.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from text2brain.bench.render import scipy_reference_maps
from text2brain.brain import BrainSpace, render_article_maps
from text2brain.corpus import Corpus, load_neuroquery
from text2brain.metrics import pairwise_pearson
from text2brain.neuroquery_files import FILES, fetch_neuroquery_file

pytestmark = pytest.mark.integration

N_RECORDS = 13_459
N_ARTICLES = 13_453  # 6 articles have no peak inside the brain mask


@pytest.fixture(scope="module")
def loaded(neuroquery_dir: Path) -> tuple[Corpus, list[str]]:
    """The corpus and the warnings loading it emitted."""
    with pytest.warns(UserWarning) as record:
        corpus = load_neuroquery(neuroquery_dir)
    return corpus, [str(w.message) for w in record]


@pytest.fixture(scope="module")
def space(neuroquery_dir: Path) -> BrainSpace:
    return BrainSpace.neuroquery(neuroquery_dir)


def test_space(space: BrainSpace) -> None:
    assert space.shape == (46, 55, 46)
    assert space.n_voxels == 28_542
    expected = np.diag([4.0, 4.0, 4.0, 1.0])
    expected[:3, 3] = [-90.0, -126.0, -72.0]
    np.testing.assert_array_equal(space.affine, expected)


def test_every_pinned_file_verifies(neuroquery_dir: Path) -> None:
    for name in FILES:
        assert fetch_neuroquery_file(name, neuroquery_dir) == neuroquery_dir / name


def test_corpus_counts_and_skip_warning(loaded: tuple[Corpus, list[str]]) -> None:
    corpus, messages = loaded
    assert len(messages) == 1, messages
    message = messages[0]
    assert message.startswith("corpus 'neuroquery': skipped ")
    assert "70 duplicate peaks within a table" in message
    assert "334 peaks outside the brain grid" in message
    assert "6 articles without any peak inside the brain mask" in message
    assert corpus.skipped.counts == {
        "duplicate peaks within a table": 70,
        "peaks outside the brain grid": 334,
        "articles without any peak inside the brain mask": 6,
    }
    assert len(corpus) == N_ARTICLES == N_RECORDS - 6
    assert len(set(corpus.ids)) == N_ARTICLES
    coords = corpus.coordinates
    assert list(coords.columns) == ["id", "table_id", "x", "y", "z"]
    assert set(coords["id"]) == set(corpus.ids)
    assert np.isfinite(coords[["x", "y", "z"]].to_numpy()).all()
    assert not coords.duplicated().any()


def test_corpus_text(loaded: tuple[Corpus, list[str]]) -> None:
    corpus, _ = loaded
    assert all(re.fullmatch(r"\d+", a.id) for a in corpus.articles)  # PubMed ids
    assert all(a.title.strip() for a in corpus.articles)
    with_keywords = sum(bool(a.keywords) for a in corpus.articles)
    assert 10_500 <= with_keywords <= 10_900  # about 10.7k articles have author keywords
    assert all(a.abstract_is_bag_of_terms for a in corpus.articles)
    assert sum(bool(a.abstract) for a in corpus.articles) > 0.9 * N_ARTICLES
    assert all(a.table_captions == {} and a.discussion == () for a in corpus.articles)


def test_snapped_render_matches_the_scipy_reference(
    loaded: tuple[Corpus, list[str]], space: BrainSpace
) -> None:
    corpus, _ = loaded
    chosen = np.random.default_rng(0).choice(corpus.ids, 200, replace=False).tolist()
    subset = corpus.subset(chosen)
    ids, maps = render_article_maps(subset.coordinates, space, fwhm=9.0, snap_to_voxel=True)
    assert sorted(ids) == sorted(chosen)
    assert maps.dtype == np.float32 and maps.shape == (200, space.n_voxels)
    reference = np.empty(maps.shape)
    for row, ref in scipy_reference_maps(subset.coordinates, space, 9.0, ids):
        reference[row] = ref
    r = pairwise_pearson(maps, reference)
    assert r.min() >= 0.99, (r.min(), ids[int(np.argmin(r))])
    assert np.median(r) > 0.9999
