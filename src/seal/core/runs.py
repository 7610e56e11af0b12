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

from seal.config import Config, ConfigError, dump_config, load_config

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


class Run:
    def __init__(self, path: Path, config: Config):
        self.path = path
        self.config = config
        self._records: dict[str, dict] = {}
        file = path / RECORDS
        if file.exists():
            for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    # Only the last line can be torn (a kill mid-write); it is simply redone.
                    print(f"warning: {file}:{n} is incomplete and will be redone", file=sys.stderr)
                    continue
                self._records[record["key"]] = record

    @classmethod
    def create(cls, config: Config, command: str) -> "Run":
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
        (path / "config.yaml").write_text(dump_config(config), encoding="utf-8")
        meta = dict(command=command, argv=sys.argv, seed=config.seed, started=time.strftime("%Y-%m-%dT%H:%M:%S"),
                    host=platform.node(), versions=package_versions())
        (path / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        return cls(path, config)

    @classmethod
    def resume(cls, path: str | Path) -> "Run":
        path = Path(path)
        if not (path / "config.yaml").is_file():
            raise ConfigError(f"--resume {path}: not a run directory (no config.yaml)")
        return cls(path, load_config(path / "config.yaml"))

    @property
    def command(self) -> str:
        return json.loads((self.path / "meta.json").read_text())["command"]

    def get(self, key: str) -> dict | None:
        return self._records.get(key)

    def records(self, kind: str | None = None) -> list[dict]:
        return [r for r in self._records.values() if kind is None or r["kind"] == kind]

    def append(self, kind: str, key: str, **fields) -> dict:
        record = {"kind": kind, "key": key, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **fields}
        with open(self.path / RECORDS, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._records[key] = record
        return record

    def cached(self, kind: str, key: str, compute) -> dict:
        """The record under `key`, computing and appending it first if this run has none yet."""
        found = self.get(key)
        if found is not None:
            return found
        return self.append(kind, key, **compute())
