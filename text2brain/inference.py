"""Text -> brain maps from a trained checkpoint, for users rather than training runs.

```python
from text2brain.inference import load_predictor

predictor = load_predictor("checkpoints/run/best.ckpt")
images = predictor.predict_maps(["working memory", "move the tongue"])  # NIfTI images
```

Checkpoints and exports are read by text2brain.checkpoint (checked, upgraded, never
unpickled; a `CheckpointError` names the file and says what to do); this module turns the
loaded head into a `Predictor`.

This module stays light on purpose (no data pipeline, no experiment loggers, no Lightning): a
process that only predicts maps should not pay for, or depend on, what training needs. A head
with a Lightning-free inference class (`INFERENCE_MODELS` in text2brain.models: Text2Brain, the
released model) is built as that class from the checkpoint's hyper-parameters and weights; the
other heads through their LightningModule, imported on demand.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
import torch

from text2brain import precision as precisions
from text2brain.brain import BrainSpace
from text2brain.checkpoint import DEFAULT_CHECKPOINT, CheckpointError, load_model, model_name
from text2brain.models.head import BrainMapHead
from text2brain.text import MAX_QUERY_CHARS, check_texts, quoted, too_long

if TYPE_CHECKING:
    from text2brain.interop.meta import MetaAnalysis
    from text2brain.models.contrastive.retrieval import RelatedArticle

#: Inference precisions: full float32, or bfloat16 / float16 autocast (outputs stay float32).
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

__all__ = [
    "DEFAULT_CHECKPOINT",
    "CheckpointError",
    "Predictor",
    "UnknownTokensWarning",
    "load_predictor",
]

#: A text whose word tokens are at least this share of [UNK] is flagged: its map means little.
MOSTLY_UNKNOWN = 0.5


class UnknownTokensWarning(UserWarning):
    """A text is (nearly) all tokens its tokenizer does not know: the map says little about it.

    "😀🧠" gives the same map as the literal text "[UNK]", whatever the emoji.
    """


# -- loading -------------------------------------------------------------------------------------


def load_predictor(
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    precision: str = "auto",
) -> Predictor:
    """Load a checkpoint written by `text2brain fit` (or `Trainer.save_checkpoint`) for inference.

    Args:
        checkpoint: path of a ``.ckpt`` file, or of an export folder (`text2brain export`);
            None means the released default model.
        device: where the model runs; default "cuda" when available, else "cpu".
        precision: "auto" (bf16 autocast on GPUs and CPUs with native bf16, fp16 on older
            CUDA GPUs, else fp32; see text2brain.precision), "fp32", "bf16" (autocast; warns
            on a CPU without native bf16, where it is much slower) or "fp16" (autocast, CUDA
            only).

    Raises:
        FileNotFoundError: the file does not exist (or no default model is shipped yet).
        CheckpointError (a ValueError): the file is not a text2brain checkpoint, needs
            arbitrary unpickling, has another format version, names an unregistered model or
            holds weights that do not fit the model its hyper-parameters describe.
    """
    target = _resolve_device(device)  # a bad device fails before the (slow) load
    return Predictor(load_model(checkpoint), target, precision)


def _resolve_device(device: str | torch.device | None) -> torch.device:
    """The requested device, checked now so a bad one fails before the (slow) model load."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"invalid device {device!r}: {err}") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available here")
    return resolved


