"""The errors a user sees as one line (the command line's guard prints them and exits with 2). Here, in
a module that imports nothing, so that any module can raise them."""


class ConfigError(ValueError):
    """A configuration file, field, override or input (a path, a run directory) that cannot be used."""
