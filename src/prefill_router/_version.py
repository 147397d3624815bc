"""The installed distribution's version (pyproject.toml's, read from the package metadata)."""

from importlib import metadata

try:
    __version__: str = metadata.version("prefill-router")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
