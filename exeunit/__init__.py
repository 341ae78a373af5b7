"""ExeUnit: a provider daemon that runs Golem-style activities as Docker containers.

In layers (docs/layout.md): `domain` and `services` know nothing of gRPC or Docker; `api` is the
thin gRPC skin over them, `runtime.docker` the only package that talks to Docker, and `app` puts
a provider together for `exeunit serve` and the embedded provider.
"""

__version__ = "0.1.0"
