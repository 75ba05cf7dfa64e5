"""text2brain corpora as NiMARE Datasets and back, and NiMARE's coordinate-based meta-analyses.

NiMARE (`pip install "text2brain[nimare]"`) is where the field runs ALE, MKDA and their
corrections, and its `Dataset` is how coordinate corpora travel between tools. It is imported
on use only: without the extra, every function here raises `MissingExtraError` naming it.

A corpus maps onto a Dataset as one study per article and one contrast per peak table (the
table id is the contrast id), with MNI coordinates. The texts are strings, as NiMARE's text
tools read them: `title`, `keywords` (joined by "; "), `abstract` and `discussion` (one
sentence a line); each contrast's `metadata` holds its table's `caption` and the article's
`abstract_is_bag_of_terms`. `from_nimare_dataset` reads that back, so corpus -> Dataset ->
corpus keeps every article, peak and text.

NiMARE 0.22 deprecates `Dataset` for its new `Studyset` (removal planned for NiMARE 1.0); the
extra pins 0.22, and its deprecation warnings are silenced here, where text2brain, not the
user, hands Datasets to NiMARE.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from text2brain.brain import BrainSpace
from text2brain.corpus.base import Article, Corpus, SkipReport
from text2brain.errors import MissingExtraError

#: The estimators `meta_analyze` runs, by the names the API and the command line use.
ESTIMATORS = {"ale": "ALE", "mkda": "MKDADensity"}
#: Corrections: FDR (Benjamini-Hochberg, independent tests) or Monte-Carlo voxel-level FWE.
CORRECTIONS = ("fdr", "fwe")
#: NiMARE's name of the corrected z map of each correction.
CORRECTED_MAPS = {
    "fdr": "z_corr-FDR_method-indep",
    "fwe": "z_level-voxel_corr-FWE_method-montecarlo",
}
#: The kernel settings of which ALE needs one when the studies carry no sample sizes.
ALE_KERNEL_SIZE = ("kernel__fwhm", "kernel__sample_size")
KEYWORD_SEPARATOR = "; "
TEXT_FIELDS = ("title", "keywords", "abstract", "discussion")


def require_nimare(feature: str) -> ModuleType:
    """NiMARE with the modules text2brain uses, or `MissingExtraError` naming the extra."""
    try:
        import nimare
        import nimare.correct
        import nimare.dataset
        import nimare.meta.cbma
    except ImportError as err:
        raise MissingExtraError(feature, "NiMARE", "nimare") from err
    return nimare


@contextmanager
def dataset_deprecation_silenced() -> Iterator[None]:
    """Silence NiMARE 0.22's FutureWarnings that `Dataset` is deprecated (see the module doc)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*nimare.dataset.Dataset is deprecated")
        yield


# -- corpus -> Dataset ---------------------------------------------------------------------------


def to_nimare_dataset(
    corpus: Corpus, ids: Iterable[str] | None = None, space: BrainSpace | None = None
) -> Any:
    """A `nimare.dataset.Dataset` of the whole corpus, or of `ids` (a split's, chosen ones).

    `space`: its mask becomes the Dataset's (what a meta-analysis is computed on); default
    NiMARE's MNI152 2 mm brain mask. Raises ValueError for an unknown id, or for a keyword
    holding "; " or a discussion sentence holding a line break, which the Dataset's text
    strings could not give back.
    """
    nimare = require_nimare("exporting a corpus to NiMARE")
    chosen = corpus if ids is None else _subset(corpus, ids)
    source: dict[str, dict[str, Any]] = {}
    tables = chosen.coordinates.groupby(["id", "table_id"], sort=False)
    contrasts: dict[str, dict[str, Any]] = {a.id: {} for a in chosen.articles}
    for (article_id, table_id), peaks in tables:
        contrasts[article_id][table_id] = {
            "x": peaks["x"].tolist(),
            "y": peaks["y"].tolist(),
            "z": peaks["z"].tolist(),
        }
    for article in chosen.articles:
        text = _texts_of(article)
        source[article.id] = {
            "contrasts": {
                table_id: {
                    "coords": {"space": "MNI", **xyz},
                    "text": dict(text),
                    "metadata": {
                        "caption": article.table_captions.get(table_id, ""),
                        "abstract_is_bag_of_terms": article.abstract_is_bag_of_terms,
                    },
                }
                for table_id, xyz in contrasts[article.id].items()
            }
        }
    mask = None if space is None else space.mask_image()
    with dataset_deprecation_silenced():
        return nimare.dataset.Dataset(source, mask=mask)


