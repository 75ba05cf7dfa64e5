"""Text -> brain maps from a trained checkpoint, for users rather than training runs.

```python
from text2brain.inference import load_predictor

predictor = load_predictor("checkpoints/run/best.ckpt")
images = predictor.predict_maps(["working memory", "move the tongue"])  # NIfTI images
```

Why a separate loader rather than `LightningModule.load_from_checkpoint`: that one unpickles
the file (a checkpoint can run arbitrary code when unpickled) and imports whatever class path
the file names. Here the file is read with `torch.load(weights_only=True)` only, the class must
be one of the zoo's registered heads, and every problem (not a checkpoint, another format
version, weights that do not fit) is a `CheckpointError` that names the file and says what to do.

This module stays light on purpose (no data pipeline, no experiment loggers, no Lightning): a
process that only predicts maps should not pay for, or depend on, what training needs. A head
with a Lightning-free inference class (`INFERENCE_MODELS` in text2brain.models: Text2Brain, the
released model) is built as that class from the checkpoint's hyper-parameters and weights; the
other heads through their LightningModule, imported on demand.
"""

from __future__ import annotations

import inspect
import os
import pickle
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
import torch

from text2brain import precision as precisions
from text2brain.brain import BrainSpace
from text2brain.models.formats import state_fingerprint, upgrade_checkpoint
from text2brain.models.head import BrainMapHead
from text2brain.text import check_texts, quoted

if TYPE_CHECKING:
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

#: Name of the released default model: an export in the repository's checkpoints/ folder,
#: installed with the package as ``text2brain.checkpoints`` (see checkpoints/README.md).
DEFAULT_MODEL = "text2brain-minilm"


def _default_checkpoint() -> Path:
    from importlib.resources import files

    return Path(str(files("text2brain.checkpoints") / DEFAULT_MODEL))


#: The released default model that `load_predictor()` and `text2brain query` use.
DEFAULT_CHECKPOINT: Path = _default_checkpoint()

#: What every text2brain checkpoint holds (Lightning's keys plus text2brain's own section).
REQUIRED_KEYS = ("state_dict", "hyper_parameters", "text2brain")
#: How many keys of each kind a state-dict mismatch message lists before "...".
_SHOWN_KEYS = 5


class CheckpointError(ValueError):
    """A file that cannot be loaded as a text2brain checkpoint (the message says why)."""


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
    path = _checkpoint_path(checkpoint)
    target = _resolve_device(device)
    ckpt = _read_export(path) if _is_export(path) else _read_checkpoint(path)
    info = ckpt["text2brain"]
    cls = _registered_class(
        path, info.get("class_path") or ckpt["hyper_parameters"].get("_class_path")
    )
    base_encoder = (ckpt.get("export") or {}).get("base_encoder")
    model = _build_model(path, cls, ckpt, pretrained=base_encoder is not None)
    state = ckpt["state_dict"]
    if base_encoder is not None:
        state = _with_base_encoder(path, model, state, base_encoder)
    _load_weights(path, model, state)
    model.eval().requires_grad_(False)
    return Predictor(model, target, precision)


def _checkpoint_path(checkpoint: str | os.PathLike | None) -> Path:
    if checkpoint is None:
        default = Path(DEFAULT_CHECKPOINT)
        if not (default.is_file() or _is_export(default)):
            raise FileNotFoundError(
                f"the default checkpoint {str(DEFAULT_CHECKPOINT)!r} is missing from this "
                "installation; reinstall text2brain or pass the path of a checkpoint"
            )
        return Path(DEFAULT_CHECKPOINT)
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a path, got {type(checkpoint).__name__}")
    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.is_dir() and not _is_export(path):
        raise CheckpointError(
            f"{str(path)!r} is a folder without model.json; pass the path of a .ckpt file or "
            "of a folder written by `text2brain export`"
        )
    return path


def _is_export(path: Path) -> bool:
    from text2brain.export import is_export

    return is_export(path)


def _read_export(path: Path) -> dict[str, Any]:
    """An export folder as a checkpoint dict, checked and upgraded like a checkpoint."""
    from text2brain.export import read_export

    try:
        ckpt = read_export(path)
    except ValueError as err:
        raise CheckpointError(str(err)) from err
    return _checked_checkpoint(path, ckpt)


