"""A classical meta-analysis of the studies a model retrieves for a query, run by NiMARE.

The model says which studies a query is about; NiMARE's ALE or MKDA density, with FDR or
Monte-Carlo FWE correction, says where those studies' peaks agree beyond chance. The learned
map and the corrected map are then compared (Dice).

Which studies:

- a head with a bank of articles (clip, mnm, retrieval): its `related_articles`, the training
  articles nearest the query in its shared space (the retrieval head: by title embedding);
- any other head (Text2Brain, the released model; the baselines): the candidate articles
  whose maps correlate best (Pearson) with the query's predicted map, as Text2Brain's web
  tool listed related articles. The candidates are the NeuroQuery corpus at
  $TEXT2BRAIN_DATA_DIR (or `data_dir`), restricted to the shipped split's training articles,
  or every article of a corpus given. Their maps are rendered as the data module renders
  article maps (mean of the table maps, Gaussians of `fwhm` mm), a few thousand at a time.

The studies' peaks always come from the corpus (by default that NeuroQuery copy; a
contrastive head's articles must be in it), one NiMARE contrast per table, on the model's
grid and mask, so the corrected map and the learned map share their voxels.
"""

from __future__ import annotations

import csv
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import nibabel as nib
import numpy as np
import torch

from text2brain.brain import BrainSpace, render_article_maps
from text2brain.corpus.base import Corpus
from text2brain.interop.nimare import (
    CORRECTIONS,
    ESTIMATORS,
    meta_analyze,
    require_nimare,
    to_nimare_dataset,
)
from text2brain.metrics import pairwise_pearson, tiebreak_order, voxel_ranks
from text2brain.outputs import atomic_output

#: Candidate article maps rendered at once when matching a predicted map (~110 MB at 4 mm).
MATCH_CHUNK = 1000
#: Columns of the study list (`write_meta_analysis`'s TSV).
STUDY_COLUMNS = ("rank", "article_id", "score", "n_peaks", "title", "keywords")


class PredictorLike(Protocol):
    """What a meta-analysis needs of `text2brain.inference.Predictor`."""

    space: BrainSpace
    model: Any

    def predict_vectors(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray: ...

    def related_articles(self, text: str, k: int = 10) -> list[Any]: ...


@dataclass(frozen=True)
class RetrievedStudy:
    """One study of a meta-analysis. `score`: the embedding distance (contrastive heads,
    lower is nearer) or the map correlation (other heads, higher matches better)."""

    article_id: str
    title: str
    keywords: tuple[str, ...]
    score: float
    n_peaks: int


@dataclass(frozen=True)
class MetaAnalysis:
    """A query's meta-analysis: the learned map, NiMARE's corrected and thresholded z maps,
    the studies used and how well the learned map agrees with the significant voxels.

    `dice`: Dice between the significant voxels (thresholded map > 0) and as many of the
    learned map's highest voxels; NaN when no voxel is significant. `retrieval` says how the
    studies were chosen ("embedding" or "map correlation"); `settings` records every value
    the estimator and the correction used.
    """

    query: str
    learned_map: nib.Nifti1Image
    z_map: nib.Nifti1Image
    thresholded_map: nib.Nifti1Image
    studies: list[RetrievedStudy]
    dice: float
    n_significant: int
    retrieval: str
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """`ale-fdr`, `mkda-fwe`, ...: names the files of this analysis."""
        return f"{self.settings['name']}-{self.settings['correction']}"

    @property
    def correction_label(self) -> str:
        """`FDR p < 0.05`, `FWE p < 0.05 (500 Monte-Carlo iterations)`: for titles and logs."""
        label = f"{self.settings['correction'].upper()} p < {self.settings['alpha']:g}"
        if self.settings["n_iters"] is not None:
            label += f" ({self.settings['n_iters']:,} Monte-Carlo iterations)"
        return label


def meta_analysis(
    predictor: PredictorLike,
    query: str,
    k: int = 50,
    estimator: str = "ale",
    correction: str = "fdr",
    *,
    corpus: Corpus | None = None,
    data_dir: str | None = None,
    alpha: float = 0.05,
    n_iters: int | None = None,
    n_cores: int = 1,
    estimator_args: dict[str, Any] | None = None,
    fwhm: float = 9.0,
) -> MetaAnalysis:
    """Meta-analyse the `k` studies the model retrieves for `query` (see the module doc).

    ALE needs a kernel size and text2brain corpora have no sample sizes: unless
    `estimator_args` sets `kernel__fwhm` or `kernel__sample_size`, ALE's kernel gets `fwhm`,
    the width of the maps the model learned. Everything else is NiMARE's default unless set.
    Raises ValueError when `k` is more than the studies there are to retrieve, when no study
    is retrieved, or for a bad argument; `MissingExtraError` without NiMARE.
    """
    require_nimare("a meta-analysis of retrieved studies")
    if not isinstance(query, str) or not query.strip():
        raise ValueError(f"query must be a non-empty str, got {query!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {list(ESTIMATORS)}, got {estimator!r}")
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {list(CORRECTIONS)}, got {correction!r}")
    args = dict(estimator_args or {})
    if estimator == "ale" and not {"kernel__fwhm", "kernel__sample_size"} & set(args):
        args["kernel__fwhm"] = float(fwhm)

    space = predictor.space
    learned = predictor.predict_vectors([query])[0]
    embedding = hasattr(predictor.model, "related_articles")
    source = corpus if corpus is not None else _neuroquery(data_dir, space)
    if embedding:
        scored = _related(predictor, query, k, source)
    else:
        candidates = source.ids if corpus is not None else _training_ids(source)
        scored = best_matching_articles(learned, source, candidates, k, space, fwhm)
    ids = [article_id for article_id, _ in scored]
    chosen = source.subset(ids)
    dataset = to_nimare_dataset(chosen, space=space)
    maps = meta_analyze(dataset, estimator, correction, alpha, n_iters, n_cores, args)

    significant = space.from_nifti_image(maps.thresholded) > 0
    peaks = chosen.coordinates["id"].value_counts()
    studies = [
        RetrievedStudy(
            article_id=a.id,
            title=a.title,
            keywords=a.keywords,
            score=float(score),
            n_peaks=int(peaks.get(a.id, 0)),
        )
        for a, (_, score) in zip(chosen.articles, scored, strict=True)
    ]
    return MetaAnalysis(
        query=query,
        learned_map=space.to_nifti(learned),
        z_map=maps.z,
        thresholded_map=maps.thresholded,
        studies=studies,
        dice=dice_with_top_voxels(learned, significant),
        n_significant=int(significant.sum()),
        retrieval="embedding" if embedding else "map correlation",
        settings={"name": estimator, **maps.settings, "k": k, "map_name": maps.map_name},
    )


def studies_available(predictor: PredictorLike, corpus: Corpus | None = None) -> int | None:
    """How many studies `meta_analysis` can retrieve for this predictor and corpus (the most
    `k` may be), found without retrieving anything; None when it cannot tell cheaply.

    So that a command checks `k` before it writes any file.
    """
    if hasattr(predictor.model, "related_articles"):
        bank = getattr(predictor.model, "bank", None)
        return len(bank) if bank is not None else None
    if corpus is not None:
        return len(corpus.ids)
    from text2brain.data.split import Split, shipped_neuroquery_split

    return len(Split.load(shipped_neuroquery_split()).ids("train"))


def _neuroquery(data_dir: str | None, space: BrainSpace) -> Corpus:
    from text2brain.corpus import load_neuroquery

    return load_neuroquery(data_dir, space)


def _training_ids(corpus: Corpus) -> list[str]:
    """The shipped split's training articles (the released model's), for NeuroQuery."""
    from text2brain.data.split import Split, shipped_neuroquery_split

    path = shipped_neuroquery_split()
    split = Split.load(path)
    split.check_matches(corpus, path)
    return split.ids("train")


def _related(
    predictor: PredictorLike, query: str, k: int, corpus: Corpus
) -> list[tuple[str, float]]:
    """(id, distance) of the `k` articles nearest the query in the head's shared space."""
    found = predictor.related_articles(query, k)
    if len(found) < k:
        raise ValueError(
            f"k={k} is more than the {len(found)} articles of the model's retrieval bank; "
            f"ask for at most {len(found)}"
        )
    known = set(corpus.ids)
    missing = [a.article_id for a in found if a.article_id not in known]
    if missing:
        raise ValueError(
            f"{len(missing)} of the retrieved articles are not in corpus {corpus.name!r} (e.g. "
            f"{missing[:3]}), which gives their peaks: pass the corpus the model was trained on"
        )
    return [(a.article_id, float(a.distance)) for a in found]


def best_matching_articles(
    vector: np.ndarray,
    corpus: Corpus,
    ids: Sequence[str],
    k: int,
    space: BrainSpace,
    fwhm: float = 9.0,
) -> list[tuple[str, float]]:
    """(id, Pearson r) of the `k` articles among `ids` whose maps best match `vector`.

    Only positive correlations count as a match: fewer than `k` gives a warning, none a
    ValueError (a constant map, such as a baseline's all-zero map of a query without a known
    term, matches nothing).
    """
    if k > len(ids):
        raise ValueError(
            f"k={k} is more than the {len(ids)} candidate articles of corpus {corpus.name!r}; "
            f"ask for at most {len(ids)}"
        )
    vector = np.asarray(vector, dtype=np.float32).reshape(1, -1)
    scores = np.full(len(ids), np.nan)
    if np.ptp(vector) > 0:
        for start in range(0, len(ids), MATCH_CHUNK):
            chunk = list(ids[start : start + MATCH_CHUNK])
            rendered, maps = render_article_maps(corpus.subset(chunk).coordinates, space, fwhm)
            rows = {article_id: i for i, article_id in enumerate(chunk)}
            positions = start + np.array([rows[i] for i in rendered], dtype=np.int64)
            scores[positions] = pairwise_pearson(np.broadcast_to(vector, maps.shape), maps)
    matching = np.flatnonzero(np.nan_to_num(scores, nan=-np.inf) > 0)
    if not len(matching):
        raise ValueError(
            "no study is retrieved: no candidate article's map correlates positively with the "
            "query's predicted map (a constant map, e.g. a query without a known term?)"
        )
    best = matching[np.argsort(-scores[matching], kind="stable")[:k]]
    if len(best) < k:
        warnings.warn(
            f"only {len(best)} of the {k} studies asked for have maps that correlate "
            "positively with the predicted map; the meta-analysis uses those",
            stacklevel=2,
        )
    return [(ids[i], float(scores[i])) for i in best]


def dice_with_top_voxels(learned: np.ndarray, significant: np.ndarray) -> float:
    """Dice between the significant voxels and as many of the learned map's highest ones.

    Ties in the learned map are broken by text2brain.metrics' random voxel order (no
    spatial bias). NaN when no voxel is significant.
    """
    n = int(significant.sum())
    if n == 0:
        return math.nan
    learned_t = torch.as_tensor(np.asarray(learned, dtype=np.float32)).reshape(1, -1)
    order, _ = tiebreak_order(learned_t.shape[1])
    top = (voxel_ranks(learned_t, order)[0] < n).numpy()
    return float(2 * (top & significant).sum() / (top.sum() + n))


# -- files ---------------------------------------------------------------------------------------

#: What `write_meta_analysis` writes after a map's file stem (`000_working_memory`).
META_SUFFIXES = ("_z.nii.gz", "_thresholded.nii.gz", ".png", "_studies.tsv")
#: Files of a meta-analysis beside a query's map: `<stem>_<estimator>-<correction><suffix>`.
META_FILE = re.compile(
    rf"_(?:{'|'.join(ESTIMATORS)})-(?:{'|'.join(CORRECTIONS)})"
    rf"(?:{'|'.join(re.escape(s) for s in META_SUFFIXES)})"
)


def write_meta_analysis(result: MetaAnalysis, out_dir: str | Path, stem: str) -> list[Path]:
    """The corrected z map, the thresholded map, its glass-brain PNG and the study list (TSV),
    as `<stem>_<label>_z.nii.gz`, `..._thresholded.nii.gz`, `....png`, `..._studies.tsv`."""
    from text2brain.query.pictures import write_png

    out_dir = Path(out_dir)
    base = out_dir / f"{stem}_{result.label}"
    paths = [Path(f"{base}{suffix}") for suffix in META_SUFFIXES]
    for image, path in zip((result.z_map, result.thresholded_map), paths, strict=False):
        with atomic_output(path) as tmp:
            image.to_filename(tmp)
    title = (
        f"{result.query}: {result.settings['estimator']} of {len(result.studies)} studies, "
        f"{result.correction_label}"
    )
    write_png(result.thresholded_map, title, paths[2], threshold=result.settings["z_threshold"])
    with atomic_output(paths[3]) as tmp, tmp.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(STUDY_COLUMNS)
        for rank, study in enumerate(result.studies, start=1):
            writer.writerow(
                [
                    rank,
                    study.article_id,
                    f"{study.score:.4g}",
                    study.n_peaks,
                    study.title,
                    "; ".join(study.keywords),
                ]
            )
    return paths