def _subset(corpus: Corpus, ids: Iterable[str]) -> Corpus:
    """`corpus.subset(ids)` with a ValueError that says what to do about unknown ids."""
    ids = list(ids)
    unknown = [i for i in ids if i not in set(corpus.ids)]
    if unknown:
        raise ValueError(
            f"{len(unknown)} of the {len(ids)} ids given are not articles of corpus "
            f"{corpus.name!r} (e.g. {unknown[:3]}); pass ids of its articles"
        )
    return corpus.subset(ids)


def _texts_of(article: Article) -> dict[str, str]:
    bad = [k for k in article.keywords if KEYWORD_SEPARATOR.strip() in k]
    if bad:
        raise ValueError(
            f"article {article.id!r} has keyword(s) {bad} holding ';', which separates keywords "
            "in a NiMARE text: split them first"
        )
    if any("\n" in sentence for sentence in article.discussion):
        raise ValueError(
            f"article {article.id!r} has a discussion sentence with a line break, which "
            "separates sentences in a NiMARE text: split it first"
        )
    return {
        "title": article.title,
        "keywords": KEYWORD_SEPARATOR.join(article.keywords),
        "abstract": article.abstract,
        "discussion": "\n".join(article.discussion),
    }


# -- Dataset -> corpus ---------------------------------------------------------------------------


def from_nimare_dataset(dataset: Any, space: BrainSpace, name: str = "nimare") -> Corpus:
    """A text2brain corpus on `space` from a NiMARE Dataset: one article per study.

    Each contrast becomes a peak table (its contrast id the table id). Texts are read from
    the columns `to_nimare_dataset` writes, where present: title, keywords (split on ";"),
    abstract, discussion (one sentence a line), and each contrast's metadata `caption`.
    Skipped, and counted in the corpus' one warning with what `Corpus.build` skips: peaks in
    a space that is not MNI (NiMARE converts Talairach peaks to the Dataset's space when it
    is MNI, so these are peaks of a Talairach Dataset or of an unknown space), studies left
    without coordinates, and studies whose contrasts disagree on a text (the first
    contrast's is kept).
    """
    require_nimare("importing a NiMARE Dataset")
    report = SkipReport()
    coordinates = dataset.coordinates
    mni = coordinates["space"].astype(str).str.lower().str.contains("mni")
    report.add("peaks in a space that is not MNI", int((~mni).sum()))
    coordinates = coordinates[mni]

    no_text = dict.fromkeys(TEXT_FIELDS, "")
    no_metadata = {"caption": "", "abstract_is_bag_of_terms": ""}
    text_rows = _by_contrast(dataset.texts, no_text)
    metadata_rows = _by_contrast(dataset.metadata, no_metadata)
    with_peaks = set(coordinates["study_id"].astype(str))
    articles = []
    for study_id, contrast_ids in _contrasts_by_study(dataset).items():
        if study_id not in with_peaks:
            report.add("studies without MNI coordinates", 1)
            continue
        texts = [text_rows.get(c, no_text) for c in contrast_ids]
        metadata = {c: metadata_rows.get(c, no_metadata) for c in contrast_ids}
        fields = {f: [t[f] for t in texts if t[f]] for f in TEXT_FIELDS}
        if any(len(set(values)) > 1 for values in fields.values()):
            report.add("studies whose contrasts disagree on a text (the first one's kept)", 1)
        first = {f: values[0] if values else "" for f, values in fields.items()}
        articles.append(
            Article(
                id=study_id,
                title=first["title"],
                keywords=tuple(
                    k.strip() for k in first["keywords"].split(KEYWORD_SEPARATOR.strip())
                )
                if first["keywords"]
                else (),
                abstract=first["abstract"],
                discussion=tuple(first["discussion"].split("\n")) if first["discussion"] else (),
                table_captions={
                    c.rpartition("\x00")[2]: metadata[c]["caption"]
                    for c in contrast_ids
                    if metadata[c]["caption"]
                },
                abstract_is_bag_of_terms=any(
                    metadata[c]["abstract_is_bag_of_terms"] is True for c in contrast_ids
                ),
            )
        )
    peaks = pd.DataFrame(
        {
            "id": coordinates["study_id"].astype(str).to_numpy(),
            "table_id": coordinates["contrast_id"].astype(str).to_numpy(),
            "x": coordinates["x"].astype(float).to_numpy(),
            "y": coordinates["y"].astype(float).to_numpy(),
            "z": coordinates["z"].astype(float).to_numpy(),
        }
    )
    return Corpus.build(name, articles, peaks, space, report)


