"""Bench cases about load and reach: memory over many activities, ten attackers against an
eleventh requestor, a network spanning two providers.

None of them has a raw Docker side. Their "raw" column is our own stack doing the same work in
easier conditions: the victim's round trip idle (attack), two instances of the network on one
provider (span); the memory case has none at all.
"""

from __future__ import annotations

import asyncio
import statistics
from datetime import datetime, timedelta, timezone

from bench import span
from bench.attack import attack
from bench.common import IMAGE, MIB, Daemon, Progress, Row, States, row, say, stopwatch
from requestor.client import ProviderClient
from requestor.client.identity import RequestorIdentity
from requestor.model import DemandSpec, DeploySpec, Refusal, RunSpec, StartSpec

FORGET_WAIT = 25  # the bench daemon forgets ended records after 10 s, batches after the replay grace


async def case_memory(daemon: Daemon, count: int, rounds: int, concurrency: int = 8) -> Row:
    """`count` activities, each running a batch with 1 MiB of output and ending, per round: the
    daemon's memory must come back down (output and event logs go with their activities). The
    figure is the RSS growth over the round, once ended records are forgotten; no raw side."""
    client = ProviderClient(f"127.0.0.1:{daemon.port}", RequestorIdentity.ephemeral())
    demand = DemandSpec(image_hash="", image_tag=IMAGE, image_url="", min_memory_bytes=256 << 20,
                        min_storage_bytes=256 << 20, min_cpu_threads=1, capabilities=(), subnet_tag="public",
                        expiration=datetime.now(timezone.utc) + timedelta(hours=1))
    flood = [DeploySpec(), StartSpec(), RunSpec("/usr/bin/head", ("-c", str(MIB), "/dev/zero"))]
    lanes = asyncio.Semaphore(concurrency)

    async def one(label: str) -> None:
        async with lanes:
            agreement = await client.propose(demand)
            assert not isinstance(agreement, Refusal), agreement
            activity_id = await client.create_activity(agreement.agreement_id)
            got = 0
            async for event in client.run_batch(activity_id, flood, label):
                got += len(event.data)
            assert got == MIB, got
            await client.destroy(activity_id)
            await client.terminate_agreement(agreement.agreement_id, "Done")

    growth, peaks, seconds = [], [], []
    first = daemon.rss()
    progress = Progress("memory", rounds, every=0)
    try:
        for n in range(1, rounds + 1):
            progress.round(n)
            before = daemon.reset_peak()
            elapsed = stopwatch()
            await asyncio.gather(*(one(f"memory-{n}-{k}") for k in range(count)))
            seconds.append(elapsed())
            say(f"memory: round {n}/{rounds}: {count} activities in {seconds[-1]:.0f} s; "
                f"waiting {FORGET_WAIT} s for them to be forgotten")
            await asyncio.sleep(FORGET_WAIT)
            growth.append((daemon.rss() - before) / MIB)
            peaks.append((daemon.peak - before) / MIB)
    finally:
        await client.close()
    worst = max(growth)
    return row("memory", f"memory: {count:,} activities, each a batch with 1 MiB of output, ended", "MiB",
               growth, None, "daemon RSS back within 20 MiB", lambda _: worst <= 20,
               {"rss_start_mib": round(first / MIB, 1), "peak_growth_mib_max": round(max(peaks), 1),
                "growth_over_all_rounds_mib": round((daemon.rss() - first) / MIB, 1),
                "seconds_median": round(statistics.median(seconds), 1)})


async def case_attack(daemon: Daemon, seconds: float, rounds: int) -> Row:
    """Ten requestors at their worst for `seconds` (bench/attack.py), and an eleventh's `/bin/true`
    round trip: under attack (ours) against the same round trip, same victim, idle just before
    (raw). The attackers are ordinary processes, not niced; the daemon's memory is sampled."""
    busy, idle, growth, counts, uploads, downloads = [], [], [], [], [], []
    before_first = daemon.rss()
    for n in range(1, rounds + 1):
        say(f"attack: round {n}/{rounds} ({seconds:g} s of attack)")
        before = daemon.reset_peak()
        quiet, loaded, count, rates = await attack(f"127.0.0.1:{daemon.port}", seconds)
        uploads.append(rates["full_speed_uploads"])
        downloads.append(rates["full_speed_downloads"])
        idle.append(quiet * 1000)
        busy.append(loaded * 1000)
        counts.append(count)
        growth.append((daemon.peak - before) / MIB)
    worst = max(growth)
    return row("attack", f"attack: 10 requestors at their worst for {seconds:g} s (`bench/attack.py`, full-speed "
               "uploads and downloads among them), an eleventh's "
               "`/bin/true` under attack vs the same idle", "ms", busy, idle,
               "ratio <= 1.5 (raw: the same round trip idle); RSS <= start + 256 MiB",
               lambda r: r <= 1.5 and worst <= 256,
               {"daemon_rss_growth_mib_max": round(worst, 1), "daemon_rss_before_mib": round(before_first / MIB, 1),
                "victim_round_trips_min": min(counts), "attacker_upload_mib_s_min": round(min(uploads)),
                "attacker_download_mib_s_min": round(min(downloads))})


async def case_span(states: States, megabytes: int, rounds: int) -> list[Row]:
    """One network on two providers of simulated hosts: the same source program streaming to the
    same sink and timing small round trips, between instances on two providers (ours) and on one
    (raw), in the same run and with the same size. Direct, then relayed through the requestor
    (the two hosts partitioned; a smaller stream, and its own same-provider pair of that size:
    before issue 26 the relayed row was set against the direct run's larger stream)."""
    relayed_mb = max(megabytes // 8, 16)
    direct_far, direct_same, relay_far, relay_same = [], [], [], []
    rtts: dict[str, list[float]] = {"direct": [], "direct_same": [], "relayed": [], "relayed_same": []}
    for n in range(1, rounds + 1):
        say(f"span: round {n}/{rounds}, direct ({megabytes} MB)")
        direct = await span.measure(False, megabytes, states)
        say(f"span: round {n}/{rounds}, relayed ({relayed_mb} MB)")
        relayed = await span.measure(True, relayed_mb, states)
        for rates, result in ((direct_far, direct["other provider"]), (direct_same, direct["same provider"]),
                              (relay_far, relayed["other provider"]), (relay_same, relayed["same provider"])):
            rates.append(result[0])
        rtts["direct"].append(direct["other provider"][1])
        rtts["direct_same"].append(direct["same provider"][1])
        rtts["relayed"].append(relayed["other provider"][1])
        rtts["relayed_same"].append(relayed["same provider"][1])
    far_median, relay_median = statistics.median(direct_far), statistics.median(relay_far)
    return [
        row("span", f"network across two providers on simulated hosts, direct: a TCP stream ({megabytes} MB) "
            "between two instances vs two instances on one provider", "MB/s", direct_far, direct_same,
            ">= 370 MB/s (10x Golem's best published VPN figure)", lambda _: far_median >= 370,
            {"rtt_ms": statistics.median(rtts["direct"]), "same_provider_rtt_ms": statistics.median(rtts["direct_same"])}),
        row("span-relayed", f"the same, relayed through the requestor (the two hosts partitioned; {relayed_mb} MB)",
            "MB/s", relay_far, relay_same, ">= 37 MB/s (Golem's best)", lambda _: relay_median >= 37,
            {"rtt_ms": statistics.median(rtts["relayed"]),
             "same_provider_rtt_ms": statistics.median(rtts["relayed_same"])}),
    ]
