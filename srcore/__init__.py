"""srcore: lightweight single-image super-resolution models, data, training and evaluation."""

__version__ = "0.1.0"
