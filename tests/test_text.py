"""The sentence splitter (text2brain.text)."""

from __future__ import annotations

from text2brain.text import split_sentences

# -- sentence splitter ---------------------------------------------------------------------------


def test_split_sentences_rules() -> None:
    text = (
        "Activation was found in the amygdala (e.g. Fig. 2). Smith et al. (2005) reported\n"
        "this  too.   Did it replicate? Yes! 3 studies agree, i.e. Jones and Lee. "
        "Effects were approx. three times larger vs. Controls. p was 0.05. Done"
    )
    assert split_sentences(text) == [
        "Activation was found in the amygdala (e.g. Fig. 2).",
        "Smith et al. (2005) reported this too.",
        "Did it replicate?",
        "Yes!",
        "3 studies agree, i.e. Jones and Lee.",
        # a lower-case start never opens a sentence (documented limitation)
        "Effects were approx. three times larger vs. Controls. p was 0.05.",
        "Done",
    ]


def test_split_sentences_edge_cases() -> None:
    assert split_sentences("") == []
    assert split_sentences("   \n ") == []
    assert split_sentences("no end punctuation") == ["no end punctuation"]
    assert split_sentences("A value of 3.5 mm. next is lower case.") == [
        "A value of 3.5 mm. next is lower case."
    ]
    assert split_sentences('He said "stop." Then left. (See Table 1.) After') == [
        'He said "stop."',
        "Then left.",
        "(See Table 1.)",
        "After",
    ]
    assert split_sentences("Data from the U.S. National Institutes. More") == [
        "Data from the U.S. National Institutes.",
        "More",
    ]
