"""Figures drawn off-screen, shared by the training callbacks and `text2brain query`.

Kept free of Lightning and torch so `text2brain query` stays light to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(size: tuple[float, float], dpi: float = 100) -> Figure:
    """A matplotlib Figure on an Agg canvas, outside pyplot (nothing to close, no GUI).

    A standalone Figure leaves the caller's matplotlib backend and open figures alone, which
    matters inside a notebook.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig
