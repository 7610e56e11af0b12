"""Run directories: resolved config, metadata, and one JSONL record per finished piece of work.

A run never overwrites another: each command creates a new directory. Records are appended and
flushed to disk as each piece of work finishes, keyed so that `--resume` skips what is done; a kill
at any moment loses at most the piece in flight.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from seal.core.config import ConfigError, Section, dump_config, load_config
from seal.core.faults import crash_point, die, reached

PACKAGES = ["seal", "torch", "transformers", "peft", "pydantic", "numpy"]
RECORDS = "records.jsonl"


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def source_commit() -> dict | None:
    """The git commit of the seal source this process runs, and whether it had uncommitted changes
    (None: not a git checkout, e.g. an installed package). Recorded in meta.json for provenance."""
    import subprocess

    source = Path(__file__).resolve().parents[3]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=10)
        if commit.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "src"], cwd=source,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return dict(commit=commit.stdout.strip(), dirty=bool(dirty.stdout.strip()))


def write_atomic(path: Path, text: str) -> None:
    """Write a whole file or nothing: to a temporary file beside it, flushed to disk, then renamed over
    it (a kill leaves the old file or the new one, never a torn one)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    crash_point("metadata-write")  # tests: killed with the new file written beside the old one
    os.replace(tmp, path)


class Run:
    def __init__(self, path: Path, config: Section):
        self.path = path
        self.config = config
        self._records: dict[str, dict] = {}
        self._good_end: int | None = None  # where the last complete record ends, when a torn tail follows it
        self._written = 0  # records in the file: the step at which experiment trackers log the next one
        self._trackers = None  # core/tracking.py, opened at the first append (a run only read opens none)
        file = path / RECORDS
        if file.exists():
            self._load(file)

    def _load(self, file: Path) -> None:
        """Read every complete record. A kill in the middle of a write leaves a torn last line: it is
        redone, and cut off before this run writes again (`append`), so that the next record starts on
        a line of its own. (A line torn by a kill and continued by a later append, as files written
        before that fix can hold, gives back the record that was appended to it.)"""
        data = file.read_bytes()
        offset = 0
        pieces = data.split(b"\n")
        for n, raw in enumerate(pieces, 1):
            end = offset + len(raw)
            last = n == len(pieces)  # no newline after it: the write did not finish
            if raw.strip():
                record = None if last else _parse(raw)
                if record is None:
                    if last:
                        print(f"warning: {file}:{n} is incomplete and will be redone", file=sys.stderr)
                        self._good_end = offset
                        break
                    print(f"warning: {file}:{n} is not a record and is skipped", file=sys.stderr)
                else:
                    self._records[record["key"]] = record
                    self._written += 1
            offset = end + 1
    @classmethod
    def create(cls, config: Section, command: str, inputs: dict | None = None) -> Run:
        """A new run directory under `config.runs_dir`; `inputs`: what the command was given besides its
        configuration (other run directories), kept in meta.json so that --resume uses the same."""
        root = Path(config.runs_dir)
        root.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for n in range(1, 1000):
            path = root / (f"{command}-{stamp}" + (f"-{n}" if n > 1 else ""))
            try:
                path.mkdir()  # atomic: two runs started in the same second get different names
                break
            except FileExistsError:
                continue
        meta = dict(command=command, argv=sys.argv, seed=config.seed, started=time.strftime("%Y-%m-%dT%H:%M:%S"),
                    host=platform.node(), versions=package_versions(), source=source_commit(), inputs=inputs or {})
        write_atomic(path / "meta.json", json.dumps(meta, indent=2))
        write_atomic(path / "config.yaml", dump_config(config))  # last: what makes the folder a run directory
        return cls(path, config)

    @classmethod
    def resume(cls, path: str | Path) -> Run:
        path = Path(path)
        if not (path / "config.yaml").is_file():
            raise ConfigError(f"--resume {path}: not a run directory (no config.yaml)")
        return cls(path, load_config(path / "config.yaml"))

    @property
    def meta(self) -> dict:
        return json.loads((self.path / "meta.json").read_text())

    @property
    def command(self) -> str:
        return self.meta["command"]

    def get(self, key: str) -> dict | None:
        return self._records.get(key)

    def records(self, kind: str | None = None) -> list[dict]:
        return [r for r in self._records.values() if kind is None or r["kind"] == kind]

    def append(self, kind: str, key: str, **fields) -> dict:
        record = {"kind": kind, "key": key, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **fields}
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with open(self.path / RECORDS, "a", encoding="utf-8") as f:
            if self._good_end is not None:  # a torn tail from a kill: cut it off before writing after it
                f.truncate(self._good_end)
                self._good_end = None
            if reached("record-write"):  # tests: die with half a record written
                f.write(line[:len(line) // 2])
                f.flush()
                die()
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self._records[key] = record
        self._written += 1
        crash_point("record")
        self.trackers.record(record, self._written)
        return record

    @property
    def trackers(self):
        """The run's experiment trackers (logging.backend), opened on first use."""
        if self._trackers is None:
            from seal.core.tracking import Trackers

            self._trackers = Trackers(self)
        return self._trackers

    def track_table(self, name: str, table) -> None:
        """Hand a printed comparison table to the trackers (once per state of the records)."""
        if self.config.logging.trackers:
            self.trackers.table(name, table, self._written)

    def close(self) -> None:
        """Close the trackers (flushing what they hold); the records themselves are always on disk."""
        if self._trackers is not None:
            self._trackers.close()

    def cached(self, kind: str, key: str, compute) -> dict:
        """The record under `key`, computing and appending it first if this run has none yet."""
        found = self.get(key)
        if found is not None:
            return found
        return self.append(kind, key, **compute())


def _parse(raw: bytes) -> dict | None:
    """One record line, or the record at its end when a torn write was continued on the same line."""
    for start in (0, raw.rfind(b'{"kind": ')):
        if start < 0:
            continue
        try:
            record = json.loads(raw[start:])
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(record, dict) and "key" in record and "kind" in record:
            return record
    return None


class RunSet:
    """Several runs of one domain and model, read as one for a table over all of their contexts (tasks
    evaluated in two runs, e.g. a run that added long tasks later). Read-only: it has the records of
    every run and the first run's configuration. A piece of work recorded in two of the runs (the same
    record key under eval/) would be counted twice, so it is refused, naming both runs."""

    def __init__(self, paths: list[str | Path]):
        missing = [str(p) for p in paths if not (Path(p) / "config.yaml").is_file()]
        if missing:
            raise ConfigError(f"{missing[0]}: not a run directory (no config.yaml)")
        self.runs = [Run.resume(p) for p in paths]
        first = self.runs[0]
        self.config, self.path = first.config, None
        seen: dict[str, Path] = {}
        for run in self.runs:
            for field, value, want in [("domain", run.config.domain, first.config.domain),
                                       ("model.name", run.config.model.name, first.config.model.name)]:
                if value != want:
                    raise ConfigError(f"{run.path}: {field} is {value!r}, {first.path} has {want!r}; "
                                      "a table joins runs of one domain and model")
            for key in run._records:
                if key.startswith("eval/"):
                    if key in seen:
                        raise ConfigError(f"{run.path} and {seen[key]} both recorded {key}: a table joins runs over different contexts")
                    seen[key] = run.path

    def get(self, key: str) -> dict | None:
        return next((r for run in self.runs if (r := run.get(key)) is not None), None)

    def records(self, kind: str | None = None) -> list[dict]:
        return [r for run in self.runs for r in run.records(kind)]
