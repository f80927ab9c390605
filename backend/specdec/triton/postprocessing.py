"""The ``postprocessing`` Triton model: passes each chunk of the target on, and reports cancellations.

Each chunk already carries its text (``text_output``, the engine's delta: stream_text.py) and its
counters under the ensemble's output names, so the input tensors leave as the response's outputs
unchanged (the Python backend sends a tensor that already lies in shared memory without copying
it); only ``cancel_key`` stays behind. A chunk that arrives cancelled (the client cancelled the
ensemble) is reported back to the target through its ``cancel_key`` (cancel.py): that is why this
step exists at all.
"""
from __future__ import annotations

from . import pbio
from .cancel import notify_cancelled

CANCEL_KEY = "cancel_key"


class PostprocessingModel:
    def initialize(self, args):
        self.log = pbio.setup_logging(args["model_name"])

    def execute(self, requests):
        pb_utils = pbio.pb()
        responses = []
        for request in requests:
            inputs = request.inputs()
            if request.is_cancelled():     # the client cancelled the ensemble: tell the target (cancel.py)
                for t in inputs:
                    if t.name() == CANCEL_KEY:
                        notify_cancelled(t.as_numpy().reshape(-1)[0].decode())
                # a normal (empty) response, not an error: see TargetService._check_cancelled
                responses.append(pb_utils.InferenceResponse(output_tensors=[pbio.string_tensor("text_output", "")]))
                continue
            out = [t for t in inputs if t.name() != CANCEL_KEY]
            if not any(t.name() == "text_output" for t in out):    # Triton checks only the number of inputs
                responses.append(pbio.error_response("INVALID_ARG", "postprocessing: text_output is required"))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=out))
        return responses
