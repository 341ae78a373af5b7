"""Helpers built on the Service API, as yapapi ships them in yapapi.contrib."""
