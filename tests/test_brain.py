"""BrainSpace conversions and geometry, and the peak renderer against a scipy reference."""

from __future__ import annotations

import gzip
import json
import math
import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import gaussian_filter
from synthetic import make_corpus

from text2brain.brain import BrainSpace, render_article_maps, render_peak_groups, render_table_maps


def scipy_reference(
    coordinates: pd.DataFrame, space: BrainSpace, fwhm: float, ids: list[str]
) -> np.ndarray:
    """NeuroQuery's way, written out independently: per table, a count image of the peaks
    rounded to their voxel, smoothed with scipy's gaussian_filter (truncate 4), masked;
    an article's map is the mean of its tables'."""
    sigma = fwhm / math.sqrt(8 * math.log(2)) / space.voxel_size
    maps = []
    for article_id in ids:
        peaks = coordinates[coordinates["id"] == article_id]
        tables = []
        for _, table in peaks.groupby("table_id", sort=False):
            ijk = np.rint(space.mm_to_voxel(table[["x", "y", "z"]].to_numpy())).astype(int)
            counts = np.zeros(space.shape)
            np.add.at(counts, tuple(ijk.T), 1.0)
            tables.append(gaussian_filter(counts, sigma, truncate=4.0)[space.mask])
        maps.append(np.mean(tables, axis=0))
    return np.asarray(maps)


def assert_maps_close(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-4) -> None:
    """Equal up to `rtol` of the largest value (float32 rendering vs float64 reference)."""
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * np.abs(expected).max())


def full_box(space: BrainSpace) -> BrainSpace:
    """The same grid with every voxel in the brain (no kernel mass lost to the mask)."""
    return BrainSpace(np.ones(space.shape, dtype=bool), space.affine)


def centroid_voxel(space: BrainSpace, vector: np.ndarray) -> np.ndarray:
    volume = space.to_volume(vector).astype(np.float64)
    ijk = np.indices(space.shape).reshape(3, -1)
    return (ijk * volume.ravel()).sum(axis=1) / volume.sum()


def one_peak(x: float, y: float, z: float) -> pd.DataFrame:
    return pd.DataFrame({"id": ["p"], "table_id": ["t"], "x": [x], "y": [y], "z": [z]})


# -- BrainSpace ----------------------------------------------------------------------------------


def test_small_space_fixture(small_space: BrainSpace) -> None:
    assert small_space.shape == (12, 14, 12)
    np.testing.assert_array_equal(small_space.voxel_size, [4.0, 4.0, 4.0])
    assert 0 < small_space.n_voxels < 12 * 14 * 12
    assert small_space.mask.dtype == bool
    assert not small_space.mask[0, 0, 0] and small_space.mask[6, 7, 6]


def test_volume_vector_round_trip(small_space: BrainSpace) -> None:
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(3, small_space.n_voxels)).astype(np.float32)
    volumes = small_space.to_volume(maps)
    assert volumes.shape == (3, *small_space.shape)
    assert volumes.dtype == np.float32
    assert (volumes[:, ~small_space.mask] == 0).all()
    np.testing.assert_array_equal(small_space.to_vector(volumes), maps)
    # one map, and a volume with values outside the mask (they are dropped)
    volume = rng.normal(size=small_space.shape)
    vector = small_space.to_vector(volume)
    assert vector.shape == (small_space.n_voxels,)
    np.testing.assert_array_equal(small_space.to_volume(vector)[small_space.mask], vector)
    with pytest.raises(ValueError, match="voxels"):
        small_space.to_volume(maps[:, :-1])
    with pytest.raises(ValueError, match="shape"):
        small_space.to_vector(volume[:-1])


def test_to_nifti(small_space: BrainSpace) -> None:
    vector = np.arange(small_space.n_voxels, dtype=np.float64) + 1.0
    img = small_space.to_nifti(vector)
    assert isinstance(img, nib.Nifti1Image)
    assert img.shape == small_space.shape
    assert img.get_data_dtype() == np.float32
    np.testing.assert_array_equal(img.affine, small_space.affine)
    sform, sform_code = img.header.get_sform(coded=True)
    qform, qform_code = img.header.get_qform(coded=True)
    assert int(sform_code) == 4 and int(qform_code) == 4  # MNI 152
    np.testing.assert_allclose(sform, small_space.affine)
    np.testing.assert_allclose(qform, small_space.affine)
    data = np.asanyarray(img.dataobj)
    assert data.dtype == np.float32
    np.testing.assert_array_equal(data[small_space.mask], vector.astype(np.float32))
    assert (data[~small_space.mask] == 0).all()
    with pytest.raises(ValueError, match="one map"):
        small_space.to_nifti(np.zeros((2, small_space.n_voxels)))


