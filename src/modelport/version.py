"""The package version, in a leaf module: any layer can report it without importing the package root."""

__version__ = "0.1.0"
