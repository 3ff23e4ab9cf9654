"""Free TCP ports on the loopback interface, so tests never collide with a running `make run`."""

import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
