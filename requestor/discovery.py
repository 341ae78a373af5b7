"""Providers found without a list, through mechanisms that exist already.

`Golem(providers=...)` and `GOLEM_PROVIDERS` take, besides `host:port[#PROVIDER_ID]`:

- `mdns` (or `mdns:SECONDS`, how long to listen; default 2): DNS-SD over mDNS on this host's LANs,
  for providers started with `exeunit serve --announce`, with the id its TXT record carries.
- `srv:NAME` (or `srv:NAME@DNS_SERVER`): the SRV records of NAME (say `_exeunit._tcp.example.org`,
  or what Consul's or Kubernetes' DNS serves for a service), with the id a target host's TXT
  record `exeunit:PORT=PROVIDER_ID` gives the provider on that port. Without `@DNS_SERVER`, the
  system's resolver answers.

Neither is authenticated: anyone on the LAN, or whoever answers DNS, can announce any address
with any id. So an announced id is not a pin: it comes as `host:port#announced=ID`, which
requestor.client.connect checks against the known-providers file first (a contradiction is
refused as a changed key is) and uses only for an address never seen. An announcement without
an id is a bare `host:port`, trusted on first use. A malformed one (a bad id, port or address) is
skipped, said in the log: it never keeps the others from being found.
"""

from __future__ import annotations

import asyncio
import logging

import dns.asyncresolver
import dns.exception
import dns.rdatatype
from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from exeunit.v1.conventions import MDNS_SERVICE_TYPE, SRV_TXT_PREFIX
from requestor.client.connect import ANNOUNCED, ProviderAddress
from requestor.errors import RequestorError

log = logging.getLogger(__name__)

DEFAULT_MDNS_SECONDS = 2.0
DNS_TIMEOUT = 5.0


class DiscoveryError(RequestorError):
    """A discovery source could not be asked (bad syntax, no answer from DNS)."""


def is_discovery(source: str) -> bool:
    return source == "mdns" or source.startswith(("mdns:", "srv:"))


async def discover(source: str) -> list[str]:
    """Provider addresses (`host:port#announced=PROVIDER_ID`, or `host:port` where no id is
    published) that `source` names now."""
    if source == "mdns" or source.startswith("mdns:"):
        seconds = DEFAULT_MDNS_SECONDS
        if source.startswith("mdns:"):
            try:
                seconds = float(source[5:])
            except ValueError:
                raise DiscoveryError(f"{source!r}: say how long to listen as mdns:SECONDS, for example mdns:3") from None
        return await browse_mdns(seconds)
    if source.startswith("srv:"):
        name, _, server = source[4:].partition("@")
        if not name:
            raise DiscoveryError(f"{source!r}: give a name, as srv:_exeunit._tcp.example.org[@DNS_SERVER]")
        return await resolve_srv(name, server or None)
    raise DiscoveryError(f"{source!r} is not a discovery source (mdns, mdns:SECONDS, srv:NAME[@DNS_SERVER])")


async def browse_mdns(seconds: float) -> list[str]:
    """Listens `seconds` for announced providers; resolves each one found."""
    names: set[str] = set()

    def heard(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is not ServiceStateChange.Removed:
            names.add(name)

    zeroconf = AsyncZeroconf(ip_version=IPVersion.V4Only)
    try:
        browser = AsyncServiceBrowser(zeroconf.zeroconf, MDNS_SERVICE_TYPE, handlers=[heard])
        await asyncio.sleep(seconds)
        await browser.async_cancel()
        found = []
        for name in sorted(names):
            info = AsyncServiceInfo(MDNS_SERVICE_TYPE, name)
            if not await info.async_request(zeroconf.zeroconf, 3000):
                log.info("event=mdns_unresolved name=%r", name)
                continue
            provider_id = ((info.properties or {}).get(b"id") or b"").decode(errors="replace")
            for address in info.parsed_addresses(IPVersion.V4Only)[:1]:
                if (announced := _announced("mdns", name, address, info.port, provider_id)) is not None:
                    found.append(announced)
    finally:
        await zeroconf.async_close()
    log.info("event=providers_discovered source=mdns count=%d", len(found))
    return found


async def resolve_srv(name: str, server: str | None) -> list[str]:
    """The providers `name`'s SRV records point at, in their priority order."""
    resolver = dns.asyncresolver.Resolver(configure=server is None)
    if server is not None:
        host, _, port = server.partition(":")
        resolver.nameservers = [host]
        resolver.port = int(port) if port else 53
    resolver.lifetime = DNS_TIMEOUT
    try:
        records = sorted(await resolver.resolve(name, "SRV"), key=lambda r: (r.priority, -r.weight))
    except (dns.exception.DNSException, OSError) as exc:
        raise DiscoveryError(f"SRV records of {name} could not be read: {exc}") from None
    found = []
    for record in records:
        target = record.target.to_text(omit_final_dot=True)
        if not target:  # "." : the service is not offered there (RFC 2782)
            continue
        host = await _address_of(resolver, target)
        ids = sorted((await _ids_of(resolver, target)).get(record.port, ()))
        if len(ids) > 1:
            log.warning("event=announcement_skipped source=srv name=%r reason=%r", target,
                        f"its TXT records give port {record.port} two ids: {', '.join(ids)}")
            continue
        if (announced := _announced("srv", target, host, record.port, "".join(ids))) is not None:
            found.append(announced)
    log.info("event=providers_discovered source=srv name=%s count=%d", name, len(found))
    return found


async def _address_of(resolver: dns.asyncresolver.Resolver, target: str) -> str:
    """The target's IPv4 address as the same DNS server gives it (the name itself when it has none
    there: the system resolves it later)."""
    try:
        answer = await resolver.resolve(target, "A")
    except (dns.exception.DNSException, OSError):
        return target
    addresses = [r.to_text() for r in answer]
    return addresses[0] if addresses else target


async def _ids_of(resolver: dns.asyncresolver.Resolver, target: str) -> dict[int, set[str]]:
    """The ids the target's `exeunit:PORT=PROVIDER_ID` TXT strings give, by port."""
    try:
        answer = await resolver.resolve(target, "TXT")
    except (dns.exception.DNSException, OSError):
        return {}
    ids: dict[int, set[str]] = {}
    for record in answer:
        for text in record.strings:
            entry = text.decode(errors="replace")
            if entry.startswith(SRV_TXT_PREFIX) and "=" in entry:
                port, _, provider_id = entry[len(SRV_TXT_PREFIX):].partition("=")
                if port.isdigit():
                    ids.setdefault(int(port), set()).add(provider_id.strip().lower())
    return ids


def _announced(source: str, name: str, host: str, port: object, provider_id: str) -> str | None:
    """What a requestor is given for one announcement (see the module's docstring); None, said in
    the log, for a malformed one."""
    text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        address = ProviderAddress.parse(text + (f"#{ANNOUNCED}{provider_id}" if provider_id else ""))
    except ValueError as exc:
        log.warning("event=announcement_skipped source=%s name=%r reason=%r", source, name, str(exc))
        return None
    return address.text
