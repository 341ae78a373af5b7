"""A container's cpu time and memory read from its cgroup's files: microseconds, and no work for
the engine (whose stats call loads dockerd when a budget is polled)."""

from __future__ import annotations

from exeunit.runtime.protocols import ContainerUsage

# Where a container's cgroup is, by cgroup version and driver: (cpu file, its unit in ns, memory file).
CGROUP_LAYOUTS = (
    ("/sys/fs/cgroup/cpuacct/docker/{id}/cpuacct.usage", "/sys/fs/cgroup/memory/docker/{id}/memory.usage_in_bytes"),
    ("/sys/fs/cgroup/docker/{id}/cpu.stat", "/sys/fs/cgroup/docker/{id}/memory.current"),
    ("/sys/fs/cgroup/system.slice/docker-{id}.scope/cpu.stat", "/sys/fs/cgroup/system.slice/docker-{id}.scope/memory.current"),
)


def cgroup_usage(container_id: str) -> ContainerUsage | None:
    """Reads cpu seconds and memory from the container's cgroup files, or None where they are not."""
    for cpu_path, memory_path in CGROUP_LAYOUTS:
        try:
            with open(cpu_path.format(id=container_id)) as cpu_file:
                cpu_text = cpu_file.read()
            with open(memory_path.format(id=container_id)) as memory_file:
                memory = int(memory_file.read().strip() or 0)
        except (OSError, ValueError):
            continue
        if cpu_path.endswith("cpu.stat"):  # cgroup v2: "usage_usec N" among others
            fields = dict(line.split() for line in cpu_text.splitlines() if len(line.split()) == 2)
            cpu_seconds = int(fields.get("usage_usec", 0)) / 1e6
        else:
            cpu_seconds = int(cpu_text.strip() or 0) / 1e9
        return ContainerUsage(cpu_seconds=cpu_seconds, memory_bytes=memory)
    return None
