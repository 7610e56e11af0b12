"""seal: self-adapting language models (SEAL) as one library and CLI."""

__version__ = "0.1.0"
