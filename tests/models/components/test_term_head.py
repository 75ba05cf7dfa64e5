"""`TermHead`, the side the term-based heads (NeuroQuery-style, Neurosynth-style) share, on the
synthetic corpus, where every topic word occurs only in studies whose peaks lie in that topic's
region: the word must light that region; texts without a known term; their count at test time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from synthetic import TOPICS, quiet_trainer, tiny_datamodule, topic_region

from text2brain.brain import BrainSpace
from text2brain.models import MODELS, model_class
from text2brain.models.components.term_head import TermHead

#: The registered heads that read text as vocabulary terms.
TERM_HEADS = tuple(sorted(name for name in MODELS if issubclass(model_class(name), TermHead)))

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", TERM_HEADS)
def test_a_topic_word_lights_its_region(
    name: str, closed_form_heads: dict[str, Any], space: BrainSpace
) -> None:
    maps = closed_form_heads[name].predict_texts(list(TOPICS)).numpy()
    for topic, prediction in zip(TOPICS, maps, strict=True):
        top = np.argsort(-prediction)[:20]  # the top 2% voxels (an 8 mm ball holds 33)
        inside = {t: topic_region(space, t)[top].mean() for t in TOPICS}
        assert inside[topic] >= 0.9, (topic, inside)
        assert sum(inside.values()) == inside[topic], (topic, inside)


@pytest.mark.parametrize("name", TERM_HEADS)
def test_queries_without_known_terms(
    name: str, closed_form_heads: dict[str, Any], fit_closed_form: Callable[..., Any]
) -> None:
    model = closed_form_heads[name]
    texts = ["vision", "quantum chromodynamics", "working memory"]
    # "working memory" is a vocabulary phrase but no training document has it.
    assert model.has_known_terms(texts) == [True, False, False]
    assert model.terms_in("visual audition, and working memory") == ["vision", "audition"]
    with pytest.warns(UserWarning, match="2 of 3 texts have no term.*all-zero"):
        maps = model.predict_texts(texts)
    assert maps[0].abs().sum() > 0 and not maps[1:].any()

    mean = fit_closed_form(name, unknown_query="mean")
    with pytest.warns(UserWarning, match="1 of 2 texts.*training mean"):
        maps = mean.predict_texts(["vision", "quantum chromodynamics"])
    assert torch.equal(maps[1], mean.mean_map)
    assert not torch.equal(maps[0], mean.mean_map)
    with pytest.raises(ValueError, match="unknown_query must be one of"):
        model_class(name)(unknown_query="nan")


@pytest.mark.parametrize("name", TERM_HEADS)
def test_evaluation_counts_unknown_queries(name: str, data_files: dict[str, str]) -> None:
    # Only "vision" known: the other three topics' titles have no fitted term.
    model = model_class(name)(vocabulary=["vision"], synonyms=None)
    datamodule = tiny_datamodule(data_files)
    (results,) = quiet_trainer(max_epochs=1).test(model, datamodule=datamodule, verbose=False)
    datamodule.setup()
    titles = [datamodule.corpus.articles[i].title for i in datamodule.indices_of("test")]
    expected = sum("vision" not in t for t in titles)
    assert 0 < expected < len(titles)
    assert results["test/unknown_queries"] == expected
    assert 0 <= results["test/dice_auc"] <= 0.25
