"""The package version, in one place: ``pyproject.toml`` and ``diffuspec.__version__`` both read it."""

__version__ = "0.1.0"
