"""What a request may hand the models, checked before any model work (no web framework here).

Every refusal is a `RequestError` with the HTTP status to answer and a message naming the
problem; the app turns it into a JSON error. Uploads are read from memory only: nothing a
request sends becomes a path.
"""

from __future__ import annotations

import unicodedata
import zlib

import nibabel as nib
import numpy as np

from text2brain.brain import BrainSpace
from text2brain.text import MAX_QUERY_CHARS, quoted

#: Largest upload, in bytes (a float32 map on NeuroQuery's 4 mm grid is 0.5 MB uncompressed).
MAX_UPLOAD_BYTES = 16 * 2**20
#: Largest NIfTI once a gzip upload is decompressed (a small bomb stays small).
MAX_NIFTI_BYTES = 64 * 2**20
#: Most articles a request may ask for.
MAX_K = 100
#: Whitespace controls that a query may hold (read as spaces by the tokenizer).
ALLOWED_CONTROLS = "\t\n\r"
GZIP_MAGIC = b"\x1f\x8b"


class RequestError(Exception):
    """A request the server refuses: `status` (4xx) and a message that names the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def check_query(values: list[str], max_chars: int = MAX_QUERY_CHARS) -> str:
    """The one text query of a request's ``q`` parameters (all of them, as given)."""
    if not values:
        raise RequestError(400, "the query is missing: give it as ?q=TEXT")
    if len(values) > 1:
        raise RequestError(400, f"give one query (q), got {len(values)}")
    query = values[0]
    if not query.strip():
        raise RequestError(400, "the query is empty")
    if len(query) > max_chars:
        raise RequestError(
            400, f"the query is too long: {len(query):,} characters, at most {max_chars:,}"
        )
    if "\ufffd" in query:  # what a percent-encoded byte that is not UTF-8 decodes to
        raise RequestError(400, f"the query is not UTF-8 text ({quoted(query)})")
    controls = sorted(
        {c for c in query if unicodedata.category(c) == "Cc" and c not in ALLOWED_CONTROLS}
    )
    if controls:
        shown = ", ".join(f"U+{ord(c):04X}" for c in controls[:5])
        raise RequestError(
            400, f"the query is not plain text: it holds control characters ({shown})"
        )
    return query


def check_k(values: list[str], default: int = 10, most: int = MAX_K) -> int:
    """The ``k`` parameter (how many articles): a whole number from 1 to `most`.

    ASCII digits only, and few of them: `str.isdigit` also accepts "²", which `int` refuses,
    and `int` of thousands of digits is refused by Python itself (both were HTTP 500s).
    """
    if not values:
        return default
    number = parse_count(values[0]) if len(values) == 1 else None
    if number is None or not 1 <= number <= most:
        shown = [value[:20] for value in values[:3]]
        raise RequestError(400, f"k must be a whole number from 1 to {most}, got {shown!r}")
    return number


def parse_count(text: str, digits: int = 18) -> int | None:
    """A whole number written in at most `digits` ASCII digits (spaces around allowed), else
    None."""
    text = text.strip()
    if not (0 < len(text) <= digits and text.isascii() and text.isdigit()):
        return None
    return int(text)


def read_nifti(
    data: bytes, space: BrainSpace, max_bytes: int = MAX_UPLOAD_BYTES
) -> nib.Nifti1Image:
    """An uploaded single-file NIfTI (.nii or .nii.gz) as an image, checked against `space`.

    Refused: an upload over `max_bytes` (413), anything that is not a NIfTI-1 or NIfTI-2
    image, a 4-D series, another grid than `space`'s (400). NaN values are refused where the
    map is read (`Predictor.describe_map`), with the same status.
    """
    if len(data) > max_bytes:
        raise RequestError(413, upload_too_large(len(data), max_bytes))
    if not data:
        raise RequestError(400, "the upload is empty: send a NIfTI map (.nii or .nii.gz)")
    if data.startswith(GZIP_MAGIC):
        data = gunzip(data)
    image = None
    for kind in (nib.Nifti1Image, nib.Nifti2Image):
        try:
            image = kind.from_bytes(data)
            break
        except Exception:  # nibabel raises many kinds for bytes that are not its format
            continue
    if image is None:
        raise RequestError(
            400, "the upload is not a NIfTI image: send a single-file .nii or .nii.gz map"
        )
    shape = tuple(int(n) for n in image.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise RequestError(
            400,
            f"the upload is a {len(shape)}-D image of shape {shape}: send one 3-D map "
            "(e.g. one volume of a series: nilearn.image.index_img(img, 0))",
        )
    if shape != space.shape or not np.allclose(image.affine, space.affine, atol=1e-3):
        raise RequestError(
            400,
            f"the upload's grid {shape} (voxel size {np.round(image.header.get_zooms()[:3], 2)}"
            f" mm) is not the model's ({space.shape}, {space.voxel_size.tolist()} mm): "
            "resample it to the model's grid first (e.g. nilearn.image.resample_to_img)",
        )
    return image


def gunzip(data: bytes, limit: int = MAX_NIFTI_BYTES) -> bytes:
    """A gzip upload decompressed, refused past `limit` bytes or when it is not valid gzip."""
    inflate = zlib.decompressobj(wbits=31)
    try:
        out = inflate.decompress(data, limit)
    except zlib.error as err:
        raise RequestError(400, f"the upload is not valid gzip ({err})") from err
    if inflate.unconsumed_tail:
        raise RequestError(
            413, f"the upload decompresses to more than {limit // 2**20} MiB; not a single map"
        )
    return out


def upload_too_large(size: int, limit: int) -> str:
    return f"the upload is too large: {size:,} bytes, at most {limit:,} ({limit / 2**20:g} MiB)"
