"""Payloads: what a service needs a provider to run (for the VM runtime, an image and minimums)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Payload:
    """Base of payload definitions; `requestor.payload.vm.repo` builds the one used here."""
