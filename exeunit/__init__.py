"""ExeUnit: a provider daemon that runs Golem-style activities as Docker containers.

The domain modules (market, activity, batch, transfer) know nothing of gRPC; `servicers` is the
thin gRPC skin over them and `docker_runtime` the only module that talks to Docker.
"""

__version__ = "0.1.0"
