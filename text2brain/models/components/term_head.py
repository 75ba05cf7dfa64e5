"""`TermHead`: the Lightning side shared by heads that read text as vocabulary terms.

Such a head (NeuroQuery- and Neurosynth-style) fits on the TF-IDF of the training articles'
text and answers a query from the terms found in it. A query in which no fitted term occurs
has no answer: `unknown_query` says what is predicted then ("zero": an all-zero map, the
paper's failure, which the shared rank-based metric scores at chance level and a comparison
can score 0; "mean": the training mean map). Such queries are never hidden: evaluation logs
their number as `val/unknown_queries` / `test/unknown_queries`, `predict_texts` warns with the
count, and `has_known_terms` / `terms_in` tell which texts are affected and why.

The vocabulary, its synonyms and the fitted terms travel in the checkpoint's "text2brain"
section (plain lists and dicts), so a checkpoint alone answers queries.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from text2brain.brain import BrainSpace
from text2brain.models.closed_form import ClosedFormModule
from text2brain.models.components.terms import (
    DOCUMENT_FIELDS,
    TermCounter,
    Vocabulary,
    article_segments,
    document_frequency,
    inverse_document_frequency,
    load_vocabulary,
    tfidf,
)
from text2brain.text import check_texts

log = logging.getLogger(__name__)

UNKNOWN_QUERY = ("zero", "mean")
#: Longest list of example texts in a warning.
_SHOWN_TEXTS = 3


class TermHead(ClosedFormModule):
    """Base of the vocabulary-term heads: vocabulary, TF-IDF, unknown queries, checkpoint.

    Subclasses implement `fit_terms` (from the training TF-IDF) and `predict_known` (maps of
    queries that have at least one fitted term), and list their fit-sized buffers in
    `fitted_buffers` (after this base's "feature_index" and "idf").

    Args:
        vocabulary: "neuroquery" (the NeuroQuery model's 7,547 phrases), a CSV / text file of
            phrases, or a list of phrases.
        synonyms: "neuroquery" (its 1,239 synonyms), a JSON file or dict {phrase: term}, or
            None.
        data_dir: folder of the NeuroQuery files (default: $TEXT2BRAIN_DATA_DIR or the cache).
        document_fields: article fields that make a training document (title, keywords,
            abstract, discussion, captions). NeuroQuery's abstracts are bags of terms (see
            text2brain.corpus.neuroquery), read here like prose: the terms found agree with
            NeuroQuery's own count matrices for 99.7% of (article, term) pairs, but each
            abstract term counts once (its count is not in the text).
        min_documents: a term is a feature when it occurs in at least this many training
            documents (others are matched but dropped, and counted).
        unknown_query: "zero" or "mean": the map of a query without any fitted term.
    """

    #: Logged beside the shared metrics, as val/<name> and test/<name>.
    extra_metrics = ("unknown_queries",)
    fitted_buffers = ("feature_index", "idf")

    def __init__(
        self,
        vocabulary: str | list[str] = "neuroquery",
        synonyms: str | dict[str, str] | None = "neuroquery",
        data_dir: str | None = None,
        document_fields: list[str] | None = None,
        min_documents: int = 1,
        unknown_query: str = "zero",
    ) -> None:
        super().__init__()
        if unknown_query not in UNKNOWN_QUERY:
            raise ValueError(f"unknown_query must be one of {UNKNOWN_QUERY}, got {unknown_query!r}")
        fields = list(document_fields or ("title", "keywords", "abstract"))
        bad = sorted(set(fields) - set(DOCUMENT_FIELDS))
        if bad:
            raise ValueError(f"document_fields {bad} unknown; known: {list(DOCUMENT_FIELDS)}")
        if min_documents < 1:
            raise ValueError(f"min_documents must be >= 1, got {min_documents}")
        self.counter: TermCounter | None = None

    # -- what a subclass provides -------------------------------------------------------------
    def fit_terms(self, features: sp.csr_matrix, datamodule: Any, indices: np.ndarray) -> None:
        """Fit from the TF-IDF (n_train, n_features) of the training articles `indices`."""
        raise NotImplementedError

    def predict_known(self, features: Tensor) -> Tensor:
        """Maps (n, n_voxels) of query TF-IDF rows (n, n_features) that have a fitted term."""
        raise NotImplementedError

    # -- fitting ------------------------------------------------------------------------------
    def build(self, space: BrainSpace) -> None:
        self.register_buffer("feature_index", torch.zeros(0, dtype=torch.long))
        self.register_buffer("idf", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("mean_map", torch.zeros(space.n_voxels))

    def fit_closed_form(self, datamodule: Any) -> None:
        hp = self.hparams
        vocabulary = load_vocabulary(hp.vocabulary, hp.synonyms, hp.data_dir)
        counter = TermCounter(vocabulary)
        indices = datamodule.indices_of("train")
        articles = datamodule.corpus.articles
        documents = [article_segments(articles[i], self.document_fields) for i in indices]
        counts = counter.count_documents(documents)
        doc_freq = document_frequency(counts)
        keep = np.flatnonzero(doc_freq >= hp.min_documents)
        if not len(keep):
            raise ValueError(
                f"no vocabulary term occurs in {hp.min_documents}+ of the {len(indices)} "
                f"training documents (fields {self.document_fields}): check the vocabulary"
            )
        idf = inverse_document_frequency(doc_freq[keep], len(indices))
        log.info(
            "%s: %d of %d vocabulary terms occur in >= %d training documents; %d documents "
            "have none of them",
            type(self).__name__,
            len(keep),
            counter.n_terms,
            hp.min_documents,
            int((np.diff(counts[:, keep].indptr) == 0).sum()),
        )
        self.counter = counter
        self.feature_index = torch.from_numpy(keep).to(self.device)
        self.idf = torch.from_numpy(idf).to(self.device)
        self.mean_map = self.training_mean_map().to(self.device)
        self.fit_terms(tfidf(counts[:, keep], idf), datamodule, indices)

    @property
    def document_fields(self) -> list[str]:
        return list(self.hparams.document_fields or ("title", "keywords", "abstract"))

    # -- queries ------------------------------------------------------------------------------
    def query_features(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """TF-IDF rows (n, n_features) of the fitted terms in each text, and which texts
        have at least one."""
        n_features = len(self.feature_index)
        if self.counter is None or not n_features:  # not fitted: no text has a known term
            return torch.zeros(len(texts), n_features), torch.zeros(len(texts), dtype=torch.bool)
        counts = self.counter.count_texts(texts)[:, self.feature_index.cpu().numpy()]
        rows = tfidf(counts, self.idf.cpu().numpy())
        known = torch.from_numpy(np.diff(rows.indptr) > 0)
        return torch.from_numpy(rows.toarray()).float(), known

    def has_known_terms(self, texts: list[str]) -> list[bool]:
        """Whether each text has at least one fitted term (else `unknown_query` applies)."""
        return self.query_features(check_texts(texts))[1].tolist()

    def terms_in(self, text: str) -> list[str]:
        """The fitted terms found in `text` (synonyms as their term), in text order."""
        if self.counter is None:
            return []
        fitted = set(np.asarray(self.counter.vocabulary.terms)[self.feature_index.cpu().numpy()])
        return [t for t in self.counter.terms_in(text) if t in fitted]

    def _predict(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        features, known = self.query_features(texts)
        if self.hparams.unknown_query == "mean":
            maps = self.mean_map.expand(len(texts), -1).clone()
        else:
            maps = torch.zeros(len(texts), len(self.mean_map), device=self.device)
        if known.any():
            maps[known.to(self.device)] = self.predict_known(features[known].to(self.device))
        return maps, known

    def forward(self, batch: dict[str, Any]) -> Tensor:
        return self._predict(list(batch["text"]))[0]

    @torch.inference_mode()
    def predict_texts(self, texts: list[str]) -> Tensor:
        texts = check_texts(texts)
        maps, known = self._predict(texts)
        if not known.all():
            unknown = [t for t, k in zip(texts, known.tolist(), strict=True) if not k]
            warnings.warn(
                f"{len(unknown)} of {len(texts)} texts have no term of the fitted vocabulary "
                f"(e.g. {unknown[:_SHOWN_TEXTS]}): predicted as the "
                f"{'training mean' if self.hparams.unknown_query == 'mean' else 'all-zero'} "
                "map (unknown_query)",
                stacklevel=2,
            )
        return maps

    # -- evaluation ---------------------------------------------------------------------------
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        self._log_unknown(batch["text"], "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        super().test_step(batch, batch_idx)
        self._log_unknown(batch["text"], "test")

    def _log_unknown(self, texts: list[str], stage: str) -> None:
        known = self.query_features(list(texts))[1]
        self.log(
            f"{stage}/unknown_queries",
            float((~known).sum()),
            reduce_fx="sum",
            batch_size=len(texts),
            sync_dist=True,
        )

    # -- checkpoint ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.counter is not None:
            vocabulary = self.counter.vocabulary
            checkpoint["text2brain"]["vocabulary"] = {
                "terms": list(vocabulary.terms),
                "synonyms": dict(vocabulary.synonyms),
            }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint["text2brain"].get("vocabulary")
        if saved is not None:
            self.counter = TermCounter(Vocabulary(tuple(saved["terms"]), saved["synonyms"]))
