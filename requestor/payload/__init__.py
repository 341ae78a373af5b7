"""Payloads: what a service needs a provider to run (for the VM runtime, an image and minimums)."""

from __future__ import annotations


class Payload:
    """Base of payload definitions: `requestor.payload.vm.repo` builds the one for containers; a
    dataclass subclass may declare Golem constraints with `requestor.props.base.constraint`
    (frozen or not: this base has no fields)."""