def _with_base_encoder(
    path: Path, model: BrainMapHead, state: dict[str, Any], base_encoder: dict[str, Any]
) -> dict[str, Any]:
    """The export's state dict completed with the weights it left out, from the base encoder.

    The model was built with the installed base encoder's weights; their fingerprint must be
    the one recorded at export, or the maps would silently differ from the exported model's.
    """
    keys = list(base_encoder.get("keys") or [])
    own = model.state_dict()
    unknown = [k for k in keys if k not in own]
    if unknown or state_fingerprint(own, keys) != base_encoder.get("fingerprint"):
        encoder = getattr(model.hparams, "encoder", None)
        raise CheckpointError(
            f"{str(path)!r} needs the base text encoder {encoder!r} it was exported against, "
            "but the installed one has other weights (another version of its package?); "
            "install the version used at export, or export again with --keep-base-encoder"
        )
    return {**{k: own[k] for k in keys}, **state}


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


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint dict, read without ever unpickling arbitrary objects, checked, upgraded."""
    try:
        with warnings.catch_warnings():  # said of any plain pickle; the error below says more
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as err:  # torch raises many types for files that are not checkpoints
        unsafe = re.search(r"(?:GLOBAL|Unsupported class)\s+([\w.]+)", str(err))
        if isinstance(err, (pickle.UnpicklingError, RuntimeError)) and unsafe:
            raise CheckpointError(
                f"{str(path)!r} holds a Python object of type {unsafe.group(1)} that can only "
                "be loaded by arbitrary unpickling, which can run any code; text2brain never "
                "unpickles arbitrary objects. Re-save it with plain tensors and containers "
                "(as `text2brain fit` writes checkpoints)"
            ) from err
        reason = _torch_load_reason(err)
        raise CheckpointError(
            f"{str(path)!r} is not a text2brain checkpoint: torch.load cannot read it ({reason})"
        ) from err
    if not isinstance(ckpt, dict):
        raise CheckpointError(
            f"{str(path)!r} is not a text2brain checkpoint: it holds a {type(ckpt).__name__}, "
            "not a checkpoint dict"
        )
    return _checked_checkpoint(path, ckpt)


def _checked_checkpoint(path: Path, ckpt: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint dict (from a .ckpt or an export) after the checks both need."""
    missing = [key for key in REQUIRED_KEYS if key not in ckpt]
    if missing:
        raise CheckpointError(
            f"{str(path)!r} is not a text2brain checkpoint: it lacks {missing} (expected the "
            f"keys {list(REQUIRED_KEYS)} that a text2brain model writes through Lightning, as "
            "`text2brain fit` does)"
        )
    info, hparams, state = ckpt["text2brain"], ckpt["hyper_parameters"], ckpt["state_dict"]
    if not (isinstance(info, dict) and isinstance(hparams, dict) and isinstance(state, dict)):
        raise CheckpointError(
            f"{str(path)!r} is not a text2brain checkpoint: 'text2brain', 'hyper_parameters' "
            "and 'state_dict' must be dicts"
        )
    try:
        upgrade_checkpoint(ckpt)
    except ValueError as err:
        raise CheckpointError(f"{str(path)!r}: {err}") from err
    try:
        BrainSpace.from_dict(info["space"])
    except Exception as err:  # any malformed space description
        raise CheckpointError(
            f"{str(path)!r} has no valid brain space in its 'text2brain' section: {err}"
        ) from err
    return ckpt


def _torch_load_reason(err: BaseException) -> str:
    """The gist of a torch.load failure, without torch's advice to retry with weights_only=False.

    That advice is wrong here: for a file that is no checkpoint it would only unpickle garbage.
    """
    message = " ".join(str(err).split())
    inner = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", message)
    if inner:
        return inner.group(1).strip()[:200]
    return f"{type(err).__name__}: {message}"[:200] if message else type(err).__name__


def _registered_class(path: Path, class_path: Any) -> type[BrainMapHead]:
    """The class to build for the registered head the checkpoint names.

    The file's class path is never imported: it only selects a registered head (see
    `registered_name`), whose Lightning-free inference class is built when it has one.
    """
    from text2brain.models import MODELS, inference_class, registered_name

    name = registered_name(class_path) if isinstance(class_path, str) else None
    if name is not None:
        return inference_class(name)
    if class_path is None:
        raise CheckpointError(f"{str(path)!r} does not record which model class wrote it")
    raise CheckpointError(
        f"{str(path)!r} names the model class {class_path!r}, which is not a registered "
        f"text2brain model (registered: {sorted(MODELS.values())}); only registered models "
        "can be loaded"
    )


def _model_name(cls: type[BrainMapHead]) -> str:
    """The head's name in messages: an inference class goes by its LightningModule's name."""
    return getattr(cls, "model_name", cls.__name__)


