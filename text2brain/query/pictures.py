"""The optional pictures of a query's map: a glass-brain PNG and an interactive HTML viewer.

Rendering takes far longer than predicting, hence opt-in; nilearn is imported on use only.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from text2brain.outputs import atomic_output, write_text

#: Longest query shown as a picture's title.
TITLE_LENGTH = 80
#: numpy's note on nilearn's automatic threshold of a masked map (harmless, once per picture).
_MASKED_PARTITION = ".*'partition' will ignore the 'mask'"


def _title(query: str) -> str:
    return query if len(query) <= TITLE_LENGTH else query[: TITLE_LENGTH - 3] + "..."


def write_png(image: Any, query: str, path: Path, threshold: float | None = None) -> Path:
    """A glass-brain view, drawn on a figure of its own (`new_figure`: no GUI, no leak)."""
    with atomic_output(path) as tmp:
        save_glass_brain(image, query, tmp, threshold)
    return path


def save_glass_brain(image: Any, query: str, target: Any, threshold: float | None = None) -> None:
    """Draw the glass-brain PNG of `write_png` into a path or a binary file object.

    `threshold`: values at or below it are not drawn (None: nilearn's automatic threshold);
    a thresholded statistical map gives its threshold, so that its zeros stay transparent.
    """
    from nilearn import plotting

    from text2brain.figures import new_figure

    figure = new_figure((8, 3))
    with warnings.catch_warnings():
        # Harmless and repeated for every picture: glyphs (CJK, emoji) that the default font
        # lacks in a title, and the masked-array note.
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        warnings.filterwarnings("ignore", message=_MASKED_PARTITION)
        options = {} if threshold is None else {"threshold": threshold}
        plotting.plot_glass_brain(
            image, figure=figure, title=_title(query), plot_abs=False, colorbar=True, **options
        )
        figure.savefig(target, dpi=100, format="png")
    figure.clear()


def write_html(image: Any, query: str, path: Path) -> Path:
    """An interactive slice viewer: a standalone HTML page, no server needed.

    Written from `get_standalone()`: nilearn 0.14's `save_as_html` writes the page wrapped in
    an <iframe srcdoc=...> fragment instead of the page itself.
    """
    from nilearn import plotting

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_MASKED_PARTITION)
        view = plotting.view_img(image, title=_title(query))
    return write_text(path, view.get_standalone())
