"""processes.free_ports: distinct ports, each bindable, for a server that needs several (HTTP, gRPC, metrics)."""
import socket

from specdec.processes import free_port, free_ports
from specdec.triton.launcher import Ports


def test_free_ports_are_distinct_and_bindable():
    for _ in range(50):                   # one after another, the kernel may hand out the same port again
        ports = free_ports(3)
        assert len(set(ports)) == 3
    for p in ports + [free_port()]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", p))
    p = Ports.free()
    assert len({p.http, p.grpc, p.metrics}) == 3
