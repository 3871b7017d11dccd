"""The installed distribution's version, read from its metadata.

pyproject.toml is the one place the version is written; the package root
(``__version__``), the ``--version`` option and the telemetry's instrumentation scope
read it here. This module imports nothing from sessionstore, so that those three can
use it without importing one another.
"""

from __future__ import annotations

import functools
from importlib.metadata import PackageNotFoundError, version

__all__ = ["installed_version"]

#: Said when there is no metadata to read: a source tree put on ``sys.path`` without
#: being installed. A valid version (PEP 440), and plainly not a release.
UNKNOWN = "0+unknown"


@functools.cache
def installed_version() -> str:
    """The version of the installed ``sessionstore`` distribution (``0+unknown`` when the
    package is imported from a source tree that was never installed)."""
    try:
        return version("sessionstore")
    except PackageNotFoundError:
        return UNKNOWN
