"""seal: self-adapting language models (SEAL) as one library and CLI.

The library API (see seal/api.py): `load_config`, `load_model`, `start`, `resume`, `restem`,
`evaluate`, `table`, `learn`, `ask`, and the `Run`, `Table` and `plugin` objects behind them. Imported on first use,
so that `import seal` stays light.
"""

__version__ = "0.1.0"

_API = {
    "load_config": "seal.core.config", "load_model": "seal.core.models", "Run": "seal.core.runs",
    "Table": "seal.core.tables", "plugin": "seal.core.registry",
    "start": "seal.api", "resume": "seal.api", "restem": "seal.api", "evaluate": "seal.api", "table": "seal.api",
    "learn": "seal.api", "ask": "seal.api", "Learned": "seal.api",
}
__all__ = list(_API)


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'seal' has no attribute {name!r}")
