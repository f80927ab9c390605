"""Cancellation of streams that run inside the ensemble.

Triton cancels an ensemble request only *between* steps: the in-flight ``target`` request never
sees ``is_cancelled()`` turn true (core ``ensemble_scheduler.cc`` propagates the flag to the next
step it schedules; server#6739). The next step, ``postprocessing``, does receive each later chunk
as a cancelled request. So every chunk carries a ``cancel_key`` (this target instance's
address, the sequence id and a per-request secret), and postprocessing, when it sees a cancelled
request, sends that key back in one datagram. The target's cancel thread waits on its inbox; the
engine thread aborts those sequences before its next round like directly cancelled ones (KV
blocks freed) and ends each stream with a final data response (``finish_reason`` "cancelled"),
not an error: in Triton 2.51 an error from one ensemble step while another step is in flight
leaves the ensemble request in flight forever.

The channel is a Linux abstract-namespace UNIX datagram socket: no file to clean up, local only.
"""
from __future__ import annotations

import logging
import os
import secrets
import select
import socket

log = logging.getLogger(__name__)


def _address(name: str) -> str:
    return "\0" + name          # abstract namespace (Linux)


class CancelInbox:
    """Target side: a non-blocking datagram socket; :meth:`poll` returns (seq_id, secret) pairs."""

    def __init__(self, name: str | None = None):
        self.name = name or f"specdec-cancel-{os.getpid()}-{secrets.token_hex(4)}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(_address(self.name))
        self.sock.setblocking(False)

    def key(self, seq_id: int, secret: str) -> str:
        return f"{self.name}/{seq_id}/{secret}"

    def poll(self) -> list[tuple[int, str]]:
        out = []
        while True:
            try:
                data = self.sock.recv(256)
            except (BlockingIOError, InterruptedError):
                return out
            try:
                name, seq, secret = data.decode().split("/")
                if name == self.name:
                    out.append((int(seq), secret))
            except ValueError:
                log.warning("ignoring a malformed cancel message (%d bytes)", len(data))

    def wait(self, timeout_s: float) -> list[tuple[int, str]]:
        """Like :meth:`poll`, after waiting up to ``timeout_s`` for a message."""
        select.select([self.sock], [], [], timeout_s)
        return self.poll()

    def close(self) -> None:
        self.sock.close()


def new_secret() -> str:
    return secrets.token_hex(8)


def notify_cancelled(key: str) -> bool:
    """Postprocessing side: tell the target that the stream with this key was cancelled."""
    try:
        name = key.split("/", 1)[0]
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(key.encode(), _address(name))
        return True
    except OSError as e:          # the target is gone: nothing left to cancel
        log.warning("cancel message for %s not delivered: %s", key, e)
        return False