def _build_model(
    path: Path, cls: type[BrainMapHead], ckpt: dict[str, Any], pretrained: bool = False
) -> BrainMapHead:
    """The head from the checkpoint's hyper-parameters, with its grid-dependent modules built.

    `pretrained=False` (default): the weights come from the checkpoint, so fetching the
    encoder's original weights would be wasted time (and a download for hub encoders); its
    architecture and tokenizer still come from the encoder name or folder in the
    hyper-parameters. `pretrained=True` loads them: an export takes its unchanged base-encoder
    weights from there. Training-only hyper-parameters that the class does not take
    (`ignored_hparams`) are dropped.
    """
    hparams = {
        k: v
        for k, v in ckpt["hyper_parameters"].items()
        if not str(k).startswith("_") and k not in cls.ignored_hparams
    }
    params = inspect.signature(cls.__init__).parameters
    if "pretrained" in params:
        hparams["pretrained"] = pretrained
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = sorted(set(hparams) - set(params))
    name = _model_name(cls)
    if unknown and not takes_any:
        raise CheckpointError(
            f"{str(path)!r} has hyper-parameters {unknown} that {name} does not take; "
            "it was probably written by another text2brain version: load it with that version"
        )
    try:
        model = cls(**hparams)
        model.on_load_checkpoint(ckpt)
    except (TypeError, ValueError) as err:
        raise CheckpointError(
            f"cannot build {name} from {str(path)!r}: {' '.join(str(err).split())}"
        ) from err
    return model


def _load_weights(path: Path, model: BrainMapHead, state: dict[str, Any]) -> None:
    """Load the weights strictly; a mismatch is summarised (the model's own error is a wall)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = []
    for key in expected:
        if key not in state:
            continue
        value = state[key]
        if not isinstance(value, torch.Tensor):
            mismatched.append(f"{key} (a {type(value).__name__}, not a tensor)")
        elif value.shape != expected[key].shape:
            mismatched.append(
                f"{key} (checkpoint {tuple(value.shape)}, model {tuple(expected[key].shape)})"
            )
    problems = [
        f"{len(keys)} {kind}: {', '.join(keys[:_SHOWN_KEYS])}"
        + (", ..." if len(keys) > _SHOWN_KEYS else "")
        for kind, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("with another shape", mismatched),
        )
        if keys
    ]
    if problems:
        raise CheckpointError(
            f"the weights in {str(path)!r} do not fit the {_model_name(type(model))} its "
            f"hyper-parameters describe: {'; '.join(problems)}"
        )
    model.load_state_dict(state, strict=True)


# -- prediction ----------------------------------------------------------------------------------


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
            f"Predictor({_model_name(type(self.model))} on {self.device}, {self.space.shape} grid, "
            f"{self.space.n_voxels:,} voxels, {self.precision})"
        )

    def predict_vectors(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Masked maps, float32 (len(texts), n_voxels), in the order of `texts`.

        Texts are batched by similar length (less padding); the result does not depend on
        `batch_size` beyond float rounding, since the model is in eval mode.
        """
        texts = check_texts(texts)
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
        from text2brain.models.encoders import TextEncoder, token_counts

        texts = check_texts(texts)
        encoder = next((m for m in self.model.modules() if isinstance(m, TextEncoder)), None)
        if encoder is None:
            return None
        hparams = getattr(self.model, "hparams", None)
        limit = encoder.token_limit(getattr(hparams, "max_length", encoder.max_length))
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

    def predict_maps(self, texts: Sequence[str], batch_size: int = 64) -> list[nib.Nifti1Image]:
        """One float32 NIfTI image per text, on the model's grid (zero outside the brain mask)."""
        return [self.space.to_nifti(v) for v in self.predict_vectors(texts, batch_size)]

    def _autocast(self) -> torch.autocast:
        dtype = PRECISIONS[self.precision]
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    # -- retrieval (heads with a shared text-brain space: clip, mnm) -----------------------------

    def related_articles(self, text: str, k: int = 10) -> list[RelatedArticle]:
        """The `k` training articles nearest to `text` in the model's shared space.

        Nearest first, each a `RelatedArticle` (article_id, title, keywords, distance); the
        articles and their maps come from the checkpoint's retrieval bank.
        """
        method = self._retrieval("related_articles", "find the articles related to a text")
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"text is empty or whitespace-only ({text!r})")
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

    def _retrieval(self, name: str, what: str) -> Any:
        method = getattr(self.model, name, None)
        if method is None:
            raise TypeError(
                f"{_model_name(type(self.model))} maps text to brain maps without a shared "
                f"text-brain embedding space, so it cannot {what}: use a checkpoint of a "
                "contrastive head (clip or mnm)"
            )
        return method
