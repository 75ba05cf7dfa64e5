"""Vocabulary terms (`text2brain.models.components.terms`) against brute force on tiny inputs:
phrase matching, normalisation, vocabulary files and errors, and tf-idf rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from text2brain.models.components.terms import (
    PhraseMatcher,
    TermCounter,
    Vocabulary,
    inverse_document_frequency,
    load_vocabulary,
    tfidf,
    words_of,
)

pytestmark = pytest.mark.usefixtures("one_thread")


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
