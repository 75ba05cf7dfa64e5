"""Shared test fixtures: a small synthetic brain space, random peaks, a generated corpus, the
NeuroQuery folder, a tiny BERT and its tokenizer, tiny models on one thread, one trained
Text2Brain checkpoint, the two contrastive heads trained once (and once more with their text
encoder frozen, as a release has it) and tiny released models.

Every test runs offline and with a private cache folder (see `_offline_and_private_cache`).
The tests of a package's modules live in the matching folder (tests/models/ for
text2brain/models/, ...), with the fixtures only they use in that folder's conftest.py.
"""

from __future__ import annotations

import os
import string
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pytest
import torch
from synthetic import (
    TINY_VOCABULARY,
    ellipsoid_space,
    random_coordinates,
    torch_threads,
    train_tiny_contrastive,
    train_tiny_text2brain,
    write_corpus_files,
)

import text2brain.precision
from text2brain.brain import BrainSpace
from text2brain.paths import CACHE_DIR_ENV, DATA_DIR_ENV

if TYPE_CHECKING:
    from text2brain.inference import Predictor

#: Where the shared NeuroQuery copy lives relative to this repository (<repo>/../shared/...).
SHARED_NEUROQUERY = Path(__file__).resolve().parents[2] / "shared" / "data" / "neuroquery"
NEUROQUERY_MASK = "mask_img.nii.gz"


# -- isolation ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def _session_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("text2brain-cache")


@pytest.fixture(scope="session", autouse=True)
def _offline_and_private_cache(_session_cache_dir: Path) -> Iterator[None]:
    """No test, nor any fixture of any scope, touches the network or ~/.cache.

    `urllib.request.urlopen` (text2brain's only downloader) fails as it would offline, and
    $TEXT2BRAIN_CACHE_DIR points at a temporary folder shared by the test session. Tests that
    need a "download" monkeypatch `urlopen` again themselves (their `monkeypatch` puts this
    back). Session-wide, so module- and session-scoped fixtures run isolated too.
    """

    def refuse(url: object, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError(f"network access is disabled in tests (asked for {url})")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(urllib.request, "urlopen", refuse)
        patch.setenv(CACHE_DIR_ENV, str(_session_cache_dir))
        yield


#: The CPU every test sees unless it fakes another: x86 without native bf16.
TEST_CPU = {"architecture": "x86_64", "cpu_name": "test CPU", "avx2": True}


@pytest.fixture(scope="session", autouse=True)
def _cpu_without_native_bf16() -> Iterator[None]:
    """`precision="auto"` means float32 on the CPU on every test machine, bf16 CPUs included.

    Results compared with float32 references then do not depend on the machine. Session-wide,
    so module fixtures that load predictors see it too; tests of other CPUs patch
    `text2brain.precision.cpu_capabilities` again.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(text2brain.precision, "cpu_capabilities", lambda: TEST_CPU)
        yield


# -- synthetic brain space and peaks -----------------------------------------------------------


@pytest.fixture
def small_space() -> BrainSpace:
    """A 12x14x12 grid of 4 mm voxels from (-24, -28, -24) mm, brain = inscribed ellipsoid.

    Grid centres: x in [-24, 20], y in [-28, 24], z in [-24, 20] mm; voxel (6, 7, 6) is at
    (0, 0, 0) mm; the box corners are outside the mask.
    """
    return ellipsoid_space()


@pytest.fixture(scope="session")
def space() -> BrainSpace:
    """The `small_space` grid, shared by the session (for module- and session-scoped fixtures)."""
    return ellipsoid_space()


@pytest.fixture
def make_coordinates() -> Callable[..., pd.DataFrame]:
    """`random_coordinates` (space, n_articles, max_tables, max_peaks, margin, seed)."""
    return random_coordinates


@pytest.fixture(scope="session")
def data_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A generated corpus of 80 articles, its mask and its split file (`write_corpus_files`).

    The data module written by the first test that uses it makes the split file; the others
    read it (every tiny data module asks for the same split, synthetic.tiny_data_args).
    """
    return write_corpus_files(tmp_path_factory.mktemp("synthetic-data"))


# -- shared NeuroQuery corpus ------------------------------------------------------------------


@pytest.fixture(scope="session")
def neuroquery_dir() -> Path:
    """The shared NeuroQuery folder: $TEXT2BRAIN_DATA_DIR, else <repo>/../shared/data/neuroquery."""
    candidates = []
    if os.environ.get(DATA_DIR_ENV):
        candidates.append(Path(os.environ[DATA_DIR_ENV]).expanduser())
    candidates.append(SHARED_NEUROQUERY)
    for folder in candidates:
        if (folder / NEUROQUERY_MASK).is_file():
            return folder
    pytest.skip(f"NeuroQuery corpus not found; set {DATA_DIR_ENV}")


# -- a tiny text encoder ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer, 32-d BERT and its tokenizer saved to a folder (no downloads)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation) + list("üß痛み")
    pieces = specials + TINY_VOCABULARY + chars + ["##" + c for c in string.ascii_lowercase + "ü"]
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(dict.fromkeys(pieces)) + "\n", encoding="utf-8")
    # Built from an explicit WordPiece model: BertTokenizerFast(vocab_file=...) on its own
    # keeps only the special tokens under transformers 5, mapping every word to [UNK].
    vocab = {piece: i for i, piece in enumerate(dict.fromkeys(pieces))}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer = BertTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_bert: Path) -> Any:
    """The tokenizer of `tiny_bert`, as `load_tokenizer` gives it."""
    from text2brain.tokens import load_tokenizer

    return load_tokenizer(str(tiny_bert))


