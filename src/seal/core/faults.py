"""Crash points for the kill-anywhere tests: a process that dies at a named moment, as a SIGKILL would.

`SEAL_CRASH_AT="name:n"` (an environment variable, unset in normal use) makes the n-th time this
process reaches `crash_point(name)` kill the process on the spot, with SIGKILL, so no cleanup runs.
Named points: `record` (just after a record is on disk), `record-write` (half of a record written),
`adapter-save` (an adapter written to its temporary folder, not yet renamed into place), `teacher-save`
(a teacher distribution written to its temporary file, not yet renamed into place), `metadata-write`
(a run's config.yaml or meta.json written beside the old one, not yet renamed over it).
"""

from __future__ import annotations

import os
import signal

_hits: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    spec = os.environ.get("SEAL_CRASH_AT")
    if not spec:
        return None
    name, _, n = spec.partition(":")
    return name, int(n or 1)


def reached(name: str) -> bool:
    """Count one pass through point `name`; True when this is the pass that must crash."""
    target = _target()
    if target is None or target[0] != name:
        return False
    _hits[name] = _hits.get(name, 0) + 1
    return _hits[name] == target[1]


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def crash_point(name: str) -> None:
    if reached(name):
        die()
