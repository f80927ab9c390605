"""TargetService (engine thread + response thread) without Triton, on a real tiny engine.

Invariants: exactly one final message per request, whatever ends it (success, invalid input,
cancellation by the handle or through the cancel inbox, engine failure, shutdown); every path
returns the request's KV blocks.
"""
from __future__ import annotations

import threading
import time

import pytest

from specdec import LLM
from specdec.config import SamplingParams
from specdec.triton.cancel import CancelInbox, notify_cancelled
from specdec.triton.service import ErrorKind, RequestError, TargetService
from specdec.triton.stream_text import Chunk


class Handle:
    """Records what the service sends; ``cancel`` flips is_cancelled()."""

    def __init__(self):
        self.messages: list[tuple[object, bool]] = []
        self.cancel = False
        self.done = threading.Event()

    def is_cancelled(self) -> bool:
        return self.cancel

    def send(self, message, final: bool) -> None:
        self.messages.append((message, final))
        if final:
            self.done.set()

    @property
    def finals(self) -> int:
        return sum(f for _, f in self.messages)

    @property
    def chunks(self) -> list[Chunk]:
        return [m for m, _ in self.messages if isinstance(m, Chunk)]

    @property
    def error(self) -> RequestError | None:
        errs = [m for m, _ in self.messages if isinstance(m, RequestError)]
        return errs[0] if errs else None


@pytest.fixture(scope="module")
def llm(tiny_llama):
    return LLM(str(tiny_llama), draft="self:1", mode="sync", k=3)


@pytest.fixture(scope="module")
def reference(tiny_llama):
    """A second engine for expected outputs (the service's engine belongs to its engine thread)."""
    return LLM(str(tiny_llama), draft="self:1", mode="sync", k=3)


@pytest.fixture
def service(llm):
    inbox = CancelInbox()
    svc = TargetService(llm.engine, cancel_inbox=inbox, idle_wait_s=0.01)
    yield svc
    svc.shutdown()
    inbox.close()


def _wait(handles, timeout_s=60):
    for h in handles:
        assert h.done.wait(timeout_s), "no final message"
    time.sleep(0.05)          # anything sent after the final would show up now


def _text(tok, h: Handle) -> str:
    return "".join(c.text for c in h.chunks)


def test_concurrent_streams_match_generate_and_free_blocks(llm, service, reference):
    tok = llm.tokenizer
    prompts = [tok.encode(p) for p in ("the quick", "caf\u00e9", "hello", "\U0001F600 x", "a b c", "0123", "how", "world")]
    params = SamplingParams(temperature=0.0, max_tokens=30)
    free = llm.engine.runner.num_free_blocks
    handles = [Handle() for _ in prompts]
    for h, p in zip(handles, prompts):
        service.submit(h, p, params, want_stats=True)
    _wait(handles)
    ref = reference.generate(prompts, params)
    for h, r in zip(handles, ref):
        assert h.finals == 1 and h.messages[-1][1] and h.error is None
        assert _text(tok, h) == r.text
        assert h.chunks[-1].finish_reason == r.finish_reason and h.chunks[-1].stats["drafted"] > 0
    assert llm.engine.runner.num_free_blocks == free


def test_invalid_request_gets_one_invalid_arg(llm, service):
    h = Handle()
    service.submit(h, list(range(5)) * 200, SamplingParams(max_tokens=4))      # longer than max_model_len
    _wait([h])
    assert h.finals == 1 and h.error.kind == ErrorKind.INVALID_ARG and "prompt has 1000 tokens" in h.error.message


def test_cancel_by_handle_and_by_inbox(llm, service):
    tok = llm.tokenizer
    free = llm.engine.runner.num_free_blocks
    params = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)
    direct, ensemble, bystander = Handle(), Handle(), Handle()
    service.submit(direct, tok.encode("one"), params)
    service.submit(ensemble, tok.encode("two"), params)
    service.submit(bystander, tok.encode("three"), SamplingParams(temperature=0.0, max_tokens=20))
    deadline = time.monotonic() + 30
    while (len(direct.chunks) < 2 or len(ensemble.chunks) < 2) and time.monotonic() < deadline:
        time.sleep(0.01)
    direct.cancel = True
    key = ensemble.chunks[0].cancel_key
    assert key and notify_cancelled(key.rsplit("/", 1)[0] + "/wrong-secret")   # ignored
    assert notify_cancelled(key)
    _wait([direct, ensemble, bystander])
    assert direct.finals == 1 and direct.error.kind == ErrorKind.CANCELLED
    assert ensemble.finals == 1 and ensemble.error is None and ensemble.chunks[-1].finish_reason == "cancelled"
    assert bystander.finals == 1 and bystander.error is None and sum(c.num_new_tokens for c in bystander.chunks) == 20
    assert len(direct.chunks) < 100 and len(ensemble.chunks) < 100
    assert llm.engine.runner.num_free_blocks == free


