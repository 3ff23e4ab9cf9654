"""Where the Triton replicas are: a fixed list of addresses, or a DNS name re-resolved every few seconds.

`FRONTEND_TRITON_GRPC_URL` is either `host:port[,host:port...]` (locally, in Docker) or
`dns:///name:port`, gRPC's own target syntax, for a Kubernetes headless Service whose DNS
answer lists every ready pod. The frontend needs the addresses themselves, one channel per
replica, so that it can choose a replica per request: gRPC's resolver does not hand its
answer to the application, so the name is resolved with the system resolver, as gRPC's
native resolver does (search domains and /etc/hosts apply).
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

DNS_SCHEME = "dns:///"


@dataclass(frozen=True)
class Targets:
    """The parsed setting: fixed ``addresses``, or a ``dns_name`` and ``port`` to resolve."""

    addresses: tuple[str, ...] = ()
    dns_name: str | None = None
    port: int = 0

    @classmethod
    def parse(cls, url: str) -> Targets:
        """Raises ValueError with a message that says what is expected."""
        url = url.strip()
        if url.startswith(DNS_SCHEME):
            name, port = _host_port(url.removeprefix(DNS_SCHEME))
            return cls(dns_name=name, port=port)
        entries = [entry.strip() for entry in url.split(",") if entry.strip()]
        if not entries:
            raise ValueError("expected host:port[,host:port...] or dns:///name:port, got nothing")
        for entry in entries:
            _host_port(entry)
        return cls(addresses=tuple(dict.fromkeys(entries)))

    async def resolve(self) -> tuple[str, ...]:
        """The replicas' addresses now; raises OSError when the name does not resolve."""
        if self.dns_name is None:
            return self.addresses
        infos = await asyncio.get_running_loop().getaddrinfo(
            self.dns_name, self.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
        found = (_address(info[4][0], self.port) for info in infos)
        return tuple(sorted(dict.fromkeys(found)))


def _host_port(entry: str) -> tuple[str, int]:
    host, sep, port = entry.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port, got {entry!r}")
    return host, int(port)


def _address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def host_of(address: str) -> str:
    """The host part of ``host:port`` (brackets of an IPv6 address kept, as URLs want them)."""
    return address.rpartition(":")[0]