# -- tiny models on one thread, and trained ones ----------------------------------------------


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread (and far faster on a busy machine).

    A module of such tests says `pytestmark = pytest.mark.usefixtures("one_thread")`.
    """
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    """A 2-step Text2Brain run on the synthetic corpus, saved by `Trainer.save_checkpoint`.

    Trained once for the session (on one thread), for the tests of loading and querying it.
    """
    with torch_threads(1):
        return train_tiny_text2brain(tmp_path_factory.mktemp("inference"), tiny_bert)


@pytest.fixture(scope="module")
def tiny_predictor(tiny_checkpoint: Path) -> Predictor:
    """`tiny_checkpoint` loaded on the CPU."""
    from text2brain.inference import load_predictor

    return load_predictor(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="session")
def contrastive_runs(
    tmp_path_factory: pytest.TempPathFactory, data_files: dict[str, str], tiny_bert: Path
) -> dict[str, dict[str, Any]]:
    """CLIP and MNM, each fitted 3 bf16 steps on hierarchy batches, validated and saved.

    name -> model, data, path, logged, metrics (synthetic.train_tiny_contrastive). Trained once
    for the session (on one thread), for the tests of the heads, of their retrieval bank and of
    `text2brain query`'s retrieval options.
    """
    with torch_threads(1):
        return {
            name: train_tiny_contrastive(name, data_files, tmp_path_factory.mktemp(name), tiny_bert)
            for name in ("clip", "mnm")
        }


@pytest.fixture(scope="session")
def contrastive_predictors(contrastive_runs: dict[str, dict[str, Any]]) -> dict[str, Predictor]:
    """`contrastive_runs`' checkpoints loaded on the CPU."""
    from text2brain.inference import load_predictor

    return {
        name: load_predictor(run["path"], device="cpu") for name, run in contrastive_runs.items()
    }


#: The tiny contrastive heads' text encoder as a release has it: pretrained and all frozen.
FROZEN_TEXT = {"text": {"pretrained": True, "freeze_embeddings": True, "freeze_layers": 2}}


@pytest.fixture(scope="session")
def frozen_contrastive_runs(
    tmp_path_factory: pytest.TempPathFactory, data_files: dict[str, str], tiny_bert: Path
) -> dict[str, dict[str, Any]]:
    """CLIP and MNM as `contrastive_runs` trains them, their text encoder frozen (`FROZEN_TEXT`),
    as a contrastive release's is: the material of a release's export."""
    with torch_threads(1):
        return {
            name: train_tiny_contrastive(
                name,
                data_files,
                tmp_path_factory.mktemp(f"frozen-{name}"),
                tiny_bert,
                **FROZEN_TEXT,
            )
            for name in ("clip", "mnm")
        }


@pytest.fixture(scope="session")
def tiny_releases_dir(
    tmp_path_factory: pytest.TempPathFactory,
    frozen_contrastive_runs: dict[str, dict[str, Any]],
    tiny_checkpoint: Path,
) -> Path:
    """A folder of tiny releases, as checkpoints/ holds the real ones: `mnm-tiny` and
    `text2brain-tiny`, exports of a frozen MNM and of `tiny_checkpoint`."""
    from text2brain.export import export_checkpoint

    folder = tmp_path_factory.mktemp("releases")
    export_checkpoint(frozen_contrastive_runs["mnm"]["path"], folder / "mnm-tiny")
    export_checkpoint(tiny_checkpoint, folder / "text2brain-tiny")
    return folder


@pytest.fixture
def tiny_releases(tiny_releases_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`tiny_releases_dir` installed as the released models (text2brain.releases)."""
    import text2brain.releases

    monkeypatch.setattr(text2brain.releases, "RELEASES_DIR", tiny_releases_dir)
    return tiny_releases_dir
