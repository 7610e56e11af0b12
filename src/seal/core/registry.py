"""The registry of domains: a domain's name (the `domain` field of a configuration) to the module that
holds its plugin. The configuration loader asks it for a domain's configuration class; the command
line, the report and the library API for the plugin. It imports a plugin module only when asked, so
that nothing here imports the core's heavier modules."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from seal.core.errors import ConfigError

if TYPE_CHECKING:
    from seal.core.config import Section
    from seal.core.domain import DomainPlugin

# domain name -> the module holding its PLUGIN (a seal.core.domain.DomainPlugin)
DOMAINS = {"knowledge": "seal.knowledge.plugin", "arc": "seal.arc.plugin"}


def plugin(name: str) -> DomainPlugin:
    """The plugin of a domain, by name."""
    if name not in DOMAINS:
        raise ConfigError(f"domain '{name}': choose one of {', '.join(DOMAINS)}")
    return importlib.import_module(DOMAINS[name]).PLUGIN


def config_class(domain: str) -> type[Section]:
    """The root configuration class of a domain."""
    return plugin(domain).config_class()
