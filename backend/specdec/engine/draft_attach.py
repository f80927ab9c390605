"""The draft worker connection (mode "async", or draft "remote:..."): attach once the worker has
joined, detach on a channel failure (AR from then on, committed tokens kept), reconfigure, close.
Mixed into :class:`LLMEngine`; step() is the only user of the drafter."""
from __future__ import annotations

import dataclasses
import logging

from ..spec.transport import ChannelError

log = logging.getLogger(__name__)


class DraftAttachment:
    def _uses_worker(self) -> bool:
        return self.cfg.mode == "async" or self.cfg.spec.remote

    def _start_link(self) -> None:
        """Remote: connect in the background and serve AR meanwhile. Spawned: start the worker and
        wait for it, so that a bad draft fails here (spec/link.py)."""
        from ..spec.link import open_link
        self.link = open_link(self)

    def _attach(self, channel) -> None:
        from ..spec.link import remote_drafter
        drafter = remote_drafter(self, channel)
        if drafter is not None:
            self.attach_drafter(drafter)
            log.info("speculating with the draft worker (mode %s, K=%d)", self.cfg.mode, self.k)

    def attach_drafter(self, drafter) -> None:
        """Speculate with ``drafter`` from the next step on (step() is its only user)."""
        self.drafter = drafter
        self.scheduler.drafter = drafter
        self.k = self.cfg.spec.k

    def detach_drafter(self, send_exit: bool = True) -> None:
        """Back to AR decoding; running sequences keep every committed token."""
        d, self.drafter = self.drafter, None
        self.scheduler.drafter = None
        self.k = 0
        if d is not None and hasattr(d, "close"):
            d.close(send_exit)

    def _draft_failed(self, err: Exception) -> None:
        log.error("draft channel failed (%s); continuing in AR mode and reconnecting in the background", str(err))
        self.metrics.ar_fallbacks += 1
        self.detach_drafter(send_exit=False)
        if self.link is not None:
            self.link.failed()

    def update_spec(self, **changes) -> None:
        """Change speculation settings (K, fan-out, Saguaro C, backup) between requests; a draft
        worker is reconfigured in place (no reload)."""
        if self.scheduler.has_work():
            raise RuntimeError("update_spec needs an idle engine (no running or waiting requests)")
        if "draft" in changes and changes["draft"] != self.cfg.spec.draft:
            raise ValueError("the draft itself cannot change; build a new LLM")
        spec = dataclasses.replace(self.cfg.spec, **changes)
        dataclasses.replace(self.cfg, spec=spec)         # validates the combination (e.g. sampler_x needs async)
        self.cfg.spec = spec
        if self.drafter is not None:
            self.k = spec.k
            if hasattr(self.drafter, "configure"):
                try:
                    self.drafter.configure(spec)
                except ChannelError as e:
                    self._draft_failed(e)

    def close(self) -> None:
        """Send EXIT to a draft worker and to the target's other ranks, and wait for them to end (idempotent)."""
        if self.drafter is not None and hasattr(self.drafter, "close"):
            self.detach_drafter(send_exit=True)
        if self.link is not None:
            self.link.close()
            self.link = None
        if self.tp is not None:
            self.tp.close()
            self.tp = None
