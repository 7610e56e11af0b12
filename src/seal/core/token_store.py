"""Training sequences kept on disk, so that an update on many documents holds only the batch in hand.

Continued pretraining pools the sequences of n passages; at n = 2,000 that is tens of thousands of
sequences. `TokenStore.write` tokenizes a stream of texts straight into one flat file of token ids
(uint32) and keeps only their offsets; reading an example maps the file and slices it. The store is a
sequence of `Example`s (loss on every token), so `training.train` takes it like a list.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from seal.core.examples import Example


class TokenStore:
    def __init__(self, path: str | Path):
        path = Path(path)
        self.path = path
        self.offsets = np.load(path / "offsets.npy")  # n + 1 positions into tokens.bin
        size = int(self.offsets[-1])
        self.tokens = np.memmap(path / "tokens.bin", dtype=np.uint32, mode="r", shape=(size,)) if size else \
            np.zeros(0, dtype=np.uint32)

    @classmethod
    def write(cls, path: str | Path, tokenizer, texts: Iterable[str], max_len: int) -> TokenStore:
        """Tokenize `texts` one at a time into `path` (a new directory), each cut to `max_len` tokens."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        offsets = [0]
        with open(path / "tokens.bin", "wb") as f:
            for text in texts:
                ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_len]
                f.write(np.asarray(ids, dtype=np.uint32).tobytes())
                offsets.append(offsets[-1] + len(ids))
        np.save(path / "offsets.npy", np.asarray(offsets, dtype=np.int64))
        return cls(path)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> Example:
        if not 0 <= i < len(self):
            raise IndexError(i)
        ids = self.tokens[self.offsets[i]:self.offsets[i + 1]].astype(np.int64).tolist()
        return Example(ids, list(ids))

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])