def test_nifti_round_trip(small_space: BrainSpace, tmp_path) -> None:
    vector = np.random.default_rng(1).normal(size=small_space.n_voxels).astype(np.float32)
    img = small_space.to_nifti(vector)
    back = small_space.from_nifti_image(img)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, vector)
    # through a file, by path (str and Path)
    path = tmp_path / "map.nii.gz"
    nib.save(img, path)
    np.testing.assert_array_equal(small_space.from_nifti_image(path), vector)
    np.testing.assert_array_equal(small_space.from_nifti_image(str(path)), vector)
    # a 4-D image with a single volume is accepted
    img4 = nib.Nifti1Image(small_space.to_volume(vector)[..., None], small_space.affine)
    np.testing.assert_array_equal(small_space.from_nifti_image(img4), vector)


def test_from_nifti_image_on_another_grid(small_space: BrainSpace) -> None:
    volume = np.zeros(small_space.shape, dtype=np.float32)
    shifted = small_space.affine.copy()
    shifted[0, 3] += 2.0
    finer = np.diag([2.0, 2.0, 2.0, 1.0])
    finer[:3, 3] = small_space.affine[:3, 3]
    for img in (
        nib.Nifti1Image(volume, shifted),
        nib.Nifti1Image(volume, finer),
        nib.Nifti1Image(volume[:-1], small_space.affine),
    ):
        with pytest.raises(ValueError, match="resample"):
            small_space.from_nifti_image(img)


