"""Matplotlib for refopt's figures: its import, the file formats a figure is written in, and atomic saving.

``pyplot()`` imports matplotlib (optional: the 'scripts' extra) with the non-interactive Agg backend and
returns ``matplotlib.pyplot``, or None after one line on stderr saying that it is missing and what was not
drawn. ``plot_format(path)`` is the format of a figure file from its extension (png without one) and
refuses, in a ValueError naming the option, one outside ``PLOT_FORMATS``, the formats matplotlib's Agg
canvas writes without anything else installed, so that a command checks ``--plot`` before any work.
``save_figure(fig, path)`` writes a figure through ``serialize.atomic_path`` (an interrupted write leaves no
half-written file under the final name) and closes it. Used by ``compare``'s plots and ``analysis.report``'s
density plot.
"""
from __future__ import annotations

import os
import sys

from .serialize import atomic_path

__all__ = ["PLOT_FORMATS", "pyplot", "plot_format", "save_figure"]

# Agg's formats (``FigureCanvasBase.get_supported_filetypes``) less pgf (it needs LaTeX) and the raw buffers
# (raw, rgba: not image files a viewer opens).
PLOT_FORMATS = ("png", "pdf", "svg", "svgz", "eps", "ps", "jpg", "jpeg", "tif", "tiff", "webp", "gif", "avif")


def pyplot(what: str = "plot"):
    """``matplotlib.pyplot`` on the Agg backend, or None (with "matplotlib is not installed; no ``what``
    written" on stderr) without matplotlib."""
    try:
        import matplotlib  # noqa: PLC0415 (optional, from the 'scripts' extra)
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        print(f"refopt: matplotlib is not installed; no {what} written (pip install 'refopt[scripts]')",
              file=sys.stderr)
        return None
    return plt


def plot_format(path: str, option: str = "plot") -> str:
    """The format of the figure file ``path``: its extension, lower case (png when it has none); ValueError
    naming ``option`` for one outside ``PLOT_FORMATS``."""
    ext = os.path.splitext(path)[1][1:].lower()
    if not ext:
        return "png"
    if ext not in PLOT_FORMATS:
        raise ValueError(f"{option} {path}: format {ext!r} is not one refopt writes; use one of "
                         f"{', '.join(PLOT_FORMATS)}")
    return ext


def save_figure(fig, path: str, dpi: int = 110) -> str:
    """Write ``fig`` to ``path`` atomically in ``plot_format(path)``, close it, and return ``path``."""
    import matplotlib.pyplot as plt  # noqa: PLC0415 (a figure exists: matplotlib is installed)

    fmt = plot_format(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=fmt)
    finally:
        plt.close(fig)
    return path