def _contrast_key(study_id: str, contrast_id: str) -> str:
    """One key per (study, contrast): NiMARE's own "study-contrast" id is ambiguous when ids
    hold "-"."""
    return f"{study_id}\x00{contrast_id}"


def _contrasts_by_study(dataset: Any) -> dict[str, list[str]]:
    """study id -> keys of its contrasts, in the Dataset's order."""
    found: dict[str, list[str]] = {}
    for frame in (dataset.texts, dataset.metadata, dataset.coordinates):
        for study_id, contrast_id in zip(frame["study_id"], frame["contrast_id"], strict=True):
            keys = found.setdefault(str(study_id), [])
            key = _contrast_key(str(study_id), str(contrast_id))
            if key not in keys:
                keys.append(key)
    return found


def _by_contrast(frame: pd.DataFrame, columns: Iterable[str]) -> dict[str, dict[str, Any]]:
    """contrast key -> {column: value} of a Dataset table, a missing value as ""."""
    columns = list(columns)
    rows: dict[str, dict[str, Any]] = {}
    for record in frame.to_dict("records"):
        values = {c: _value(record.get(c)) for c in columns}
        rows[_contrast_key(str(record["study_id"]), str(record["contrast_id"]))] = values
    return rows


def _value(value: Any) -> Any:
    """A cell of a Dataset table: NaN / None (missing) -> "", numpy scalars -> Python."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, np.generic):
        return value.item()
    return value


# -- meta-analysis -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorrectedMaps:
    """A corrected meta-analysis: its z map, the map thresholded at `alpha`, and how it ran.

    `thresholded` keeps the corrected z where the corrected one-sided p is below `alpha`
    (z above the normal quantile), 0 elsewhere. `settings` records every value used, the
    estimator's defaults included where they were not set.
    """

    z: nib.Nifti1Image
    thresholded: nib.Nifti1Image
    map_name: str
    settings: dict[str, Any] = field(default_factory=dict)


def meta_analyze(
    dataset: Any,
    estimator: str = "ale",
    correction: str = "fdr",
    alpha: float = 0.05,
    n_iters: int | None = None,
    n_cores: int = 1,
    estimator_args: dict[str, Any] | None = None,
) -> CorrectedMaps:
    """Run NiMARE's ALE or MKDA density on `dataset`, then its FDR or Monte-Carlo FWE.

    Args:
        estimator: "ale" (`nimare.meta.cbma.ALE`) or "mkda" (`MKDADensity`).
        correction: "fdr" (`FDRCorrector`, independent tests) or "fwe" (`FWECorrector`,
            Monte-Carlo, voxel-level; NiMARE draws a tqdm bar over the iterations).
        alpha: the corrected p threshold of the thresholded map.
        n_iters: Monte-Carlo iterations of "fwe" (None: NiMARE's default, 5,000).
        n_cores: cores NiMARE may use for the estimator and the Monte-Carlo (-1: all).
        estimator_args: more arguments of the estimator (`kernel__fwhm=...`, ...). ALE needs
            a kernel size: the studies' sample sizes, or `kernel__fwhm` / `kernel__sample_size`.
    """
    nimare = require_nimare("a meta-analysis")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {list(ESTIMATORS)}, got {estimator!r}")
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {list(CORRECTIONS)}, got {correction!r}")
    if not (isinstance(alpha, float | int) and 0 < alpha < 1):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if n_iters is not None:
        if correction != "fwe":
            raise ValueError("n_iters counts Monte-Carlo iterations: it needs correction='fwe'")
        if isinstance(n_iters, bool) or not isinstance(n_iters, int) or n_iters < 1:
            raise ValueError(f"n_iters must be a positive int, got {n_iters!r}")
    if isinstance(n_cores, bool) or not isinstance(n_cores, int) or n_cores == 0 or n_cores < -1:
        raise ValueError(f"n_cores must be a positive int or -1 (all cores), got {n_cores!r}")
    args = dict(estimator_args or {})
    if (
        estimator == "ale"
        and not set(ALE_KERNEL_SIZE) & set(args)
        and not _has_sample_sizes(dataset)
    ):
        raise ValueError(
            "ALE needs each study's sample size, and these studies have none: give "
            "estimator_args={'kernel__fwhm': MM} or {'kernel__sample_size': N}"
        )
    model = getattr(nimare.meta.cbma, ESTIMATORS[estimator])(n_cores=n_cores, **args)
    if correction == "fdr":
        corrector = nimare.correct.FDRCorrector(method="indep", alpha=alpha)
    else:
        if n_iters is None:  # recorded in the settings: the value NiMARE uses
            n_iters = _default_argument(model.correct_fwe_montecarlo, "n_iters")
        corrector = nimare.correct.FWECorrector(
            method="montecarlo", n_iters=n_iters, n_cores=n_cores
        )
    with dataset_deprecation_silenced():
        result = corrector.transform(model.fit(dataset))
    name = CORRECTED_MAPS[correction]
    z = result.get_map(name)
    threshold = _normal_quantile(alpha)
    data = np.asarray(z.get_fdata(), dtype=np.float32)
    thresholded = np.where(data > threshold, data, 0).astype(np.float32)
    settings = {
        "estimator": ESTIMATORS[estimator],
        "estimator_args": _plain(model.get_params()),
        "correction": correction,
        "n_iters": n_iters,
        "alpha": alpha,
        "z_threshold": threshold,
        "n_cores": n_cores,
        "n_studies": len(dataset.coordinates["study_id"].unique()),
        "n_peaks": len(dataset.coordinates),
    }
    return CorrectedMaps(
        z=nib.Nifti1Image(data, z.affine),
        thresholded=nib.Nifti1Image(thresholded, z.affine),
        map_name=name,
        settings=settings,
    )


def _default_argument(function: Any, name: str) -> Any:
    import inspect

    return inspect.signature(function).parameters[name].default


def _plain(params: dict[str, Any]) -> dict[str, Any]:
    """An estimator's parameters that are plain values (numbers, strings), for the record."""
    return {k: v for k, v in params.items() if v is None or isinstance(v, bool | int | float | str)}


def _has_sample_sizes(dataset: Any) -> bool:
    columns = set(dataset.metadata.columns)
    return bool({"sample_sizes", "sample_size"} & columns)


def _normal_quantile(alpha: float) -> float:
    """z above which a one-sided normal p is below `alpha`."""
    from scipy.stats import norm

    return float(norm.isf(alpha))
