"""The Prometheus endpoint of the daemon (`exeunit serve --metrics-listen HOST:PORT`).

It serves the counters the daemon keeps as it works (exeunit.services.telemetry) and gauges read
from the provider when scraped: activities and agreements by state, networks. No requestor ids or
activity ids appear in labels: a scrape says how the host is doing, not who does what (that is
`exeunit ps`).
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Iterator
from decimal import Decimal
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from exeunit.services.telemetry import REGISTRY
from exeunit.services.provider import Provider


class ProviderState(Collector):
    """Gauges computed from the provider at each scrape."""

    def __init__(self, provider: Provider) -> None:
        self._provider = provider

    def collect(self) -> Iterator[GaugeMetricFamily]:
        activities = GaugeMetricFamily("exeunit_activities", "Activities known to the daemon, by state",
                                       labels=["state"])
        for state, count in sorted(Tally(a.value for a in self._provider.activity_states()).items()):
            activities.add_metric([state], count)
        yield activities
        agreements = GaugeMetricFamily("exeunit_agreements", "Agreements known to the daemon, by state",
                                       labels=["state"])
        for state, count in sorted(Tally(a.state.value for a in self._provider.market.all()).items()):
            agreements.add_metric([state], count)
        yield agreements
        yield GaugeMetricFamily("exeunit_networks", "Requestors' private networks", value=self._provider.networks.count)
        queued = self._provider.relays.queued_bytes()
        yield GaugeMetricFamily("exeunit_relay_queued_bytes", "Relayed bytes waiting for requestors' RelayFrames "
                                "streams, all requestors together", value=sum(queued.values()))
        yield GaugeMetricFamily("exeunit_relay_queued_bytes_max", "Relayed bytes waiting for the fullest "
                                "requestor's stream (bounded by --relay-queue-mib)", value=max(queued.values(), default=0))
        money = self._provider.payments.money() if self._provider.payments is not None else []
        amounts = GaugeMetricFamily("exeunit_payment_amount", "What the agreements the daemon knows owe, in the "
                                    "token's units, summed: due so far, invoiced, accepted by their requestors, paid "
                                    "on the chain, overdue (past due, unpaid)", labels=["kind"])
        for kind in ("due", "invoiced", "accepted", "paid", "overdue"):
            amounts.add_metric([kind], float(sum((getattr(m, kind) for m in money), Decimal(0))))
        yield amounts
        yield GaugeMetricFamily("exeunit_agreements_overdue", "Agreements with a payment past its due time",
                                value=sum(m.overdue > 0 for m in money))
        yield GaugeMetricFamily("exeunit_relay_refused", "Relayed messages handed back to the overlay (no stream open, "
                                "or the bound reached); each restarts a session", value=self._provider.relays.refused)


class MetricsServer:
    """The HTTP endpoint Prometheus scrapes (/metrics), in a thread of its own."""

    def __init__(self, provider: Provider, host: str, port: int) -> None:
        self._collector = ProviderState(provider)
        REGISTRY.register(self._collector)
        server, thread = start_http_server(port, host.strip("[]"), registry=REGISTRY)
        self._server: WSGIServer = server
        self._thread: threading.Thread = thread
        self.port = int(server.server_port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        REGISTRY.unregister(self._collector)
