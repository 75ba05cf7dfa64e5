"""Semantic smoothing of query term vectors from term co-occurrence (no Lightning).

A query names a few terms; related terms that co-occur with them in the training documents
carry signal too. Non-negative matrix factorisation of the training TF-IDF, X ~ W H with
H (k, n_terms), gives each term an embedding (its column of H, scaled to unit length); the
similarity of two terms is the cosine of their embeddings (>= 0). With N the similarity
matrix with rows scaled to sum to 1, a query x becomes (1 - w) x + w x N (NeuroQuery uses
w = 0.1). N (n_terms x n_terms) is never formed: x N = ((x / r) E) E^T with E the unit
embeddings and r = E (E^T 1) the row sums, so only E (n_terms x k) is kept.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from torch import Tensor

#: Floor of denominators in the multiplicative updates (avoids 0 / 0 for unused terms).
_TINY = 1e-12


def nmf_term_embeddings(
    features: sp.csr_matrix, n_components: int, iterations: int = 50, seed: int = 0
) -> np.ndarray:
    """Unit-length term embeddings (n_terms, k), float32, from NMF of the non-negative
    `features`.

    Lee & Seung multiplicative updates for the Frobenius loss from a seeded uniform start, in
    float32; terms that occur in no document get a zero embedding.
    """
    if n_components < 1:
        raise ValueError(f"n_components must be >= 1, got {n_components}")
    x = sp.csr_matrix(features, dtype=np.float32)
    if x.nnz and x.data.min() < 0:
        raise ValueError("NMF needs non-negative features")
    xt = sp.csr_matrix(x.T)
    n, p = x.shape
    rng = np.random.default_rng(seed)
    scale = 2.0 * np.sqrt(x.sum() / (n * p) / n_components)
    w = (rng.random((n, n_components)) * scale).astype(np.float32)
    h = (rng.random((n_components, p)) * scale).astype(np.float32)
    for _ in range(iterations):
        h *= (xt @ w).T / np.maximum((w.T @ w) @ h, _TINY)
        w *= (x @ h.T) / np.maximum(w @ (h @ h.T), _TINY)
    embeddings = np.ascontiguousarray(h.T)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return np.divide(embeddings, norms, out=np.zeros_like(embeddings), where=norms > 0)


def smooth_queries(queries: Tensor, embeddings: Tensor, weight: float) -> Tensor:
    """(1 - weight) x + weight x N for each row x of `queries` (n, n_terms), rows of the
    result scaled back to the l2 norm of the query (TF-IDF rows have unit norm)."""
    if weight == 0 or embeddings.shape[1] == 0:
        return queries
    row_sums = embeddings @ embeddings.sum(dim=0)
    scaled = queries / row_sums.clamp_min(_TINY)
    neighbours = (scaled @ embeddings) @ embeddings.T
    smoothed = (1.0 - weight) * queries + weight * neighbours
    norms = smoothed.norm(dim=1, keepdim=True).clamp_min(_TINY)
    return smoothed * (queries.norm(dim=1, keepdim=True) / norms)
