"""What the daemon counts as it works, for its metrics endpoint (exeunit.app.metrics).

Counters are module-level (one daemon per process; embedded providers count into the same ones,
harmlessly): commands by kind and outcome, bytes moved by direction, calls refused by status code.
Counting costs a lock and an add, so the data path counts per chunk.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

REGISTRY = CollectorRegistry()
COMMANDS = Counter("exeunit_commands_total", "ExeScript commands finished, by command and outcome",
                   ["command", "outcome"], registry=REGISTRY)
BYTES = Counter("exeunit_bytes_total", "Bytes moved: command output, uploads, downloads, tunnels (each way)",
                ["direction"], registry=REGISTRY)
# The directions' children, looked up once: bytes are counted on the data path.
OUTPUT_BYTES, UPLOAD_BYTES, DOWNLOAD_BYTES = BYTES.labels("output"), BYTES.labels("upload"), BYTES.labels("download")
TUNNEL_IN_BYTES, TUNNEL_OUT_BYTES = BYTES.labels("tunnel_in"), BYTES.labels("tunnel_out")
BULK_PAUSED = Counter("exeunit_bulk_paused_seconds_total",
                      "Seconds bulk data (command output, transfers, tunnels) waited so that other requestors' calls "
                      "were served promptly (exeunit.services.pacing)", registry=REGISTRY)
REFUSED = Counter("exeunit_refused_calls_total", "Calls answered with an error, by gRPC status code",
                  ["code"], registry=REGISTRY)
