"""Embeddings of a frozen text encoder, computed once per text and memory-mapped from disk.

Why: a frozen encoder is a fixed function of its text, and the training sampler draws from a
finite set of texts (titles, single keywords, abstracts, first caption sentences). Running the
transformer at every step recomputes the same vectors epoch after epoch (346 of 750 ms of the
released model's CPU step). Embedding every distinct text once, in batches sorted by length,
and gathering rows afterwards leaves the step with only the trainable part.

The file is keyed by everything that changes a vector: the encoder's weights (their sha256),
its tokenizer, `max_length`, pooling, the compute dtype and the set of texts, so a second run
starts at once and a changed encoder never reuses stale vectors. Texts outside the set (random
subsets of discussion sentences, user queries) are encoded live by the same encoder, in eval
mode, so a cached and a live vector of one text are the same. No Lightning here.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from text2brain.outputs import atomic_output, remove_stale_temporaries, write_text

#: Most tokens in one encoding batch (texts sorted by length: many short ones, few long ones).
TOKENS_PER_BATCH = 16_384
#: Most texts in one encoding batch.
MAX_BATCH = 512


def is_frozen(module: nn.Module) -> bool:
    """True when no parameter of `module` is trained (it then computes a fixed function)."""
    return not any(p.requires_grad for p in module.parameters())


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of what decides a tokenizer's output: its full definition where it has one.

    The truncation and padding settings are left out: tokenising sets them on every call (the
    cache key holds `max_length` itself).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "backend", None)
    if backend is not None:  # a `tokenizers` JSON: vocabulary, normaliser, rules
        definition = json.loads(backend.to_str())
        definition.pop("truncation", None)
        definition.pop("padding", None)
        text = json.dumps(definition, sort_keys=True)
    else:
        text = json.dumps(sorted(tokenizer.get_vocab().items())) + type(tokenizer).__name__
    return hashlib.sha256(text.encode()).hexdigest()


class EmbeddingCache:
    """Rows of a (n_texts, dim) float32 matrix, one per distinct text, looked up by text.

    Args:
        texts: the cached texts, in row order.
        vectors: (len(texts), dim) array, usually a read-only memory map.
        path: the file the vectors live in (None for an in-memory cache).
    """

    def __init__(self, texts: Sequence[str], vectors: np.ndarray, path: Path | None = None):
        if len(texts) != len(vectors):
            raise ValueError(f"{len(texts)} texts but {len(vectors)} vectors")
        self.row = {text: i for i, text in enumerate(texts)}
        self.vectors = vectors
        self.path = path

    def __len__(self) -> int:
        return len(self.row)

    def lookup(self, texts: Sequence[str]) -> tuple[Tensor, list[int]]:
        """(vectors (len(texts), dim) with zero rows for misses, positions of the misses)."""
        rows = [self.row.get(text, -1) for text in texts]
        missing = [i for i, row in enumerate(rows) if row < 0]
        found = np.array([max(row, 0) for row in rows], dtype=np.int64)
        vectors = torch.from_numpy(np.array(self.vectors[found], dtype=np.float32))
        if missing:
            vectors[missing] = 0.0
        return vectors, missing


def cache_key(
    encoder_fingerprint: str, tokenizer_fp: str, settings: dict[str, Any], texts: Sequence[str]
) -> str:
    """The file key: encoder weights, tokenizer, settings (max_length, pooling, dtype), texts."""
    digest = hashlib.sha256()
    digest.update(
        json.dumps([encoder_fingerprint, tokenizer_fp, settings], sort_keys=True).encode()
    )
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()[:24]


def length_batches(lengths: Sequence[int]) -> list[np.ndarray]:
    """Text indices in batches of similar token length, each within the token budget."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    batches, current, longest = [], [], 0
    for index in order:
        longest_if_added = max(longest, int(lengths[index]))
        if current and (
            longest_if_added * (len(current) + 1) > TOKENS_PER_BATCH or len(current) >= MAX_BATCH
        ):
            batches.append(np.array(current))
            current, longest_if_added = [], int(lengths[index])
        current.append(int(index))
        longest = longest_if_added
    if current:
        batches.append(np.array(current))
    return batches


