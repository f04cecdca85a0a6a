"""Impasto: neural style transfer for GIMP, served from your own GPU."""

__version__ = "0.1.0"
