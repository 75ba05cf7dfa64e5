"""Brain space (grid, affine, mask) and the peak renderer.

Maps live as masked vectors (one float per in-mask voxel) everywhere in text2brain; the
`BrainSpace` converts between those vectors, full volumes and NIfTI images. The renderer
evaluates a Gaussian kernel at the exact peak position (no snapping to voxel centres unless
asked), which is separable, so each peak touches only a small window of voxels: rendering is
a batched scatter-add of those windows straight into masked vectors.
"""

from __future__ import annotations

import base64
import math
import warnings
import zlib
from dataclasses import dataclass
from os import PathLike
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
import torch
from nibabel.filebasedimages import ImageFileError

if TYPE_CHECKING:  # imported where peaks are rendered: predicting maps does not need pandas
    import pandas as pd

FWHM_TO_SIGMA = 1.0 / math.sqrt(8.0 * math.log(2.0))
#: Kernel support in standard deviations, as scipy.ndimage.gaussian_filter's default.
TRUNCATE = 4.0


@dataclass(frozen=True, eq=False)
class BrainSpace:
    """A voxel grid (shape + affine) and a boolean brain mask on it."""

    mask: np.ndarray
    affine: np.ndarray

    def __post_init__(self) -> None:
        mask = np.asarray(self.mask)
        affine = np.asarray(self.affine, dtype=np.float64)
        if mask.ndim != 3:
            raise ValueError(f"mask must be 3-D, got shape {mask.shape}")
        if affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got shape {affine.shape}")
        rotation = affine[:3, :3]
        if not np.allclose(rotation, np.diag(np.diag(rotation))):
            raise ValueError("only axis-aligned (diagonal) affines are supported")
        if (np.diag(rotation) <= 0).any():
            raise ValueError(f"affine diagonal must be positive, got {np.diag(rotation)}")
        mask = mask.astype(bool)
        if not mask.any():
            raise ValueError("mask has no voxel inside the brain")
        object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "affine", affine)
        flat = np.full(mask.size, -1, dtype=np.int64)
        flat[np.flatnonzero(mask)] = np.arange(int(mask.sum()))
        object.__setattr__(self, "_masked_index", flat)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_nifti(cls, image: str | PathLike | nib.Nifti1Image) -> BrainSpace:
        """The space of a mask image (non-zero voxels are brain)."""
        img = nib.load(image) if isinstance(image, (str, PathLike)) else image
        data = np.asanyarray(img.dataobj)
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        return cls(np.asarray(data) != 0, img.affine)

    @classmethod
    def neuroquery(cls, data_dir: str | PathLike | None = None) -> BrainSpace:
        """NeuroQuery's 4 mm MNI grid (46x55x46) and brain mask (28,542 voxels)."""
        from text2brain.neuroquery_files import fetch_neuroquery_file

        return cls.from_nifti(fetch_neuroquery_file("mask_img.nii.gz", data_dir))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-friendly description (the mask as base64 packed bits)."""
        return {
            "shape": list(self.shape),
            "affine": self.affine.tolist(),
            "mask_bits": base64.b64encode(np.packbits(self.mask.ravel()).tobytes()).decode(),
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> BrainSpace:
        shape = tuple(int(s) for s in state["shape"])
        bits = np.frombuffer(base64.b64decode(state["mask_bits"]), dtype=np.uint8)
        mask = np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape)
        return cls(mask, np.asarray(state["affine"], dtype=np.float64))

    # -- geometry -----------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.mask.shape)  # type: ignore[return-value]

    @property
    def n_voxels(self) -> int:
        """Number of in-mask voxels, the length of every map vector."""
        return int(self.mask.sum())

    @property
    def voxel_size(self) -> np.ndarray:
        return np.diag(self.affine)[:3].copy()

    def mm_to_voxel(self, xyz: np.ndarray) -> np.ndarray:
        """Continuous voxel coordinates (voxel centres at integers) of MNI mm points."""
        xyz = np.asarray(xyz, dtype=np.float64)
        return (xyz - self.affine[:3, 3]) / self.voxel_size

    def contains_mm(self, xyz: np.ndarray) -> np.ndarray:
        """Whether each point's nearest voxel lies inside the grid."""
        ijk = np.rint(self.mm_to_voxel(xyz))
        return ((ijk >= 0) & (ijk < np.asarray(self.shape))).all(axis=1)

    def in_mask_mm(self, xyz: np.ndarray) -> np.ndarray:
        """Whether each point's nearest voxel is a brain (in-mask) voxel."""
        inside = self.contains_mm(xyz)
        ijk = np.rint(self.mm_to_voxel(np.asarray(xyz)[inside])).astype(np.int64)
        result = np.zeros(len(inside), dtype=bool)
        result[inside] = self.mask[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
        return result

    # -- conversions --------------------------------------------------------------------------
    def to_volume(self, maps: np.ndarray) -> np.ndarray:
        """Masked vectors (..., n_voxels) -> volumes (..., *shape), zero outside the mask."""
        maps = np.asarray(maps)
        if maps.shape[-1] != self.n_voxels:
            raise ValueError(f"expected maps with {self.n_voxels} voxels, got shape {maps.shape}")
        volume = np.zeros(maps.shape[:-1] + self.shape, dtype=maps.dtype)
        volume[..., self.mask] = maps
        return volume

    def to_vector(self, volume: np.ndarray) -> np.ndarray:
        """Volumes (..., *shape) -> masked vectors (..., n_voxels)."""
        volume = np.asarray(volume)
        if volume.shape[-3:] != self.shape:
            raise ValueError(f"expected volumes of shape {self.shape}, got {volume.shape}")
        return volume[..., self.mask]

    def to_nifti(self, vector: np.ndarray) -> nib.Nifti1Image:
        """One masked vector -> a float32 NIfTI image with this space's affine."""
        vector = np.asarray(vector, dtype=np.float32)
        if vector.ndim != 1:
            raise ValueError(f"expected one map vector, got shape {vector.shape}")
        img = nib.Nifti1Image(self.to_volume(vector), self.affine)
        img.header.set_xyzt_units("mm")
        img.header.set_sform(self.affine, code="mni")
        img.header.set_qform(self.affine, code="mni")
        return img

    def from_nifti_image(self, image: str | PathLike | nib.Nifti1Image) -> np.ndarray:
        """A NIfTI map on this grid -> masked float32 vector; another grid is an error.

        Every error is a ValueError naming the file (a missing file: FileNotFoundError). The
        header (shape, grid, data type) is checked before any voxel is read: a small gzip whose
        header claims a huge grid is refused at once instead of filling the memory.
        """
        name = f"{str(image)!r}" if isinstance(image, (str, PathLike)) else "the image"
        try:
            img = nib.load(image) if isinstance(image, (str, PathLike)) else image
            shape, dtype = tuple(int(n) for n in img.shape), np.dtype(img.get_data_dtype())
        except FileNotFoundError:
            raise
        except (ImageFileError, OSError, EOFError, ValueError, TypeError) as err:
            raise ValueError(f"{name} is not a readable NIfTI image ({_reason(err)})") from err
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        if len(shape) == 4:
            raise ValueError(
                f"{name} holds {shape[3]} volumes (a 4-D series); pass one 3-D map, e.g. "
                "nilearn.image.index_img(img, 0)"
            )
        if shape != self.shape or not np.allclose(img.affine, self.affine, atol=1e-3):
            where = "" if name == "the image" else f"{name}: "
            raise ValueError(
                f"{where}image grid {shape} with affine {img.affine.tolist()} does not "
                f"match this space ({self.shape}, affine {self.affine.tolist()}); resample it "
                "first, e.g. nilearn.image.resample_to_img(img, space_mask_img)"
            )
        if dtype.kind not in "biuf":
            raise ValueError(f"{name} holds {dtype} values; a map must hold real numbers")
        try:
            data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(self.shape)
        except (OSError, EOFError, ValueError, zlib.error) as err:
            raise ValueError(f"{name} is not a readable NIfTI image ({_reason(err)})") from err
        return self.to_vector(data)

    def mask_image(self) -> nib.Nifti1Image:
        return nib.Nifti1Image(self.mask.astype(np.uint8), self.affine)

    # -- rendering ----------------------------------------------------------------------------
    def kernel_sigma_voxels(self, fwhm: float) -> np.ndarray:
        """The Gaussian's standard deviation along each axis, in voxels."""
        if not (fwhm > 0 and math.isfinite(fwhm)):
            raise ValueError(f"fwhm must be a positive number of mm, got {fwhm}")
        return fwhm * FWHM_TO_SIGMA / self.voxel_size


class Renderer:
    """Renders peaks on one space with one kernel; build once, call per batch or corpus."""

    def __init__(self, space: BrainSpace, fwhm: float = 9.0) -> None:
        self.space = space
        self.fwhm = fwhm
        self.kernel = _WindowedKernel(space, fwhm)

    def __call__(
        self,
        group: np.ndarray,
        xyz: np.ndarray,
        weights: np.ndarray,
        n_groups: int,
        snap_to_voxel: bool = False,
        chunk_peaks: int = 8192,
    ) -> np.ndarray:
        """Sum of weighted Gaussians per group -> float32 array (n_groups, n_voxels).

        `group[i]` is the row of peak i (0 <= group < n_groups), `weights[i]` its amplitude.
        The kernel is a Gaussian density sampled at voxel centres (a peak on a voxel centre
        gives the same map as smoothing a unit count image), truncated at 4 sigma (an ellipsoidal
        window; scipy's is a cube, a difference below 1e-4 of the maximum). Peaks must
        be finite; those whose nearest voxel is outside the grid are dropped with a warning.

        Why it is fast: groups are processed in blocks of about `chunk_peaks` peaks, each
        accumulated into a small buffer with one extra "trash" column that collects the kernel
        mass falling outside the mask, through a lookup table padded by the kernel radius, so
        the inner loop is one gather, one broadcast add and one scatter-add, no bounds checks.
        """
        space = self.space
        xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
        group = np.asarray(group, dtype=np.int64)
        weights = np.asarray(weights, dtype=np.float32)
        if not (len(group) == len(xyz) == len(weights)):
            raise ValueError("group, xyz and weights must have one entry per peak")
        _require_finite(xyz)
        if len(group) and (group.min() < 0 or group.max() >= n_groups):
            raise ValueError(f"group indices must lie in [0, {n_groups})")
        inside = space.contains_mm(xyz)
        if not inside.all():
            warnings.warn(
                f"dropped {int((~inside).sum()):,} of {len(xyz):,} peaks outside the "
                f"{space.shape} grid",
                stacklevel=2,
            )
            xyz, group, weights = xyz[inside], group[inside], weights[inside]

        voxel = space.mm_to_voxel(xyz)
        if snap_to_voxel:
            voxel = np.rint(voxel)
        order = np.argsort(group, kind="stable")
        group, voxel, weights = group[order], voxel[order], weights[order]

        n_mask = space.n_voxels
        out = np.empty((n_groups, n_mask), dtype=np.float32)
        groups_per_block = max(1, chunk_peaks * n_groups // max(1, len(group)))
        for g0 in range(0, n_groups, groups_per_block):
            g1 = min(n_groups, g0 + groups_per_block)
            p0, p1 = np.searchsorted(group, [g0, g1])
            block = torch.zeros((g1 - g0, n_mask + 1), dtype=torch.float32)
            if p1 > p0:
                target, value = self.kernel.window(voxel[p0:p1], weights[p0:p1])
                target += torch.from_numpy(group[p0:p1] - g0).view(-1, 1) * (n_mask + 1)
                block.view(-1).index_add_(0, target.view(-1), value.view(-1))
            out[g0:g1] = block[:, :n_mask].numpy()
        return out


class _WindowedKernel:
    """Gaussian windows of peaks, as (masked voxel index, value) pairs.

    The window of a peak is every voxel offset from its nearest voxel that can lie within
    TRUNCATE sigma of the exact peak position (an ellipsoid, about half the cube's voxels).
    """

    def __init__(self, space: BrainSpace, fwhm: float) -> None:
        self.sigma = space.kernel_sigma_voxels(fwhm)
        self.radius = np.ceil(TRUNCATE * self.sigma + 0.5).astype(np.int64)
        self.norm = float(np.prod(1.0 / (np.sqrt(2.0 * np.pi) * self.sigma)))
        # Lookup of masked index per voxel, padded by the radius; n_voxels = outside the mask.
        r = self.radius
        lookup = np.full(np.asarray(space.shape) + 2 * r, space.n_voxels, dtype=np.int64)
        core = lookup[r[0] : -r[0], r[1] : -r[1], r[2] : -r[2]]
        core[space.mask] = np.arange(space.n_voxels)
        self.lookup = torch.from_numpy(lookup.ravel())
        strides = np.array([lookup.shape[1] * lookup.shape[2], lookup.shape[2], 1])
        self.strides = strides
        grid = np.stack(
            np.meshgrid(*[np.arange(-ri, ri + 1) for ri in r], indexing="ij"), -1
        ).reshape(-1, 3)
        nearest = np.clip(np.abs(grid) - 0.5, 0, None) / self.sigma
        grid = grid[(nearest**2).sum(axis=1) <= TRUNCATE**2]
        self.offsets = torch.from_numpy(grid @ strides)
        self.steps = torch.from_numpy(grid.T.astype(np.float32).copy())  # (3, window)

    def window(self, voxel: np.ndarray, weights: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked target index (outside the mask -> n_voxels) and value, (peaks, window)."""
        centre = np.rint(voxel)
        start = ((centre.astype(np.int64) + self.radius) @ self.strides).reshape(-1, 1)
        target = self.lookup[torch.from_numpy(start) + self.offsets]
        shift = torch.from_numpy(((centre - voxel) / self.sigma).astype(np.float32))
        scaled = self.steps / torch.from_numpy(self.sigma.astype(np.float32)).view(3, 1)
        d2 = (shift[:, 0:1] + scaled[0]) ** 2
        d2 += (shift[:, 1:2] + scaled[1]) ** 2
        d2 += (shift[:, 2:3] + scaled[2]) ** 2
        value = torch.exp_(d2.mul_(-0.5))
        value *= torch.from_numpy((weights * self.norm).astype(np.float32)).view(-1, 1)
        return target, value


def render_peak_groups(
    group: np.ndarray,
    xyz: np.ndarray,
    weights: np.ndarray,
    n_groups: int,
    space: BrainSpace,
    fwhm: float = 9.0,
    snap_to_voxel: bool = False,
    chunk_peaks: int = 8192,
) -> np.ndarray:
    """One-off `Renderer(space, fwhm)(...)`; see `Renderer.__call__`."""
    return Renderer(space, fwhm)(group, xyz, weights, n_groups, snap_to_voxel, chunk_peaks)


def render_article_maps(
    coordinates: pd.DataFrame,
    space: BrainSpace | None = None,
    fwhm: float = 9.0,
    snap_to_voxel: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Article-average maps: the mean of each article's table maps.

    `coordinates` has columns id, table_id, x, y, z (MNI mm). Returns (ids, maps) with ids in
    order of first appearance and maps float32 (n_articles, n_voxels) on `space` (default the
    NeuroQuery 4 mm grid). A table map is the sum of a Gaussian of `fwhm` mm at each peak.
    Peaks outside the grid are dropped first (with a warning), so a table or article with no
    peak left does not count.
    """
    space = space if space is not None else BrainSpace.neuroquery()
    coordinates, xyz = _inside_grid(coordinates, space)
    ids, article_of_peak, _, n_tables = _index_tables(coordinates)
    weights = 1.0 / n_tables[article_of_peak]
    maps = Renderer(space, fwhm)(article_of_peak, xyz, weights, len(ids), snap_to_voxel)
    return ids, maps


def render_table_maps(
    coordinates: pd.DataFrame,
    space: BrainSpace | None = None,
    fwhm: float = 9.0,
    snap_to_voxel: bool = False,
) -> tuple[pd.DataFrame, np.ndarray]:
    """One map per table: returns (tables with columns id, table_id; maps float32)."""
    space = space if space is not None else BrainSpace.neuroquery()
    coordinates, xyz = _inside_grid(coordinates, space)
    _, _, table_of_peak, _ = _index_tables(coordinates)
    keys = coordinates[["id", "table_id"]].drop_duplicates().reset_index(drop=True)
    weights = np.ones(len(coordinates), dtype=np.float32)
    maps = Renderer(space, fwhm)(table_of_peak, xyz, weights, len(keys), snap_to_voxel)
    return keys, maps


def _reason(err: BaseException) -> str:
    """An exception's message on one line, short enough for an error message."""
    return " ".join(str(err).split())[:200] or type(err).__name__


def _require_finite(xyz: np.ndarray) -> None:
    if not np.isfinite(xyz).all():
        bad = np.flatnonzero(~np.isfinite(xyz).all(axis=1))
        raise ValueError(
            f"{len(bad)} peak(s) have NaN or infinite coordinates (first at row {bad[0]}); "
            "drop or fix them before rendering"
        )


def _inside_grid(coordinates: pd.DataFrame, space: BrainSpace) -> tuple[pd.DataFrame, np.ndarray]:
    """The peaks whose nearest voxel is in the grid (the others dropped with a warning)."""
    xyz = _xyz(coordinates)
    _require_finite(xyz)
    inside = space.contains_mm(xyz)
    if inside.all():
        return coordinates, xyz
    kept = coordinates[inside]
    lost = coordinates["id"].nunique() - kept["id"].nunique()
    warnings.warn(
        f"dropped {int((~inside).sum()):,} of {len(xyz):,} peaks outside the {space.shape} "
        f"grid ({lost:,} articles left without peaks)",
        stacklevel=3,
    )
    return kept, xyz[inside]


def _xyz(coordinates: pd.DataFrame) -> np.ndarray:
    missing = [c for c in ("id", "table_id", "x", "y", "z") if c not in coordinates.columns]
    if missing:
        raise ValueError(f"coordinates lack column(s) {missing}")
    try:
        return coordinates[["x", "y", "z"]].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"coordinates x, y, z must be numeric: {err}") from err


def _index_tables(
    coordinates: pd.DataFrame,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Article and table index of every peak (order of first appearance), tables per article."""
    _xyz(coordinates)
    import pandas as pd

    article_codes, ids = pd.factorize(coordinates["id"], sort=False)
    table_codes, _ = pd.factorize(
        pd.MultiIndex.from_arrays([coordinates["id"], coordinates["table_id"]]), sort=False
    )
    missing = coordinates["id"].isna() | coordinates["table_id"].isna()
    if missing.any():
        raise ValueError(
            f"{int(missing.sum())} coordinate row(s) have a missing id or table_id "
            f"(first at row {int(np.flatnonzero(missing)[0])})"
        )
    first_peak_of_table = np.unique(table_codes, return_index=True)[1]
    n_tables = np.bincount(article_codes[first_peak_of_table], minlength=len(ids))
    return np.asarray(ids), article_codes, table_codes, n_tables.astype(np.float32)
