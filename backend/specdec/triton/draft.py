"""The ``draft`` Triton model: a draft model in its own instance (its own GPU), reached directly.

With ``draft_location: separate`` the instance starts ``specdec.spec.draft_worker.serve_draft``
on a background thread: it joins the target through a torch.distributed channel at
``rendezvous`` and answers the target's draft requests there, never through Triton requests.
``initialize`` does not wait for the target (nor the target for it): both connect in the
background and the target serves AR until the draft has joined. With ``in_target`` (the default)
the target runs the draft itself and this model stays idle. Its only request, ``status``, reports
which of these is the case.
"""
from __future__ import annotations

import json
import threading

from . import pbio
from .settings import instance_device, read_settings


class DraftModel:
    def initialize(self, args):
        self.log = pbio.setup_logging(args["model_name"])
        self.settings = s = read_settings(args)
        self.device = instance_device(args)
        self.state = {"draft_location": s.draft_location, "draft": s.draft, "device": str(self.device),
                      "rendezvous": s.rendezvous, "connections": 0}
        self.stop = threading.Event()
        self.thread = None
        if s.draft_location != "separate" or s.mode == "ar" or not s.draft:
            self.state["status"] = "idle"
            self.log.info("idle: draft_location=%s mode=%s (the target runs its draft itself, if any)",
                          s.draft_location, s.mode)
            return
        self.log.info("draft %s on %s: joining the target at %s in the background", s.draft, self.device, s.rendezvous)
        self.thread = threading.Thread(target=self._serve, name="specdec-draft", daemon=True)
        self.thread.start()

    def _serve(self):
        """Serve one target connection after another until finalize (a failed channel is retried)."""
        s = self.settings
        try:
            if self.device.type == "cuda":
                import torch
                torch.cuda.set_device(self.device)          # per thread: set it here, not in initialize
            from ..spec.draft_worker import serve_draft
            from ..spec.transport import ChannelError
        except Exception as e:      # the target notices the missing draft and serves AR
            self._failed(e)
            return
        fan_out = int(s.fan_out) if s.fan_out.isdigit() else s.fan_out
        while not self.stop.is_set():
            self.state["status"] = "waiting for the target"
            try:
                serve_draft(s.draft, str(self.device), s.dtype, s.rendezvous, target=s.target,
                            max_batch_size=s.engine_max_batch_size, max_model_len=s.max_model_len or None,
                            connect_timeout_s=None, should_stop=self.stop.is_set, k=s.k, fan_out=fan_out,
                            num_threads=s.cpu_threads or None)
                self.state["connections"] += 1
                self.log.info("draft: the target closed the channel (EXIT); waiting for the next connection")
            except ChannelError as e:
                self.state["connections"] += 1
                self.log.warning("draft channel failed (%s); serving the next connection", e)
            except TimeoutError:
                continue
            except Exception as e:
                self._failed(e)
                return
        self.state["status"] = "stopped"

    def _failed(self, e: Exception) -> None:
        self.state["status"] = f"failed: {type(e).__name__}: {e}"
        self.log.error("draft worker failed (the target serves AR): %s: %s", type(e).__name__, e)

    def finalize(self):
        self.stop.set()
        if self.thread is not None:
            self.thread.join(10)

    def execute(self, requests):
        pb_utils = pbio.pb()
        status = json.dumps(self.state)
        return [pb_utils.InferenceResponse(output_tensors=[pbio.string_tensor("status", status)]) for _ in requests]
