"""The Docker engine behind the runtime's protocols; the one package that imports the docker SDK."""

from exeunit.runtime.docker.runtime import DockerRuntime

__all__ = ["DockerRuntime"]