class Predictor:
    """A loaded model in eval mode, turning texts into masked map vectors or NIfTI images.

    Attributes:
        model: the head (a `BrainMapHead`: its inference class, or its LightningModule), in
            eval mode, without gradients.
        space: the brain grid and mask the model predicts on (from the checkpoint).
        device: where the model runs.
        precision: "fp32", "bf16" or "fp16" (autocast): the one asked for, or what "auto"
            chose for this device (logged at INFO).
    """

    def __init__(
        self,
        model: BrainMapHead,
        device: str | torch.device | None = None,
        precision: str = "auto",
    ) -> None:
        if precision != precisions.AUTO and precision not in PRECISIONS:
            choices = [precisions.AUTO, *PRECISIONS]
            raise ValueError(f"precision must be one of {choices}, got {precision!r}")
        if model.space is None:
            raise ValueError("the model has no brain space; load it with load_predictor")
        if device is None:  # where the model already is (a head may hold only buffers)
            tensors = [*model.parameters(), *model.buffers()]
            device = tensors[0].device if tensors else "cpu"
        self.model = model.to(device)
        if torch.device(device).type == "cpu":
            # oneDNN's channels-last 3-D convolutions: the Text2Brain decoder runs ~1.5x faster
            # on CPU (same maps to 1e-8); only 5-D weights change layout.
            self.model.to(memory_format=torch.channels_last_3d)
        self.space: BrainSpace = model.space
        self.device = torch.device(device)
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError("precision 'fp16' needs a CUDA device; use 'bf16' on CPU")
        choice = precisions.inference_precision(precision, self.device)
        precisions.report(choice)
        self.precision: str = choice.precision

    def __repr__(self) -> str:
        return (
            f"Predictor({model_name(type(self.model))} on {self.device}, {self.space.shape} grid, "
            f"{self.space.n_voxels:,} voxels, {self.precision})"
        )

    def predict_vectors(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        max_chars: int | None = MAX_QUERY_CHARS,
    ) -> np.ndarray:
        """Masked maps, float32 (len(texts), n_voxels), in the order of `texts`.

        Texts are batched by similar length (less padding); the result does not depend on
        `batch_size` beyond float rounding, since the model is in eval mode. A text longer than
        `max_chars` is refused before any work (None: no limit, for corpus texts such as
        abstracts, which the model cuts at its token limit).
        """
        texts = check_texts(texts, max_chars=max_chars)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.warn_unknown_tokens(texts)
        out = np.empty((len(texts), self.space.n_voxels), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode(), self._autocast():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                try:
                    pred = self.model.predict_texts([texts[i] for i in rows])
                except ValueError as err:  # "texts[i] ..." counts within the batch
                    message = re.sub(
                        r"texts\[(\d+)\]",
                        lambda m, rows=rows: (
                            f"texts[{rows[int(m[1])]}]" if int(m[1]) < len(rows) else m[0]
                        ),
                        str(err),
                    )
                    raise ValueError(message) from err
                out[rows] = pred.float().cpu().numpy()
        return out

    def token_counts(self, texts: Sequence[str]) -> list[tuple[int, int]] | None:
        """(word tokens, unknown [UNK] tokens) of each text as the model reads it.

        None for heads that read text without a subword tokenizer (the term-based baselines).
        """
        from text2brain.models.encoders import TextEncoder
        from text2brain.tokens import token_counts

        texts = check_texts(texts)
        encoder = next((m for m in self.model.modules() if isinstance(m, TextEncoder)), None)
        if encoder is None:
            return None
        settings = getattr(self.model, "text_settings", None)
        limit = encoder.token_limit(getattr(settings, "max_length", encoder.max_length))
        return token_counts(encoder.tokenizer, texts, limit)

    def unknown_token_fraction(self, texts: Sequence[str]) -> np.ndarray:
        """Share of each text's word tokens that the tokenizer does not know ([UNK]), float64.

        Near 1, the model reads placeholders rather than the text (emoji, scripts outside the
        vocabulary). NaN for a text without word tokens and for heads without a subword
        tokenizer.
        """
        texts = check_texts(texts)
        counts = self.token_counts(texts)
        if counts is None:
            return np.full(len(texts), np.nan)
        return np.array([unknown / words if words else np.nan for words, unknown in counts])

    def warn_unknown_tokens(self, texts: Sequence[str], labels: Sequence[str] = ()) -> list[str]:
        """Warn (`UnknownTokensWarning`) about texts of mostly unknown tokens; their lines.

        `labels` name the texts in the message (default: texts[i]).
        """
        texts = check_texts(texts)
        fractions = self.unknown_token_fraction(texts)
        lines = [
            f"{labels[i] if labels else f'texts[{i}]'} ({quoted(texts[i])}) has "
            f"{fractions[i]:.0%} of its tokens unknown to the tokenizer ([UNK]): its map says "
            "little about it"
            for i in np.flatnonzero(fractions >= MOSTLY_UNKNOWN)
        ]
        if lines:
            warnings.warn("; ".join(lines), UnknownTokensWarning, stacklevel=3)
        return lines

    def predict_maps(
        self, texts: Sequence[str], batch_size: int = 64, max_chars: int | None = MAX_QUERY_CHARS
    ) -> list[nib.Nifti1Image]:
        """One float32 NIfTI image per text, on the model's grid (zero outside the brain mask);
        `max_chars` as for `predict_vectors`."""
        vectors = self.predict_vectors(texts, batch_size, max_chars)
        return [self.space.to_nifti(v) for v in vectors]

    def _autocast(self) -> torch.autocast:
        dtype = PRECISIONS[self.precision]
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    # -- retrieval (heads with a bank of articles: clip, mnm; retrieval for related articles) ---

    def related_articles(self, text: str, k: int = 10) -> list[RelatedArticle]:
        """The `k` training articles nearest to `text` in the model's shared space.

        Nearest first, each a `RelatedArticle` (article_id, title, keywords, distance); the
        articles come from the checkpoint's retrieval bank (embedded at the first call when
        the checkpoint left its embeddings out: a periodic checkpoint between validations).
        """
        method = self._retrieval("related_articles", "find the articles related to a text")
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"text is empty or whitespace-only ({text!r})")
        if why := too_long(text):
            raise ValueError(f"text ({quoted(text)}) {why}")
        self.warn_unknown_tokens([text], ["text"])
        with torch.inference_mode(), self._autocast():
            return method([text], k)[0]

    def describe_map(
        self, image: str | os.PathLike | nib.Nifti1Image, k: int = 10
    ) -> list[RelatedArticle]:
        """The `k` training articles whose maps are nearest to a NIfTI map (path or image).

        Their titles and keywords describe the map (decoding, as Neurosynth and NeuroQuery do
        it), nearest first. The image must be on the model's grid (`self.space`).
        """
        method = self._retrieval("describe_maps", "describe a map")
        vector = torch.from_numpy(self.space.from_nifti_image(image))
        try:
            with torch.inference_mode(), self._autocast():
                return method(vector.unsqueeze(0), k)[0]
        except ValueError as err:  # "maps[0] has NaN ...": name the map, as from_nifti_image
            name = f"{str(image)!r}" if isinstance(image, (str, os.PathLike)) else "the image"
            raise ValueError(str(err).replace("maps[0]", name)) from err

    # -- meta-analysis of retrieved studies (the nimare extra) -----------------------------------

    def meta_analysis(
        self,
        query: str,
        k: int = 50,
        estimator: str = "ale",
        correction: str = "fdr",
        **options: Any,
    ) -> MetaAnalysis:
        """NiMARE's ALE or MKDA density over the `k` studies the model retrieves for `query`.

        Contrastive heads retrieve with `related_articles`; other heads take the training
        articles whose maps correlate best with the predicted map. Peaks (and, for other
        heads, the candidate articles) come from the `corpus` option, default the NeuroQuery
        corpus at $TEXT2BRAIN_DATA_DIR or the `data_dir` option; the other options (`alpha`,
        `n_iters`, `n_cores`, `estimator_args`, `fwhm`) are text2brain.interop.meta's
        `meta_analysis`'s. Returns a `MetaAnalysis` (corrected and thresholded z maps, the
        studies, the Dice with the learned map). Needs `pip install "text2brain[nimare]"`.
        """
        from text2brain.interop.meta import meta_analysis

        return meta_analysis(self, query, k, estimator, correction, **options)

    def _retrieval(self, name: str, what: str) -> Any:
        method = getattr(self.model, name, None)
        if method is None:
            raise TypeError(
                f"{model_name(type(self.model))} has no bank of training articles in a shared "
                f"text-brain space, so it cannot {what}: use a checkpoint of a contrastive head "
                "(clip or mnm; or, for related articles, of the retrieval head)"
            )
        return method
