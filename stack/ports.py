"""Free TCP ports, so tests never collide with a running `make run`."""

import socket


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_port_on_all(hosts: list[str]) -> int:
    """One port free on every address in ``hosts``: replicas on distinct loopback addresses share ports, as pods do."""
    for _ in range(100):
        port = free_port(hosts[0])
        try:
            for host in hosts[1:]:
                with socket.socket() as s:
                    s.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no port is free on all of {hosts}")
