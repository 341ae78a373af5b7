"""The daemon's domain errors: one root, one class per kind of failure.

Each kind maps to exactly one gRPC status code, in `exeunit.api.status` (the only place that knows
gRPC). Messages are written for the person who has to fix the call.
"""

from __future__ import annotations


class ExeUnitError(Exception):
    """Root of every error the daemon reports to a caller."""


class InvalidArgument(ExeUnitError):
    """The request is malformed: fix the request."""


class NotFound(ExeUnitError):
    """An id or path names nothing."""


class AlreadyExists(ExeUnitError):
    """A client-chosen id is taken by something different."""


class FailedPrecondition(ExeUnitError):
    """The request is well-formed but the target is in the wrong state for it."""


class PermissionDenied(ExeUnitError):
    """The caller does not own the agreement or activity."""


class Unauthenticated(ExeUnitError):
    """The caller did not identify itself or gave a wrong token."""


class ResourceExhausted(ExeUnitError):
    """Capacity or a size limit is exceeded."""


class OutOfRange(ExeUnitError):
    """A sequence number or offset outside what is available."""


class TimedOut(ExeUnitError):
    """The caller let a transfer or fetch stand still for longer than the provider waits."""


class DataLoss(ExeUnitError):
    """Data was lost or damaged: a transfer that did not match its declared size or checksum, or
    events a batch's journal should have kept."""


class Unavailable(ExeUnitError):
    """The daemon cannot take the call now (it is shutting down); another provider can."""


class RuntimeFailure(ExeUnitError):
    """The container engine failed in a way the caller cannot fix (engine down, I/O error)."""
