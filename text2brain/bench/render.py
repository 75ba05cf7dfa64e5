"""Render every NeuroQuery article map and compare with a per-table scipy reference.

The reference is what NeuroQuery does: round each peak to its voxel, build one count image
per table, smooth it on the full grid with scipy.ndimage.gaussian_filter, average the tables
of an article. text2brain evaluates the Gaussian at the exact peak position instead; with
`snap_to_voxel=True` it rounds like the reference, which checks the two kernels agree.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.ndimage import gaussian_filter

from text2brain.bench.machine import describe_machine, peak_rss_gb
from text2brain.brain import (
    FWHM_TO_SIGMA,
    TRUNCATE,
    BrainSpace,
    render_article_maps,
)
from text2brain.corpus import load_neuroquery
from text2brain.metrics import pairwise_pearson


def scipy_reference_maps(coordinates, space: BrainSpace, fwhm: float, ids: np.ndarray):
    """Yield (index, article map) for `ids`, per-table count images smoothed with scipy."""
    sigma = fwhm * FWHM_TO_SIGMA / space.voxel_size
    ijk = np.rint(space.mm_to_voxel(coordinates[["x", "y", "z"]].to_numpy())).astype(int)
    by_article = coordinates.assign(i=ijk[:, 0], j=ijk[:, 1], k=ijk[:, 2]).groupby("id", sort=False)
    for row, article_id in enumerate(ids):
        peaks = by_article.get_group(article_id)
        tables = []
        for _, table in peaks.groupby("table_id", sort=False):
            counts = np.zeros(space.shape)
            np.add.at(counts, (table["i"], table["j"], table["k"]), 1.0)
            tables.append(gaussian_filter(counts, sigma, truncate=TRUNCATE)[space.mask])
        yield row, np.mean(tables, axis=0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m text2brain.bench render", description=__doc__)
    parser.add_argument("--data-dir", default=None, help="NeuroQuery files (default: env/cache)")
    parser.add_argument("--fwhm", type=float, default=9.0)
    parser.add_argument(
        "--reference-articles",
        type=int,
        default=None,
        help="time the scipy reference on this many random articles and extrapolate "
        "(default: all, about a minute)",
    )
    args = parser.parse_args(argv)

    print(f"machine: {describe_machine()}")
    t = time.perf_counter()
    corpus = load_neuroquery(args.data_dir)
    space = BrainSpace.neuroquery(args.data_dir)
    coords = corpus.coordinates
    n_tables = len(coords[["id", "table_id"]].drop_duplicates())
    print(
        f"corpus: {len(corpus):,} articles, {n_tables:,} tables, {len(coords):,} peaks "
        f"(loaded in {time.perf_counter() - t:.1f} s)"
    )
    rss_before = peak_rss_gb()
    timings = []
    for _ in range(3):
        t = time.perf_counter()
        ids, maps = render_article_maps(coords, space, args.fwhm)
        timings.append(time.perf_counter() - t)
        del maps
    t = time.perf_counter()
    ids, maps = render_article_maps(coords, space, args.fwhm)
    timings.append(time.perf_counter() - t)
    fast = float(np.median(timings))
    print(
        f"text2brain render: {fast:.2f} s for all article maps (median of 4, "
        f"{len(ids) / fast:,.0f} maps/s); peak RSS {peak_rss_gb():.2f} GB "
        f"({rss_before:.2f} GB before rendering)"
    )
    _, snapped = render_article_maps(coords, space, args.fwhm, snap_to_voxel=True)

    rows = np.arange(len(ids))
    if args.reference_articles is not None and args.reference_articles < len(ids):
        rows = np.sort(np.random.default_rng(0).choice(len(ids), args.reference_articles, False))
    reference = np.empty((len(rows), space.n_voxels), dtype=np.float32)
    t = time.perf_counter()
    for out_row, (_, ref) in enumerate(scipy_reference_maps(coords, space, args.fwhm, ids[rows])):
        reference[out_row] = ref
    slow = (time.perf_counter() - t) * len(ids) / len(rows)
    extrapolated = " (extrapolated from a sample)" if len(rows) < len(ids) else ""
    print(f"scipy per-table reference: {slow:.1f} s for all article maps{extrapolated}")
    print(f"speed ratio: {slow / fast:.1f}x faster than the reference")

    r_snap = pairwise_pearson(snapped[rows], reference)
    r_exact = pairwise_pearson(maps[rows], reference)
    q = [0, 1, 5, 50]
    print(
        "Pearson r per article vs reference, peaks snapped to voxels (same inputs as the "
        f"reference): min {r_snap.min():.5f}, median {np.median(r_snap):.5f}"
        f" -> {'PASS' if r_snap.min() >= 0.99 else 'FAIL'} (>= 0.99)"
    )
    print(
        "Pearson r per article vs reference, exact peak positions (text2brain's default): "
        + ", ".join(f"p{p} {np.percentile(r_exact, p):.4f}" for p in q)
        + f"; {np.mean(r_exact >= 0.99):.1%} of articles >= 0.99"
    )
    print(
        "why exact differs: the reference moves every peak to its nearest 4 mm voxel centre, "
        "up to 2 mm per axis (3.5 mm in 3-D) against a kernel sigma of 3.8 mm; one peak moved "
        "by d correlates with itself at about exp(-d^2 / (4 sigma^2)), so few-peak articles "
        "differ most; the exact map is the one that matches the reported coordinates."
    )


if __name__ == "__main__":
    main()
