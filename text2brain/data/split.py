"""The fixed train / validation / test split, keyword-disjoint as in Text2Brain (paper 3.1).

Rule (the paper asks that test articles' author keywords occur in no training or validation
article; generic keywords such as "fmri" make that literal reading impossible):

1. A keyword is *generic* when more than `keyword_max_df` (a fraction) of the articles that
   have keywords list it; generic keywords are ignored. The others are *specific*.
2. Candidates for the test set are articles with a title and at least one specific keyword
   (articles without keywords cannot be checked, so they never enter the test set).
3. Candidates are visited in a seeded random order. A candidate joins the test set when at most
   `max_exclusions_per_test_article` not-yet-assigned articles share one of its specific
   keywords; those articles are then *excluded*: they are kept out of training and
   validation (and out of the test set), so no test keyword is ever seen in training.
4. Validation: `n_val` articles with a title, at random among the rest; training: the rest.

The split is written to a JSON file with the rule's parameters and statistics, and every model
reads the same file; a file that does not match the corpus is an error, never silently fixed.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from text2brain.corpus.base import Corpus
from text2brain.outputs import write_text

SPLIT_FORMAT = 1


@dataclass(frozen=True)
class SplitRule:
    """Parameters of the keyword-disjoint split (see module docstring)."""

    n_test: int = 1000
    n_val: int = 1000
    seed: int = 0
    keyword_max_df: float = 0.002
    max_exclusions_per_test_article: int = 3


@dataclass
class Split:
    corpus: str
    rule: SplitRule
    train: list[str]
    val: list[str]
    test: list[str]
    excluded: list[str]
    stats: dict[str, float] = field(default_factory=dict)

    def ids(self, stage: str) -> list[str]:
        if stage not in ("train", "val", "test"):
            raise ValueError(f"unknown split {stage!r}; expected train, val or test")
        return getattr(self, stage)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": SPLIT_FORMAT,
            "corpus": self.corpus,
            "rule": asdict(self.rule),
            "stats": self.stats,
            "train": self.train,
            "val": self.val,
            "test": self.test,
            "excluded": self.excluded,
        }
        return write_text(path, json.dumps(payload, indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Split:
        path = Path(path)
        try:
            payload = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read split file {path}: {err}") from err
        if payload.get("format") != SPLIT_FORMAT:
            raise ValueError(
                f"split file {path} has format {payload.get('format')!r}, expected "
                f"{SPLIT_FORMAT}; delete it to rebuild the split"
            )
        return cls(
            corpus=payload["corpus"],
            rule=SplitRule(**payload["rule"]),
            train=payload["train"],
            val=payload["val"],
            test=payload["test"],
            excluded=payload["excluded"],
            stats=payload.get("stats", {}),
        )

    def check_matches(self, corpus: Corpus, path: str | os.PathLike = "<split>") -> None:
        """Every corpus article is in exactly one part of the split, and nothing else is."""
        in_split = [*self.train, *self.val, *self.test, *self.excluded]
        corpus_ids = set(corpus.ids)
        unknown = set(in_split) - corpus_ids
        unassigned = corpus_ids - set(in_split)
        if unknown or unassigned or len(in_split) != len(set(in_split)):
            raise ValueError(
                f"split file {path} does not match corpus {corpus.name!r}: "
                f"{len(unknown)} ids not in the corpus, {len(unassigned)} corpus articles not in "
                f"the split, {len(in_split) - len(set(in_split))} ids listed twice. It was made "
                "for another corpus or corpus version: pass another split file, or delete it to "
                "build a new split (scores are then not comparable with the old one)."
            )


def shipped_neuroquery_split() -> Path:
    """The split shipped with text2brain for NeuroQuery and the default rule (the released
    model's split)."""
    return Path(str(resources.files("text2brain") / "splits" / "neuroquery-v1.json"))


def normalise_keyword(keyword: str) -> str:
    return " ".join(keyword.lower().split())


def make_split(corpus: Corpus, rule: SplitRule = SplitRule()) -> Split:
    """Build the keyword-disjoint split of `corpus` (deterministic for a given rule)."""
    if rule.n_test < 0 or rule.n_val < 0:
        raise ValueError("n_test and n_val must be >= 0")
    if not 0 < rule.keyword_max_df <= 1:
        raise ValueError(f"keyword_max_df must be in (0, 1], got {rule.keyword_max_df}")
    ids = corpus.ids
    specific, df, max_df, n_with_keywords = _keyword_statistics(corpus, rule.keyword_max_df)
    articles_with: dict[str, list[int]] = defaultdict(list)
    for i, kws in enumerate(specific):
        for k in kws:
            articles_with[k].append(i)

    state = np.zeros(len(ids), dtype=np.int8)  # 0 free, 1 test, 2 excluded
    rng = np.random.default_rng(rule.seed)
    n_test = 0
    for i in rng.permutation(len(ids)):
        if n_test == rule.n_test:
            break
        if state[i] or not specific[i] or not corpus.articles[i].title.strip():
            continue
        sharing = {j for k in specific[i] for j in articles_with[k] if j != i}
        new = [j for j in sharing if state[j] == 0]
        if len(new) > rule.max_exclusions_per_test_article:
            continue
        state[i] = 1
        state[new] = 2
        n_test += 1
    if n_test < rule.n_test:
        raise ValueError(
            f"corpus {corpus.name!r}: only {n_test} of the {rule.n_test} requested test articles "
            "satisfy the keyword-disjoint rule; lower n_test, or raise keyword_max_df or "
            "max_exclusions_per_test_article"
        )

    free = np.flatnonzero(state == 0)
    titled = free[[bool(corpus.articles[i].title.strip()) for i in free]]
    if len(titled) < rule.n_val:
        raise ValueError(
            f"corpus {corpus.name!r}: only {len(titled)} articles with a title are left for "
            f"validation, {rule.n_val} requested"
        )
    val = np.sort(rng.choice(titled, rule.n_val, replace=False))
    state[val] = 3

    def pick(code: int) -> list[str]:
        return [ids[i] for i in np.flatnonzero(state == code)]

    split = Split(
        corpus=corpus.name,
        rule=rule,
        train=pick(0),
        val=pick(3),
        test=pick(1),
        excluded=pick(2),
    )
    split.stats = {
        "articles": len(ids),
        "articles_with_keywords": n_with_keywords,
        "generic_keyword_min_df": max_df + 1,
        "generic_keywords": sum(1 for n in df.values() if n > max_df),
        "specific_keywords": sum(1 for n in df.values() if n <= max_df),
        "train": len(split.train),
        "val": len(split.val),
        "test": len(split.test),
        "excluded_from_training": len(split.excluded),
    }
    return split


def _keyword_statistics(
    corpus: Corpus, keyword_max_df: float
) -> tuple[list[set[str]], dict[str, int], int, int]:
    """Per article its specific keywords; keyword document frequencies; the df cutoff."""
    keywords = [{normalise_keyword(k) for k in a.keywords if k.strip()} for a in corpus.articles]
    n_with_keywords = sum(1 for k in keywords if k)
    df: dict[str, int] = defaultdict(int)
    for kws in keywords:
        for k in kws:
            df[k] += 1
    max_df = max(1, int(keyword_max_df * n_with_keywords))
    specific = [{k for k in kws if df[k] <= max_df} for kws in keywords]
    return specific, df, max_df, n_with_keywords


def shared_specific_keywords(split: Split, corpus: Corpus) -> set[str]:
    """Specific keywords of test articles that also occur in train/val (empty when disjoint)."""
    specific, _, _, _ = _keyword_statistics(corpus, split.rule.keyword_max_df)
    all_keywords = [{normalise_keyword(k) for k in a.keywords} for a in corpus.articles]
    seen = set().union(*(all_keywords[corpus.index_of(i)] for i in [*split.train, *split.val]))
    test_keywords = {k for i in split.test for k in specific[corpus.index_of(i)]}
    return test_keywords & seen


def load_or_make_split(
    corpus: Corpus, path: str | os.PathLike | None, rule: SplitRule = SplitRule()
) -> Split:
    """The split stored at `path` (checked against the corpus), built and saved if absent."""
    if path is not None and Path(path).exists():
        split = Split.load(path)
        split.check_matches(corpus, path)
        return split
    split = make_split(corpus, rule)
    if path is not None:
        split.save(path)
    return split
