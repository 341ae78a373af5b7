"""Resource and runtime names, as Golem's market uses them."""

from __future__ import annotations

INF_MEM = "golem.inf.mem.gib"
INF_STORAGE = "golem.inf.storage.gib"
INF_CORES = "golem.inf.cpu.cores"
INF_THREADS = "golem.inf.cpu.threads"
INF_RUNTIME_NAME = "golem.runtime.name"
RUNTIME_VM = "vm"  # Golem's VM runtime; its stand-in here is named requestor.payload.vm.RUNTIME_VM
