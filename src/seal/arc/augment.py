"""Grid transforms for test-time training and for voting, each with its inverse.

A transform maps a grid to a grid; `inverse` maps a transformed grid back, or returns None where
that is impossible (a "downscale" of a grid that is not made of equal blocks). Transforms apply to a
whole task, inputs and outputs alike, so the task's rule changes consistently.
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

    def apply(self, g: np.ndarray) -> np.ndarray: ...
    def inverse(self, g: np.ndarray) -> np.ndarray | None: ...

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


# The augmentation families a self-edit switches on (SEAL-SPEC §3). Translations and mirror
# concatenations of the reference are left out: the dihedral group already gives 7 views of a task.
BASIC = [Dihedral(n) for n in _DIHEDRAL if n != "identity"]
SIZE = [Upscale(2, 1), Upscale(1, 2), Upscale(2, 2)]
CHAIN = [Chain(Dihedral(n), Upscale(2, 2)) for n in ("rot90", "rot180", "transpose", "flip_lr")]
REPEAT = [Tile(2, 1), Tile(1, 2), Tile(2, 2)]
FAMILIES = {"basic": BASIC, "size": SIZE, "chain": CHAIN, "repeat": REPEAT}


def fits(g: np.ndarray) -> bool:
    return max(g.shape) <= MAX_SIDE
