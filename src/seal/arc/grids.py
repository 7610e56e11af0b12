"""ARC grids as numpy arrays, and their compact text form.

A grid is an (h, w) array of colours 0-9, 1 <= h, w <= 30. As text it is one line per row, one digit
per cell and no separators: the embedded model's tokenizer spends one token per digit and one per
newline, where digits separated by spaces would cost two per cell.
"""

from __future__ import annotations

import re

import numpy as np

MAX_SIDE = 30
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() also accepts '²' or '٣', which int() may refuse


class GridError(ValueError):
    """A grid in an input file that is not a rectangle of colours 0-9."""


def as_grid(value, where: str = "grid") -> np.ndarray:
    """A validated grid from nested lists (or an array); raises GridError naming `where`."""
    try:
        g = np.asarray(value)
    except ValueError as err:  # ragged rows
        raise GridError(f"{where}: rows of different lengths") from err
    if g.ndim != 2 or g.size == 0:
        raise GridError(f"{where}: expected a non-empty list of rows, got shape {g.shape}")
    if not np.issubdtype(g.dtype, np.integer) or g.min() < 0 or g.max() > 9:
        raise GridError(f"{where}: cells must be integers 0-9")
    if max(g.shape) > MAX_SIDE:
        raise GridError(f"{where}: {g.shape[0]}x{g.shape[1]} is larger than {MAX_SIDE}x{MAX_SIDE}")
    return g.astype(np.int8)


def to_text(g: np.ndarray) -> str:
    return "\n".join("".join(str(int(v)) for v in row) for row in g)


def parse(text: str) -> np.ndarray | None:
    """The grid at the start of `text` (model output), or None when there is none: a wrong attempt,
    never an exception. The grid is the run of digit lines at the start (spaces between digits are
    tolerated); it ends at the first line that is not ASCII digits, so a model that goes on to write
    the next "input:" still answers. Rows of unequal length (a cut-off answer) are no grid."""
    lines = []
    for line in text.strip().split("\n"):
        line = line.replace(" ", "")
        if not _DIGITS.fullmatch(line):
            break
        lines.append(line)
    if not lines or len(lines) > MAX_SIDE:
        return None
    width = len(lines[0])
    if width > MAX_SIDE or any(len(line) != width for line in lines):
        return None
    return np.array([[int(c) for c in line] for line in lines], dtype=np.int8)


def key(g: np.ndarray) -> tuple:
    """A hashable identity of a grid (shape and cells), for voting and deduplication."""
    return (g.shape, g.tobytes())


def n_tokens(g: np.ndarray) -> int:
    """Text length of a grid in the embedded tokenizer's tokens (a digit per cell, a newline per row)."""
    return g.shape[0] * (g.shape[1] + 1)
