"""``kind = "dns_srv"``: runtimes published as DNS SRV records, re-resolved at their TTL.

What Kubernetes (a headless Service's ``_port._proto.service.namespace.svc`` name) and
Consul's DNS interface (``service.service.consul``) publish: one SRV record per instance,
its target a host name. Every SRV record is one runtime (priority and weight choose nothing
here: every instance is followed), named and addressed by the entry's templates from the
record's target, port and, when a template asks for ``{txt.KEY}``, the ``KEY=value``
strings of the target's TXT records. Resolved with dnspython's trio-capable
:mod:`dns.asyncresolver`, without a cache, after ``min(TTL, refresh_interval)`` (at least
:data:`MIN_REFRESH_S`).

What an answer means: records are the complete set; an authoritative "no such name"
(NXDOMAIN) or an empty answer means *no runtimes* (a Kubernetes Service scaled to zero, a
Consul service with no healthy instance), so the set becomes empty. A timeout, a SERVFAIL
or REFUSED from every server, or an unusable answer is a failed refresh: the backend ends
with a :class:`DiscoveryFailure`, the runner keeps the last good set and restarts it with
backoff.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver
import msgspec
import trio

from yoi_registryd.discovery.records import TEMPLATE_FAILED, Refusal
from yoi_registryd.discovery.runner import DiscoveryFailure, DiscoveryReporter
from yoi_registryd.record_templates import TXT_PREFIX, MissingTxt, render, template_fields

if TYPE_CHECKING:
    from yoi_registryd.config import DnsSrvDiscoveryConfig

DNS_TIMEOUT: Final = "discovery_dns_timeout"
DNS_UNAVAILABLE: Final = "discovery_dns_unavailable"

MIN_REFRESH_S: Final = 1.0
"""A TTL of 0 (or 1) re-resolves once a second, never in a loop."""
_TXT_LOOKUPS_AT_ONCE: Final = 16


class SrvRecord(msgspec.Struct, frozen=True, order=True):
    """One SRV record of the answer (its target without the final dot)."""

    priority: int
    weight: int
    target: str
    port: int


def _txt_strings(answer: dns.resolver.Answer) -> dict[str, str]:
    """``KEY=value`` strings of TXT records (a string without ``=`` is a key with value
    ``""``; the first of a repeated key wins, as RFC 6763 section 6.4 says)."""
    found: dict[str, str] = {}
    for rdata in answer.rrset or ():
        for raw in rdata.strings:
            text = raw.decode("utf-8", "replace")
            key, _, value = text.partition("=")
            if key:
                found.setdefault(key, value)
    return found


class DnsSrvDiscovery:
    """Resolves the SRV name (and TXT records when asked), reports the set, waits its TTL."""

    def __init__(self, entry: DnsSrvDiscoveryConfig) -> None:
        self.entry = entry
        self.name = dns.name.from_text(entry.srv_name)
        templates = [entry.runtime_id_template, entry.base_url_template]
        templates += [entry.label_template] if entry.label_template is not None else []
        fields = [field for template in templates for field in template_fields(template)]
        self.wants_txt = any(field.startswith(TXT_PREFIX) for field in fields)

    def _resolver(self) -> dns.asyncresolver.Resolver:
        try:
            resolver = dns.asyncresolver.Resolver(configure=not self.entry.nameservers)
        except dns.exception.DNSException as exc:
            raise DiscoveryFailure(
                DNS_UNAVAILABLE, f"no system resolver configuration ({type(exc).__name__})"
            ) from None
        if self.entry.nameservers:
            resolver.nameservers = list(self.entry.nameservers)
        resolver.port = self.entry.nameserver_port
        resolver.cache = None
        resolver.lifetime = resolver.timeout = self.entry.timeout.total_seconds()
        return resolver

    async def run(self, reporter: DiscoveryReporter) -> None:
        resolver = await trio.to_thread.run_sync(self._resolver)
        while True:
            with trio.move_on_after(self.entry.timeout.total_seconds()) as deadline:
                records, ttl = await self.resolve(resolver)
            if deadline.cancelled_caught:
                raise DiscoveryFailure(DNS_TIMEOUT, "the DNS servers did not answer in time")
            await reporter.found(records)
            refresh = self.entry.refresh_interval.total_seconds()
            await trio.sleep(max(MIN_REFRESH_S, min(refresh, ttl if ttl is not None else refresh)))

    async def resolve(
        self, resolver: dns.asyncresolver.Resolver
    ) -> tuple[list[tuple[str, Any]], float | None]:
        """The runtime records of one resolution (or refusals), and the shortest TTL seen
        (``None``: a negative answer, re-resolved after ``refresh_interval``)."""
        answer = await self._query(resolver, self.name, "SRV")
        if answer is None or answer.rrset is None:
            return [], None
        ttl: float = answer.rrset.ttl
        srv = sorted(
            SrvRecord(r.priority, r.weight, r.target.to_text(omit_final_dot=True), r.port)
            for r in answer.rrset
            if r.target != dns.name.root  # "." : the service is decidedly not available
        )
        txt: dict[str, dict[str, str]] = {}
        if self.wants_txt:
            txt_ttl = await self._lookup_txt(resolver, {r.target for r in srv}, txt)
            ttl = min(ttl, txt_ttl) if txt_ttl is not None else ttl
        return [self._record(f"srv[{i}]", r, txt.get(r.target, {})) for i, r in enumerate(srv)], ttl

    async def _lookup_txt(
        self, resolver: dns.asyncresolver.Resolver, targets: Iterable[str], into: dict[str, Any]
    ) -> float | None:
        limiter = trio.CapacityLimiter(_TXT_LOOKUPS_AT_ONCE)
        ttls: list[float] = []

        async def lookup(target: str) -> None:
            async with limiter:
                answer = await self._query(resolver, dns.name.from_text(target), "TXT")
            into[target] = _txt_strings(answer) if answer is not None else {}
            if answer is not None and answer.rrset is not None:
                ttls.append(answer.rrset.ttl)

        async with trio.open_nursery() as nursery:
            for target in sorted(targets):
                nursery.start_soon(lookup, target)
        return min(ttls, default=None)

    def _record(self, where: str, r: SrvRecord, txt: Mapping[str, str]) -> tuple[str, Any]:
        host = r.target.split(".", 1)[0]
        values = {
            "target": r.target,
            "host": host,
            "port": str(r.port),
            "priority": str(r.priority),
            "weight": str(r.weight),
        }
        e = self.entry
        try:
            record = {
                "runtime_id": render(e.runtime_id_template, values, txt),
                "base_url": render(e.base_url_template, values, txt),
            }
            if e.label_template is not None:
                record["label"] = render(e.label_template, values, txt)
        except MissingTxt as missing:
            message = f"the target has no TXT string {missing.key!r}=..."
            return where, Refusal(where, TEMPLATE_FAILED, message)
        return where, record

    async def _query(
        self, resolver: dns.asyncresolver.Resolver, name: dns.name.Name, rdtype: str
    ) -> dns.resolver.Answer | None:
        """One lookup; ``None`` for NXDOMAIN (an empty answer has no ``rrset``)."""
        try:
            return await resolver.resolve(name, rdtype, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN:
            return None
        except dns.resolver.LifetimeTimeout:
            raise DiscoveryFailure(DNS_TIMEOUT, "the DNS servers did not answer in time") from None
        except dns.resolver.NoNameservers:
            raise DiscoveryFailure(
                DNS_UNAVAILABLE, "every DNS server failed (SERVFAIL, REFUSED or unreachable)"
            ) from None
        except (dns.exception.DNSException, OSError) as exc:
            raise DiscoveryFailure(
                DNS_UNAVAILABLE, f"the DNS lookup failed ({type(exc).__name__})"
            ) from None
