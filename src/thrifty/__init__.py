"""thrifty: make large-model work cheaper and say what it cost."""

__version__ = "0.1.0"