@pytest.mark.parametrize("shape", [(1024, 1024, 512), (32767, 32767, 32767)])
def test_a_huge_header_is_refused_before_any_voxel_is_read(
    small_space: BrainSpace, tmp_path, shape: tuple[int, ...]
) -> None:
    """A 2 MB gzip whose header says 1024x1024x512 took 5.2 GB; 32767^3 a MemoryError."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    header.set_sform(small_space.affine, code=1)
    path = tmp_path / "huge.nii.gz"
    with gzip.open(path, "wb") as f:
        f.write(header.binaryblock + b"\0" * 4 + b"\0" * 1000)  # a few voxels only
    with pytest.raises(ValueError, match=rf"image grid \({shape[0]}, .* does not match"):
        small_space.from_nifti_image(path)


def test_a_complex_valued_map_is_refused(small_space: BrainSpace, tmp_path) -> None:
    volume = np.ones(small_space.shape, dtype=np.complex64)
    path = tmp_path / "complex.nii.gz"
    nib.Nifti1Image(volume, small_space.affine).to_filename(path)
    with pytest.raises(ValueError, match=r"complex64 values; a map must hold real numbers"):
        small_space.from_nifti_image(path)


def test_from_nifti_mask_and_mask_image(small_space: BrainSpace, tmp_path) -> None:
    path = tmp_path / "mask.nii.gz"
    nib.save(small_space.mask_image(), path)
    space = BrainSpace.from_nifti(path)
    np.testing.assert_array_equal(space.mask, small_space.mask)
    np.testing.assert_array_equal(space.affine, small_space.affine)


def test_dict_round_trip(small_space: BrainSpace) -> None:
    state = json.loads(json.dumps(small_space.to_dict()))
    assert state["shape"] == [12, 14, 12]
    space = BrainSpace.from_dict(state)
    assert space.shape == small_space.shape
    assert space.n_voxels == small_space.n_voxels
    np.testing.assert_array_equal(space.mask, small_space.mask)
    np.testing.assert_array_equal(space.affine, small_space.affine)


@pytest.mark.parametrize(
    "mask, affine, message",
    [
        (np.ones((4, 4), dtype=bool), np.eye(4), "3-D"),
        (np.zeros((4, 4, 4), dtype=bool), np.eye(4), "no voxel"),
        (np.ones((4, 4, 4), dtype=bool), np.eye(3), "4x4"),
        (
            np.ones((4, 4, 4), dtype=bool),
            np.array([[4.0, 1.0, 0, 0], [0, 4.0, 0, 0], [0, 0, 4.0, 0], [0, 0, 0, 1]]),
            "diagonal",
        ),
        (np.ones((4, 4, 4), dtype=bool), np.diag([-4.0, 4.0, 4.0, 1.0]), "positive"),
    ],
)
def test_bad_spaces(mask: np.ndarray, affine: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BrainSpace(mask, affine)


def test_mm_to_voxel_and_membership(small_space: BrainSpace) -> None:
    points = np.array(
        [
            [-24.0, -28.0, -24.0],  # voxel (0, 0, 0): grid corner, outside the ellipsoid
            [0.0, 0.0, 0.0],  # voxel (6, 7, 6): brain
            [2.0, -1.0, 0.5],  # nearest voxel (6 or 7, 7, 6): brain
            [-25.9, 0.0, 0.0],  # voxel -0.475 -> 0: in the grid, mask edge
            [-26.1, 0.0, 0.0],  # voxel -0.525 -> -1: outside the grid
            [21.9, 0.0, 0.0],  # voxel 11.475 -> 11: in the grid
            [22.1, 0.0, 0.0],  # voxel 11.525 -> 12: outside the grid
            [0.0, 26.1, 0.0],  # y voxel 13.525 -> 14: outside the grid
            [0.0, 0.0, 500.0],
        ]
    )
    np.testing.assert_allclose(
        small_space.mm_to_voxel(points[:3]), [[0, 0, 0], [6, 7, 6], [6.5, 6.75, 6.125]]
    )
    contains = small_space.contains_mm(points)
    np.testing.assert_array_equal(contains, [1, 1, 1, 1, 0, 1, 0, 0, 0])
    in_mask = small_space.in_mask_mm(points)
    expected = [small_space.mask[0, 0, 0], True, True, small_space.mask[0, 7, 6]]
    expected += [False, small_space.mask[11, 7, 6], False, False, False]
    np.testing.assert_array_equal(in_mask, expected)
    assert not in_mask[0]
    assert small_space.in_mask_mm(np.zeros((0, 3))).shape == (0,)


def test_kernel_sigma(small_space: BrainSpace) -> None:
    sigma = small_space.kernel_sigma_voxels(9.0)
    np.testing.assert_allclose(sigma, 9.0 / (2 * math.sqrt(2 * math.log(2))) / 4.0)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="fwhm"):
            small_space.kernel_sigma_voxels(bad)


# -- renderer vs scipy ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_snapped_render_matches_scipy_reference(small_space, make_coordinates, seed) -> None:
    coords = make_coordinates(small_space, n_articles=6, max_tables=3, max_peaks=6, seed=seed)
    ids, maps = render_article_maps(coords, small_space, fwhm=9.0, snap_to_voxel=True)
    assert list(ids) == [f"a{i}" for i in range(6)]
    assert_maps_close(maps, scipy_reference(coords, small_space, 9.0, list(ids)))


def test_exact_render_on_voxel_centres_matches_scipy_reference(small_space) -> None:
    # peaks exactly on voxel centres (4 mm multiples from the origin): nothing to round
    coords = pd.DataFrame(
        {
            "id": ["a", "a", "a", "b", "b"],
            "table_id": ["1", "1", "2", "1", "1"],
            "x": [0.0, -4.0, 4.0, -8.0, -8.0],
            "y": [0.0, 8.0, -12.0, 4.0, 4.0],
            "z": [0.0, 4.0, -8.0, 0.0, 4.0],
        }
    )
    ids, maps = render_article_maps(coords, small_space, fwhm=9.0)
    _, snapped = render_article_maps(coords, small_space, fwhm=9.0, snap_to_voxel=True)
    np.testing.assert_allclose(maps, snapped, rtol=0, atol=1e-6 * maps.max())
    assert_maps_close(maps, scipy_reference(coords, small_space, 9.0, list(ids)))


def test_half_voxel_shift_moves_the_centroid_by_half_a_voxel(small_space) -> None:
    box = full_box(small_space)
    _, centred = render_article_maps(one_peak(0.0, 0.0, 0.0), box)
    np.testing.assert_allclose(centroid_voxel(box, centred[0]), [6, 7, 6], atol=1e-3)
    # +2 mm = half a 4 mm voxel along x and y (7.5 rounds to 8, 6.5 to 6: both directions)
    _, shifted = render_article_maps(one_peak(2.0, 2.0, 0.0), box)
    np.testing.assert_allclose(centroid_voxel(box, shifted[0]), [6.5, 7.5, 6], atol=1e-3)
    _, snapped = render_article_maps(one_peak(2.0, 2.0, 0.0), box, snap_to_voxel=True)
    np.testing.assert_allclose(centroid_voxel(box, snapped[0]), [6, 8, 6], atol=1e-3)
    # any sub-voxel position is rendered where it is, not at the voxel centre
    _, anywhere = render_article_maps(one_peak(1.3, -0.7, -1.9), box)
    expected = np.array([6 + 1.3 / 4, 7 - 0.7 / 4, 6 - 1.9 / 4])
    np.testing.assert_allclose(centroid_voxel(box, anywhere[0]), expected, atol=1e-3)
    # a symmetric kernel: the centred map is symmetric about its peak voxel
    volume = box.to_volume(centred[0])
    np.testing.assert_allclose(volume[6 - 4 : 6 + 5], volume[6 + 4 : 6 - 5 : -1], rtol=1e-5)


def test_fwhm_sets_the_width_not_the_mass(small_space) -> None:
    box = full_box(small_space)
    _, narrow = render_article_maps(one_peak(0.0, 0.0, 0.0), box, fwhm=9.0)
    _, wide = render_article_maps(one_peak(0.0, 0.0, 0.0), box, fwhm=12.0)
    assert wide.max() < narrow.max()
    # a density in voxel units: the mass of one peak is 1 when the grid holds the kernel
    assert narrow.sum() == pytest.approx(1.0, abs=1e-3)
    assert wide.sum() == pytest.approx(1.0, abs=1e-3)

    def spread(vector: np.ndarray) -> float:
        volume = box.to_volume(vector).astype(np.float64)
        x = np.arange(box.shape[0]) - 6.0
        return float(np.sqrt((volume.sum(axis=(1, 2)) * x**2).sum() / volume.sum()))

    sigma = box.kernel_sigma_voxels(9.0)[0]
    assert spread(narrow[0]) == pytest.approx(sigma, rel=1e-3)
    assert spread(wide[0]) == pytest.approx(sigma * 12.0 / 9.0, rel=1e-3)
    # on the ellipsoid mask the mass outside the brain is lost, never more than 1
    _, masked = render_article_maps(one_peak(0.0, 0.0, 0.0), small_space, fwhm=12.0)
    assert 0.9 < masked.sum() <= wide.sum() + 1e-6


def test_article_map_is_the_mean_of_its_table_maps(small_space, make_coordinates) -> None:
    coords = make_coordinates(small_space, n_articles=5, max_tables=4, max_peaks=4, seed=3)
    for snap in (False, True):
        ids, article_maps = render_article_maps(coords, small_space, snap_to_voxel=snap)
        tables, table_maps = render_table_maps(coords, small_space, snap_to_voxel=snap)
        assert list(tables.columns) == ["id", "table_id"]
        assert len(tables) == len(coords[["id", "table_id"]].drop_duplicates())
        assert table_maps.shape == (len(tables), small_space.n_voxels)
        for row, article_id in enumerate(ids):
            mine = table_maps[(tables["id"] == article_id).to_numpy()]
            np.testing.assert_allclose(
                article_maps[row], mine.mean(axis=0), rtol=0, atol=1e-6 * mine.max()
            )


def test_maps_dtype_shape_and_id_order(small_space) -> None:
    coords = pd.DataFrame(
        {
            "id": ["b", "a", "b", "c", "a"],
            "table_id": ["1", "1", "2", "x", "1"],
            "x": [0.0, 4.0, -4.0, 1.0, 2.0],
            "y": [0.0, 0.0, 4.0, 2.0, -3.0],
            "z": [0.0, 0.0, 0.0, 3.0, 4.0],
        }
    )
    ids, maps = render_article_maps(coords, small_space)
    assert list(ids) == ["b", "a", "c"]
    assert maps.dtype == np.float32
    assert maps.shape == (3, small_space.n_voxels)
    assert (maps >= 0).all() and (maps.max(axis=1) > 0).all()
    # each row is that article's map, whatever the other articles are
    for row, article_id in enumerate(ids):
        _, alone = render_article_maps(coords[coords["id"] == article_id], small_space)
        np.testing.assert_allclose(maps[row], alone[0], rtol=1e-6, atol=1e-9)
    tables, table_maps = render_table_maps(coords, small_space)
    assert tables.to_dict("list") == {"id": ["b", "a", "b", "c"], "table_id": ["1", "1", "2", "x"]}
    assert table_maps.dtype == np.float32
    # an empty frame renders to no maps
    ids, maps = render_article_maps(coords.iloc[:0], small_space)
    assert len(ids) == 0 and maps.shape == (0, small_space.n_voxels)


def test_peaks_outside_the_grid_are_dropped_with_a_warning(small_space) -> None:
    inside = pd.DataFrame(
        {
            "id": ["a", "a", "b"],
            "table_id": ["1", "1", "1"],
            "x": [0.0, 4.0, -8.0],
            "y": [0.0, 4.0, 8.0],
            "z": [0.0, 0.0, 4.0],
        }
    )
    # one far outside, one just beyond the lower face (voxel -0.6 rounds to -1)
    outside = pd.DataFrame(
        {"id": ["a", "b"], "table_id": ["1", "1"], "x": [100.0, -26.4], "y": [0.0, 0.0],
         "z": [0.0, 0.0]}
    )  # fmt: skip
    coords = pd.concat([inside.iloc[:1], outside.iloc[:1], inside.iloc[1:], outside.iloc[1:]])
    with pytest.warns(UserWarning, match=r"dropped 2 of 5 peaks outside the \(12, 14, 12\) grid"):
        ids, maps = render_article_maps(coords, small_space)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        expected_ids, expected = render_article_maps(inside, small_space)
    assert list(ids) == list(expected_ids) == ["a", "b"]
    np.testing.assert_allclose(maps, expected, rtol=1e-6, atol=1e-9)


def test_bad_coordinates_are_errors(small_space) -> None:
    good = one_peak(0.0, 0.0, 0.0)
    for value in (np.nan, np.inf):
        bad = pd.concat([good, one_peak(value, 0.0, 0.0)], ignore_index=True)
        with pytest.raises(ValueError, match="NaN or infinite"):
            render_article_maps(bad, small_space)
    for column in ("id", "table_id", "x", "y", "z"):
        with pytest.raises(ValueError, match=f"'{column}'"):
            render_article_maps(good.drop(columns=column), small_space)
        with pytest.raises(ValueError, match=f"'{column}'"):
            render_table_maps(good.drop(columns=column), small_space)
    with pytest.raises(ValueError, match="numeric"):
        render_article_maps(good.assign(x=["abc"]), small_space)
    with pytest.raises(ValueError, match="missing id"):
        render_article_maps(good.assign(id=[None]), small_space)


@pytest.mark.parametrize("missing", [None, np.nan])
def test_missing_table_id_is_an_error(small_space, missing) -> None:
    coords = pd.concat([one_peak(0.0, 0.0, 0.0), one_peak(4.0, 0.0, 0.0)], ignore_index=True)
    coords["table_id"] = ["t", missing]
    with pytest.raises(ValueError, match="missing id or table_id"):
        render_article_maps(coords, small_space)
    with pytest.raises(ValueError, match="missing id or table_id"):
        render_table_maps(coords, small_space)


def test_render_peak_groups_chunking_and_checks(small_space, make_coordinates) -> None:
    coords = make_coordinates(small_space, n_articles=7, max_tables=2, max_peaks=5, seed=4)
    group = pd.factorize(coords["id"])[0]
    xyz = coords[["x", "y", "z"]].to_numpy()
    weights = np.random.default_rng(5).uniform(0.5, 2.0, len(coords))
    default = render_peak_groups(group, xyz, weights, 7, small_space)
    assert default.dtype == np.float32 and default.shape == (7, small_space.n_voxels)
    for chunk in (1, 3, 10_000):
        chunked = render_peak_groups(group, xyz, weights, 7, small_space, chunk_peaks=chunk)
        np.testing.assert_allclose(chunked, default, rtol=1e-6, atol=1e-9)
    # shuffled peaks, groups with no peak at all (rows of zeros)
    order = np.random.default_rng(6).permutation(len(group))
    shuffled = render_peak_groups(group[order] + 1, xyz[order], weights[order], 9, small_space)
    np.testing.assert_allclose(shuffled[1:8], default, rtol=1e-6, atol=1e-9)
    assert (shuffled[0] == 0).all() and (shuffled[8] == 0).all()
    # weights scale linearly
    doubled = render_peak_groups(group, xyz, 2 * weights, 7, small_space, chunk_peaks=3)
    np.testing.assert_allclose(doubled, 2 * default, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="one entry per peak"):
        render_peak_groups(group[:-1], xyz, weights, 7, small_space)
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        render_peak_groups(group + 1, xyz, weights, 7, small_space)
    with pytest.raises(ValueError, match="fwhm"):
        render_peak_groups(group, xyz, weights, 7, small_space, fwhm=0.0)


def test_coordinates_frame_is_not_mutated(small_space: BrainSpace) -> None:
    corpus = make_corpus(small_space, n_articles=80)
    before = corpus.coordinates.copy()
    render_article_maps(corpus.coordinates, small_space)
    pd.testing.assert_frame_equal(corpus.coordinates, before)
