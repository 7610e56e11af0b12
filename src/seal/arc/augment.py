"""Grid transforms for test-time training and for voting, each with its inverse.

A transform maps a grid to a grid; `inverse` maps a transformed grid back, or returns None where
that is impossible (a "downscale" of a grid that is not made of equal blocks). Transforms apply to a
whole task, inputs and outputs alike, so the task's rule changes consistently. A transform that can
lose content (a translation pushes cells off the grid) says so: `invertible` is False, so it never
serves as a prediction view, and `keeps(g)` tells whether it loses nothing of a given grid (a task
is only translated when it keeps every grid).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seal.arc.grids import MAX_SIDE

# The eight symmetries of the square: name -> (forward, name of the inverse).
_DIHEDRAL = {
    "identity": (lambda g: g, "identity"),
    "rot90": (lambda g: np.rot90(g, 1), "rot270"),
    "rot180": (lambda g: np.rot90(g, 2), "rot180"),
    "rot270": (lambda g: np.rot90(g, 3), "rot90"),
    "flip_lr": (lambda g: g[:, ::-1], "flip_lr"),
    "flip_ud": (lambda g: g[::-1, :], "flip_ud"),
    "transpose": (lambda g: g.T, "transpose"),
    "anti_transpose": (lambda g: np.rot90(g, 2).T, "anti_transpose"),
}


class Transform:
    name: str
    invertible = True  # inverse(apply(g)) == g for every grid; False: not a prediction view

    def apply(self, g: np.ndarray) -> np.ndarray: ...
    def inverse(self, g: np.ndarray) -> np.ndarray | None: ...

    def keeps(self, g: np.ndarray) -> bool:
        """Whether `apply` loses nothing of g (inverse(apply(g)) == g)."""
        return True

    def __repr__(self) -> str:
        return self.name


@dataclass(frozen=True, repr=False)
class Dihedral(Transform):
    name: str

    def __post_init__(self):
        if self.name not in _DIHEDRAL:
            raise ValueError(f"unknown transform '{self.name}' (choose from {sorted(_DIHEDRAL)})")

    def apply(self, g):
        return np.ascontiguousarray(_DIHEDRAL[self.name][0](g))

    def inverse(self, g):
        return np.ascontiguousarray(_DIHEDRAL[_DIHEDRAL[self.name][1]][0](g))


@dataclass(frozen=True, repr=False)
class Upscale(Transform):
    """Every cell becomes an fy x fx block."""

    fy: int
    fx: int

    @property
    def name(self):
        return f"upscale{self.fy}x{self.fx}"

    def apply(self, g):
        return np.repeat(np.repeat(g, self.fy, axis=0), self.fx, axis=1)

    def inverse(self, g):
        if g.shape[0] % self.fy or g.shape[1] % self.fx:
            return None
        small = g[::self.fy, ::self.fx]
        return small if np.array_equal(self.apply(small), g) else None


@dataclass(frozen=True, repr=False)
class Tile(Transform):
    """The grid repeated ny times down and nx times across."""

    ny: int
    nx: int

    @property
    def name(self):
        return f"tile{self.ny}x{self.nx}"

    def apply(self, g):
        return np.tile(g, (self.ny, self.nx))

    def inverse(self, g):
        if g.shape[0] % self.ny or g.shape[1] % self.nx:
            return None
        one = g[:g.shape[0] // self.ny, :g.shape[1] // self.nx]
        return one if np.array_equal(self.apply(one), g) else None


@dataclass(frozen=True, repr=False)
class MirrorConcat(Transform):
    """The grid joined to its own mirror image: `side` says where the mirror goes (right, left, down, up)."""

    side: str

    def __post_init__(self):
        if self.side not in ("right", "left", "down", "up"):
            raise ValueError(f"unknown mirror side '{self.side}'")

    @property
    def name(self):
        return f"mirror_{self.side}"

    def apply(self, g):
        axis = 1 if self.side in ("right", "left") else 0
        mirror = np.flip(g, axis=axis)
        return np.ascontiguousarray(np.concatenate([g, mirror] if self.side in ("right", "down") else [mirror, g], axis=axis))

    def inverse(self, g):
        axis = 1 if self.side in ("right", "left") else 0
        if g.shape[axis] % 2:
            return None
        half = g.shape[axis] // 2
        first, second = (g[:, :half], g[:, half:]) if axis == 1 else (g[:half], g[half:])
        one = first if self.side in ("right", "down") else second
        return np.ascontiguousarray(one) if np.array_equal(self.apply(one), g) else None


@dataclass(frozen=True, repr=False)
class Translate(Transform):
    """Content moved dy rows down and dx columns right (negative: up, left) inside the same grid, the
    vacated cells filled with the background (0). Cells pushed off the grid are lost, so it is not
    invertible in general: it augments training data only, for tasks whose every grid `keeps` it."""

    dy: int
    dx: int
    invertible = False

    @property
    def name(self):
        return f"translate{self.dy:+d},{self.dx:+d}"

    @staticmethod
    def _shift(g, dy, dx):
        out = np.zeros_like(g)
        h, w = g.shape
        if abs(dy) >= h or abs(dx) >= w:
            return out
        src = g[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
        out[max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
        return out

    def apply(self, g):
        return self._shift(g, self.dy, self.dx)

    def inverse(self, g):
        return self._shift(g, -self.dy, -self.dx)

    def keeps(self, g):
        return np.array_equal(self.inverse(self.apply(g)), g)


@dataclass(frozen=True, repr=False)
class ColourMap(Transform):
    """Colours renamed by a permutation of 0-9 (the caller keeps 0, the background, fixed)."""

    perm: tuple[int, ...]

    @property
    def name(self):
        return "colours" + "".join(map(str, self.perm))

    def apply(self, g):
        return np.asarray(self.perm, dtype=np.int8)[g]

    def inverse(self, g):
        return np.argsort(np.asarray(self.perm)).astype(np.int8)[g]


@dataclass(frozen=True, repr=False)
class Chain(Transform):
    """`first`, then `second`."""

    first: Transform
    second: Transform

    @property
    def name(self):
        return f"{self.first.name}+{self.second.name}"

    @property
    def invertible(self):
        return self.first.invertible and self.second.invertible

    def keeps(self, g):
        return self.first.keeps(g) and self.second.keeps(self.first.apply(g))

    def apply(self, g):
        return self.second.apply(self.first.apply(g))

    def inverse(self, g):
        mid = self.second.inverse(g)
        return None if mid is None else self.first.inverse(mid)


def random_colour_map(rng: np.random.Generator, keep_background: bool = True) -> ColourMap:
    start = 1 if keep_background else 0
    rest = list(range(start, 10))
    rng.shuffle(rest)
    return ColourMap(tuple(range(start)) + tuple(int(c) for c in rest))


# The augmentation families a self-edit switches on (SEAL-SPEC §3): basic = the 7 other symmetries
# of the square, the 4 mirror concatenations and one-cell translations in 4 directions; size = the
# upscales; chain = every symmetry followed by each upscale; repeat = tilings.
SYMMETRIES = [Dihedral(n) for n in _DIHEDRAL if n != "identity"]
MIRRORS = [MirrorConcat(side) for side in ("right", "left", "down", "up")]
TRANSLATIONS = [Translate(1, 0), Translate(-1, 0), Translate(0, 1), Translate(0, -1)]
BASIC = SYMMETRIES + MIRRORS + TRANSLATIONS
SIZE = [Upscale(2, 1), Upscale(1, 2), Upscale(2, 2)]
CHAIN = [Chain(s, up) for s in SYMMETRIES for up in SIZE]
REPEAT = [Tile(2, 1), Tile(1, 2), Tile(2, 2)]
FAMILIES = {"basic": BASIC, "size": SIZE, "chain": CHAIN, "repeat": REPEAT}


def fits(g: np.ndarray) -> bool:
    return max(g.shape) <= MAX_SIDE
