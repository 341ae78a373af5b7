"""Helpers for services: reaching their ports from the requestor's machine."""
