"""ARC grids as numpy arrays, and their compact text form.

A grid is an (h, w) array of colours 0-9, 1 <= h, w <= 30. As text it is one line per row, one digit
per cell and by default no separator: the embedded model's tokenizer spends one token per digit and
one per newline, where digits separated by spaces would cost two per cell. A tokenizer that merges
digits (Llama-3 reads up to three as one token) would see cells and tokens no longer line up, so such a
model gets a space between cells (`data.cell_separator`, `separator` below): every cell then starts a
token of its own.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

from seal.core.errors import ConfigError

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


def to_text(g: np.ndarray, sep: str = "") -> str:
    return "\n".join(sep.join(str(int(v)) for v in row) for row in g)


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
    """Text length of a grid in the embedded tokenizer's tokens (a digit per cell, a newline per row);
    `token_length` measures it in any tokenizer's."""
    return g.shape[0] * (g.shape[1] + 1)


def token_length(tokenizer, g: np.ndarray, sep: str = "") -> int:
    return len(tokenizer(to_text(g, sep), add_special_tokens=False)["input_ids"])


SEPARATORS = {"none": "", "space": " "}
# Every digit beside every other digit, in rows of several lengths: what a tokenizer merges shows here.
_PROBE = np.array([[(i * 7 + j * 3 + (i * j) % 5) % 10 for j in range(10)] for i in range(10)], dtype=np.int8)


def merged_digits(tokenizer, sep: str) -> list[str]:
    """The tokens of the probe grid's text that hold more than one cell's digit (none: cells align)."""
    ids = tokenizer(to_text(_PROBE, sep), add_special_tokens=False)["input_ids"]
    pieces = [tokenizer.decode([i]) for i in ids]
    return [p for p in pieces if sum(c.isdigit() for c in p) > 1]


def separator(tokenizer, setting: str, model: str) -> str:
    """The text between a row's cells for this tokenizer: `setting` is data.cell_separator (auto: none
    where every digit is a token of its own, else a space). Raises ValueError, naming the model and what
    to set, where the cells would not line up with tokens."""
    choices = ["none", "space"] if setting == "auto" else [setting]
    for choice in choices:
        if not merged_digits(tokenizer, SEPARATORS[choice]):
            return SEPARATORS[choice]
    merged = merged_digits(tokenizer, SEPARATORS[choices[0]])
    if setting == "none":
        hint = "set data.cell_separator: space (or auto)"
    else:
        hint = "ARC needs a tokenizer that keeps each grid cell's digit apart"
    raise ValueError(f"model '{model}': its tokenizer reads several grid cells as one token "
                     f"(e.g. {merged[0]!r}) with data.cell_separator: {setting}; {hint}")


# --- for the configured model (its tokenizer is read once) -------------------------------------

def token_counter(config):
    """The length of a text in the configured model's tokens."""
    from seal.core.models import token_counter as counter

    return counter(config.model.name)


@lru_cache(maxsize=8)
def _separator(model: str, setting: str) -> str:
    from seal.core.models import load_tokenizer

    try:
        return separator(load_tokenizer(model), setting, model)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def grid_separator(config) -> str:
    """The text between a grid row's cells for the configured model (data.cell_separator, resolved
    against its tokenizer); a ConfigError where cells would not line up with tokens."""
    return _separator(config.model.name, config.data.cell_separator)
