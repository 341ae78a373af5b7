"""The requestor library's version (what `enable_default_logger` prints)."""

__version__ = "0.1.0"