def encode_texts(
    encode: Callable[[list[str]], Tensor],
    token_lengths: Sequence[int],
    texts: Sequence[str],
    out: np.ndarray,
    progress: bool = True,
) -> None:
    """Fill `out[i]` with `encode`'s vector of `texts[i]`, in length-sorted batches.

    Warnings that repeat batch after batch (texts cut at max_length) are reported once, with
    how many batches raised them.
    """
    from tqdm.auto import tqdm

    batches = length_batches(token_lengths)
    with (
        warnings.catch_warnings(record=True) as caught,
        tqdm(total=len(texts), desc="embedding texts", unit="text", disable=not progress) as bar,
    ):
        warnings.simplefilter("always")
        for batch in batches:
            out[batch] = encode([texts[i] for i in batch]).float().cpu().numpy()
            bar.update(len(batch))
    by_kind: dict[tuple[type[Warning], str], list[str]] = {}
    for record in caught:
        message = str(record.message)
        kind = re.sub(r"\d+", "N", message)
        by_kind.setdefault((record.category, kind), []).append(message)
    for (category, _), messages in by_kind.items():
        suffix = f" (and in {len(messages) - 1} more of {len(batches)} batches)"
        warnings.warn(messages[0] + (suffix if len(messages) > 1 else ""), category, stacklevel=2)


def cache_problem(path: Path, shape: tuple[int, int], chunk: int = 65_536) -> str | None:
    """What is wrong with a cache file (the words for a message), or None when it is sound:
    readable as .npy, float32, of `shape`, every value finite (read in chunks)."""
    try:
        vectors = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as err:
        return f"cannot be read ({' '.join(str(err).split())[:120]})"
    if vectors.dtype != np.float32 or vectors.shape != shape:
        return f"holds {vectors.dtype} {vectors.shape}, not float32 {shape}"
    for start in range(0, len(vectors), chunk):
        if not np.isfinite(vectors[start : start + chunk]).all():
            return "holds NaN or infinite values"
    return None


def open_or_build(
    directory: Path,
    key: str,
    texts: Sequence[str],
    dim: int,
    encode: Callable[[list[str]], Tensor],
    token_lengths: Callable[[Sequence[str]], Sequence[int]],
    description: dict[str, Any],
    build: bool = True,
    progress: bool = True,
) -> EmbeddingCache | None:
    """The cache file `directory/<key>.npy`, built first when missing (unless `build` is False).

    Written through `atomic_output`, so an interrupted build never leaves a file that a later
    run would trust (the temporaries of a killed build are removed here); a JSON beside it
    says what the vectors are (for people, not read). A file that fails `cache_problem` (cut
    short, not float32, another shape, NaN) is named in a warning and rebuilt: it would
    otherwise fail much later with an error pointing elsewhere.
    """
    path = Path(directory) / f"{key}.npy"
    remove_stale_temporaries(directory)
    if path.is_file():
        problem = cache_problem(path, (len(texts), dim))
        if problem is None:
            return EmbeddingCache(texts, np.load(path, mmap_mode="r"), path)
        what = "rebuilding it" if build else "encoding the texts live (delete it to rebuild)"
        warnings.warn(f"embedding cache {str(path)!r} {problem}: {what}", stacklevel=2)
    if not build:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        vectors = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.float32, shape=(len(texts), dim)
        )
        encode_texts(encode, token_lengths(texts), texts, vectors, progress=progress)
        vectors.flush()
        del vectors
    about = {**description, "n_texts": len(texts), "dim": dim}
    write_text(path.with_suffix(".json"), json.dumps(about, indent=1))
    return EmbeddingCache(texts, np.load(path, mmap_mode="r"), path)
