"""Corpus <-> NiMARE Dataset (text2brain.interop.nimare) and NiMARE's meta-analyses."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from synthetic import make_corpus

from text2brain.interop.nimare import from_nimare_dataset, meta_analyze, to_nimare_dataset

pytest.importorskip("nimare")


def sorted_peaks(corpus):
    columns = ["id", "table_id", "x", "y", "z"]
    return corpus.coordinates.sort_values(columns).reset_index(drop=True)


def test_round_trip_keeps_every_article_peak_and_text(small_space) -> None:
    corpus = make_corpus(small_space, 24)
    dataset = to_nimare_dataset(corpus, space=small_space)
    assert len(dataset.ids) == len(corpus.coordinates[["id", "table_id"]].drop_duplicates())
    assert set(dataset.coordinates["space"]) == {"mni152_2mm"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing skipped, so no corpus warning
        back = from_nimare_dataset(dataset, small_space, "back")
    assert back.articles == corpus.articles
    for before, after in zip(corpus.articles, back.articles, strict=True):
        assert after.table_captions == before.table_captions
        assert after.abstract_is_bag_of_terms == before.abstract_is_bag_of_terms
    assert sorted_peaks(back).equals(sorted_peaks(corpus))


def test_export_of_chosen_ids_and_an_unknown_id(small_space) -> None:
    corpus = make_corpus(small_space, 12)
    ids = corpus.ids[3:6]
    dataset = to_nimare_dataset(corpus, ids)
    assert sorted(dataset.coordinates["study_id"].unique()) == sorted(ids)
    with pytest.raises(ValueError, match="not articles of corpus 'synthetic'"):
        to_nimare_dataset(corpus, ["a003", "nope"])


def test_import_counts_what_it_skips_in_one_warning(small_space) -> None:
    import nimare.dataset

    xyz = {"x": [0.0, 4.0], "y": [0.0, 4.0], "z": [0.0, 0.0]}
    source = {
        "kept": {"contrasts": {"1": {"coords": {"space": "MNI", **xyz}, "text": {"title": "A"}}}},
        "no_coords": {"contrasts": {"1": {"text": {"title": "B"}}}},
        "tal": {"contrasts": {"1": {"coords": {"space": "MNI", **xyz}}}},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        dataset = nimare.dataset.Dataset(source, mask=small_space.mask_image())
    dataset.coordinates.loc[dataset.coordinates["study_id"] == "tal", "space"] = "TAL"
    with pytest.warns(UserWarning) as caught:
        corpus = from_nimare_dataset(dataset, small_space)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "2 peaks in a space that is not MNI" in message
    assert "2 studies without MNI coordinates" in message
    assert corpus.ids == ["kept"] and corpus.articles[0].title == "A"


def test_meta_analyze_checks_its_arguments(small_space) -> None:
    dataset = to_nimare_dataset(make_corpus(small_space, 8), space=small_space)
    with pytest.raises(ValueError, match="sample size"):
        meta_analyze(dataset, "ale")
    with pytest.raises(ValueError, match="needs correction='fwe'"):
        meta_analyze(dataset, "mkda", "fdr", n_iters=10)
    with pytest.raises(ValueError, match="estimator must be one of"):
        meta_analyze(dataset, "kda")
    with pytest.raises(ValueError, match="alpha"):
        meta_analyze(dataset, "mkda", alpha=1.5)
    with pytest.raises(ValueError, match="n_cores"):
        meta_analyze(dataset, "mkda", n_cores=0)


def test_fwe_records_its_iterations(small_space) -> None:
    corpus = make_corpus(small_space, 40)
    dataset = to_nimare_dataset(corpus, corpus.ids[::4], space=small_space)
    maps = meta_analyze(dataset, "mkda", "fwe", n_iters=20)
    assert maps.settings["n_iters"] == 20 and maps.map_name.startswith("z_level-voxel_corr-FWE")
    z = small_space.from_nifti_image(maps.z)
    assert np.isfinite(z).all()