def test_rounds_never_wait_on_is_cancelled(llm):
    """In Triton, is_cancelled() is a round trip to the server process: the cancel thread asks it,
    never the engine thread (whose rounds it would lengthen)."""
    askers = set()

    class Asked(Handle):
        def is_cancelled(self) -> bool:
            askers.add(threading.current_thread().name)
            return False
    svc = TargetService(llm.engine, idle_wait_s=0.01, cancel_poll_s=0.001)
    try:
        h = Asked()
        svc.submit(h, llm.tokenizer.encode("x"), SamplingParams(temperature=0.0, max_tokens=60, ignore_eos=True))
        _wait([h])
    finally:
        svc.shutdown()
    assert h.finals == 1 and h.error is None and askers == {"specdec-cancel"}


def test_handle_never_asks_is_cancelled_after_its_final(monkeypatch):
    """Triton frees a request's response factory with its final response; asking is_cancelled() after
    that would read freed memory in the server, so target._Handle answers False without asking."""
    from types import SimpleNamespace

    from specdec.triton import pbio
    from specdec.triton.target import _Handle

    fake = SimpleNamespace(TRITONSERVER_RESPONSE_COMPLETE_FINAL=1, Tensor=lambda name, arr: (name, arr),
                           InferenceResponse=lambda output_tensors: output_tensors)
    monkeypatch.setattr(pbio, "pb", lambda: fake)

    class Request:
        asked = 0

        def request_id(self):
            return "r"

        def get_response_sender(self):
            return SimpleNamespace(send=lambda response, flags: None)

        def is_cancelled(self):
            self.asked += 1
            return False
    r = Request()
    h = _Handle(r, 3, None)
    h.send(Chunk("a", 1, False), False)
    assert h.is_cancelled() is False and r.asked == 1
    h.send(Chunk("b", 1, True, finish_reason="stop"), True)
    assert h.is_cancelled() is False and r.asked == 1


def test_engine_failure_fails_active_requests_and_keeps_serving(llm, service, monkeypatch):
    tok = llm.tokenizer
    free = llm.engine.runner.num_free_blocks
    real_step, calls = llm.engine.step, {"n": 0}

    def flaky_step():
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated device error")
        return real_step()
    monkeypatch.setattr(llm.engine, "step", flaky_step)
    handles = [Handle(), Handle()]
    for h in handles:
        service.submit(h, tok.encode("hello"), SamplingParams(temperature=0.0, max_tokens=50, ignore_eos=True))
    _wait(handles)
    for h in handles:
        assert h.finals == 1 and h.error.kind == ErrorKind.INTERNAL and "simulated device error" in h.error.message
    assert llm.engine.runner.num_free_blocks == free
    ok = Handle()
    service.submit(ok, tok.encode("again"), SamplingParams(temperature=0.0, max_tokens=5))
    _wait([ok])
    assert ok.finals == 1 and ok.error is None and sum(c.num_new_tokens for c in ok.chunks) == 5


def test_shutdown_ends_active_requests(llm):
    svc = TargetService(llm.engine, idle_wait_s=0.01)
    h = Handle()
    svc.submit(h, llm.tokenizer.encode("x"), SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True))
    while not h.chunks:
        time.sleep(0.01)
    svc.shutdown()
    late = Handle()
    svc.submit(late, [1, 2], SamplingParams(max_tokens=2))
    assert h.finals == 1 and h.error.kind == ErrorKind.UNAVAILABLE
    assert not llm.engine.has_unfinished()


def test_past_capacity_submit_answers_unavailable_at_once(llm):
    """Capacity = engine batch + max_queued: one more request is refused from the submitting thread
    (one final UNAVAILABLE), the held ones complete, and their places are released."""
    svc = TargetService(llm.engine, idle_wait_s=0.01, max_queued=2)
    try:
        cap = llm.engine.cfg.max_batch_size + 2
        assert svc.capacity == cap
        params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
        held = [Handle() for _ in range(cap)]
        for h in held:
            assert svc.submit(h, llm.tokenizer.encode("hi"), params)
        extra = Handle()
        assert not svc.submit(extra, llm.tokenizer.encode("hi"), params)
        assert extra.finals == 1 and extra.error.kind == ErrorKind.UNAVAILABLE      # already, synchronously
        assert extra.error.message.startswith("UNAVAILABLE: server overloaded") and f"at most {cap}" in extra.error.message
        _wait(held)
        assert all(h.finals == 1 and h.error is None for h in held)
        counts = svc.counts()
        assert counts["specdec_active_requests"] == 0 and counts["specdec_requests_rejected_total"] == 1
        late = Handle()
        assert svc.submit(late, llm.tokenizer.encode("hi"), SamplingParams(max_tokens=2))     # room again
        _wait([late])
        assert late.error is None
    finally:
        svc.shutdown()
