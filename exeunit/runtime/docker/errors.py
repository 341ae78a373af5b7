"""Docker's exceptions as the daemon's domain errors: translated here and nowhere else."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import docker.errors
import requests.exceptions

from exeunit import errors


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Turns docker SDK and transport exceptions into domain errors, naming what was attempted."""
    try:
        yield
    except docker.errors.ImageNotFound as exc:
        raise errors.NotFound(f"{what}: image not found ({explain(exc)})") from exc
    except docker.errors.NotFound as exc:
        raise errors.NotFound(f"{what}: {explain(exc)}") from exc
    except docker.errors.APIError as exc:
        if exc.status_code == 409:
            raise errors.FailedPrecondition(f"{what}: {explain(exc)}") from exc
        if exc.status_code == 400:
            raise errors.InvalidArgument(f"{what}: {explain(exc)}") from exc
        raise errors.RuntimeFailure(f"{what}: Docker engine error: {explain(exc)}") from exc
    except (requests.exceptions.ConnectionError, docker.errors.DockerException) as exc:
        raise errors.RuntimeFailure(
            f"{what}: cannot talk to the Docker engine ({exc}); is dockerd running?"
        ) from exc


def explain(exc: docker.errors.APIError) -> str:
    explanation = exc.explanation
    if isinstance(explanation, bytes):
        explanation = explanation.decode(errors="replace")
    return str(explanation or exc)
