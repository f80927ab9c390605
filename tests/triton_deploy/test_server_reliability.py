"""Reliability of the served system: bad input, cancellation storms, overload, metrics, draft failure.

One tritonserver for the module: tiny random Llama target on CPU, SSD (mode async) with the draft
(the target's first layer) as its own Triton model, whose worker process joins the target through
the draft channel. Engine batch 8, at most 24 more requests queued (capacity 32).

* Every kind of bad request in docs/bad-input.md gets one error naming field, value and range
  (or, where Triton answers first, exactly what the table says), and the server keeps serving.
* 200 streams cancelled or dropped at seeded random points, plus a client process killed with
  open streams: the KV pool returns to its starting size, nothing keeps generating, and a new
  request gets the right output.
* Past capacity, requests get UNAVAILABLE at once; the accepted ones complete.
* The specdec_* metrics on the metrics port move as requests run.
* The draft worker process is SIGKILLed mid-stream: the in-flight requests finish in AR mode with
  unchanged greedy output, the target logs it and counts it, and speculates again once the draft
  model has started a new worker. Then the draft model's own process (its Triton instance) is
  killed: AR until a worker started by hand joins the rendezvous (last: the draft model is gone);
  `specdec serve`'s stub watcher reports it as a warning, not a reason to stop.
"""
from __future__ import annotations

import json
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc")
import stream_client as sc  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
from bad_inputs import cases  # noqa: E402
from triton_helpers import gpu_under_test, metrics, speculates, start_server, stop_server, wait_for  # noqa: E402
from tritonclient.utils import np_to_triton_dtype  # noqa: E402

from specdec import LLM, SamplingParams  # noqa: E402
from specdec.processes import free_port  # noqa: E402
from specdec.triton.settings import Settings  # noqa: E402
from specdec.triton.watch import StubWatcher, find_stubs  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BATCH, QUEUED = 8, 24
CAPACITY = BATCH + QUEUED
PROMPTS = ["the quick brown fox", "speculative decoding drafts tokens", "caf\u00e9 na\u00efve", "hello world! the lazy"]


@pytest.fixture(scope="module")
def server(tiny_llama, tmp_path_factory):
    settings = Settings(target=str(tiny_llama), draft="self:1", mode="async", k=4, draft_location="separate",
                        rendezvous=f"tcp://127.0.0.1:{free_port()}", max_batch_size=BATCH,
                        max_queued_requests=QUEUED, cpu_threads=1)
    srv = start_server(tmp_path_factory.mktemp("triton_reliability"), settings, exit_timeout_s=10)
    srv.settings, srv.extra_processes, srv.draft_stub_killed = settings, [], False
    yield srv
    code = stop_server(srv)
    for p in srv.extra_processes:          # a draft worker started by a test exits on the target's EXIT
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if srv.draft_stub_killed:              # Triton 2.51 cannot unload a model whose stub is dead
        assert code == 1 and "Exit timeout expired" in srv.log_tail(5), srv.log_tail(40)
    else:
        assert code == 0, srv.log_tail(40)


@pytest.fixture(scope="module")
def ar_llm(tiny_llama):
    """Greedy references: plain AR on the same target (speculation is lossless)."""
    return LLM(str(tiny_llama), mode="ar")


def _greedy(llm, prompt: str, n: int) -> str:
    return llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True))[0].text


# Requests that must still be running while a test looks (metrics sampled every 50 ms, a draft killed mid-stream)
# are longer on a GPU, where the tiny model's round takes ~1 ms: 48 tokens there end within one metrics sample.
RUNNING_TOKENS = 320 if gpu_under_test() is not None else 0


def _long(n: int, **kw) -> dict:
    """Inputs for a request that generates exactly n tokens (min_length >= max_tokens: EOS ignored)."""
    return {"min_length": np.array([[n]], np.int32), **kw}


def _draft_status(server) -> dict:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    query = grpcclient.InferInput("query", [1, 1], "BYTES")
    query.set_data_from_numpy(np.array([[b"status"]], dtype=object))
    return json.loads(client.infer("draft", [query]).as_numpy("status").reshape(-1)[0])


@pytest.fixture(scope="module")
def draft_joined(server):
    assert wait_for(lambda: speculates(server.grpc_url), timeout_s=180, interval_s=0.5), "the draft model never joined the target"
    return True


def _settled(server, quiet_s: float = 1.0, timeout_s: float = 120.0) -> dict:
    """Metrics once the target holds no request and nothing changed for quiet_s (the metrics are
    refreshed every 0.25 s while busy, and requests may still be on their way through Triton)."""
    deadline = time.monotonic() + timeout_s
    prev = metrics(server)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        m = metrics(server)
        if m["specdec_active_requests"] == 0 and m == prev:
            return m
        prev = m
    raise AssertionError(f"the server did not settle: {prev}")


# --- bad input ------------------------------------------------------------------------------------

def _bad_cases(tiny_llama):
    from transformers import AutoTokenizer

    from specdec.triton.preprocessing import input_byte_cap
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    long_prompt = "x" * 600
    assert len(tok.encode(long_prompt)) >= 512
    return cases(input_byte_cap(tok, 512), long_prompt)


def _grpc_inputs(case) -> list:
    arrays = {"text_input": np.array([[b"hi"]], dtype=object), **case.payload} if case.model == "ensemble" else case.payload
    inputs = []
    for name, arr in arrays.items():
        if arr is None:
            continue
        t = grpcclient.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        t.set_data_from_numpy(arr)
        if name in case.raw:
            t._raw_content = case.raw[name]        # a malformed encoding, which tritonclient would never make
        inputs.append(t)
    return inputs


def _send_grpc(url, case) -> sc.Result:
    if case.model == "ensemble":
        return sc.generate(url, ["x"], inputs=[_grpc_inputs(case)], parameters=case.parameters or None, timeout_s=60,
                           drain_s=0.2)[0]
    # another model: its own outputs (stream_client asks for the ensemble's)
    r, q = sc.Result("0"), queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: q.put((result, error)))
    try:
        client.async_stream_infer(case.model, _grpc_inputs(case), enable_empty_final_response=True)
        while r.finals == 0:
            result, error = q.get(timeout=60)
            if error is not None:
                r.error, r.finals = error.message(), 1
            elif result.get_response().parameters["triton_final_response"].bool_param:
                r.finals = 1
            else:
                r.chunks.append("data")
    finally:
        client.stop_stream()
        client.close()
    return r


def _send_http(url, body, path: str = "/v2/models/ensemble/generate_stream",
               headers: dict | None = None) -> tuple[int, list[dict], str]:
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(f"{url}{path}", data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    events = [json.loads(line[len("data: "):]) for line in text.splitlines() if line.startswith("data: ")]
    if not events and text.strip():
        events = [json.loads(text)]          # errors before streaming starts come as one JSON body
    return status, events, text


def _stub_pids(server) -> dict[str, int]:
    return {st.instance: st.proc.pid for st in find_stubs(server.proc.pid)}


def test_every_bad_request_is_refused_and_the_server_keeps_serving(server, tiny_llama, ar_llm):
    """Each bad request gets its one error, no stub process dies, and valid streams served at the
    same time (started before the first bad request, running past the last) are untouched."""
    failures = []
    before, stubs = metrics(server), _stub_pids(server)
    assert set(stubs) == {"preprocessing_0_0", "target_0_0", "draft_0_0", "postprocessing_0_0"}
    beside, done, n = [], threading.Event(), 48

    def serve_valid_requests():              # two at a time, from before the first bad request to after the last
        while not done.is_set():
            beside.extend(sc.generate(server.grpc_url, PROMPTS[:2], inputs=[
                sc.make_inputs(p, n, temperature=0.0, extra=_long(n)) for p in PROMPTS[:2]]))
    thread = threading.Thread(target=serve_valid_requests)
    thread.start()
    assert wait_for(lambda: metrics(server)["specdec_active_requests"] > 0, timeout_s=30)
    for case in _bad_cases(tiny_llama):
        if case.transport == "grpc":
            r = _send_grpc(server.grpc_url, case)
            message, ok = r.error or "", r.error is not None and r.finals == 1 and r.late == 0 and not r.chunks
        else:
            path = "/v2/models/ensemble/generate_stream" if case.transport == "http" else f"/v2/models/{case.model}/infer"
            status, events, text = _send_http(server.http_url, case.payload, path, case.headers)
            message = events[0].get("error", "") if len(events) == 1 else text
            ok = status == case.status and len(events) == 1
        ok = ok and all(n in message for n in case.needles)
        if case.ours:     # our errors name the field, the value and the allowed range
            ok = ok and "allowed" in message
        if not ok:
            failures.append(f"{case.kind}: {message[:300]!r}")
        if _stub_pids(server) != stubs:
            failures.append(f"{case.kind}: a stub process died: {stubs} -> {_stub_pids(server)}")
            stubs = _stub_pids(server)
    done.set()
    thread.join(300)
    assert not failures, "\n".join(failures)
    want = [_greedy(ar_llm, p, n) for p in PROMPTS[:2]]
    assert len(beside) >= 4 and [r.text for r in beside] == want * (len(beside) // 2)
    assert all(r.error is None and r.finals == 1 for r in beside)
    after = _settled(server)
    assert after["specdec_kv_free_blocks"] == after["specdec_kv_total_blocks"]
    # no engine work for any bad request: only the valid ones finished
    assert after["specdec_requests_finished_total"] == before["specdec_requests_finished_total"] + len(beside)
    r = sc.generate(server.grpc_url, [PROMPTS[0]], inputs=[sc.make_inputs(PROMPTS[0], 24, temperature=0.0,
                                                                          extra=_long(24))])[0]
    assert r.error is None and r.finals == 1 and r.text == _greedy(ar_llm, PROMPTS[0], 24)


def test_bad_input_doc_lists_exactly_the_tested_kinds(tiny_llama):
    doc = (ROOT / "docs" / "bad-input.md").read_text()
    rows = [line.split("|")[2].strip().strip("`") for line in doc.splitlines()
            if line.startswith("|") and line.split("|")[1].strip().isdigit()]
    kinds = [c.kind for c in _bad_cases(tiny_llama)]
    assert sorted(rows) == sorted(kinds) and len(kinds) >= 20
    assert "docs/bad-input.md" in (ROOT / "README.md").read_text()


# --- cancellation ------------------------------------------------------------------------------------

def _stream_then_cancel(url: str, rid: str, prompt: str, max_tokens: int, after_chunks: int, how: str) -> tuple[int, str]:
    """Read ``after_chunks`` data responses, then cancel the stream ("cancel") or drop the connection
    ("drop": the gRPC channel closes without closing the stream). Returns (tokens received, outcome)."""
    client = grpcclient.InferenceServerClient(url)
    q: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: q.put((result, error)))
    client.async_stream_infer("ensemble", sc.make_inputs(prompt, max_tokens, temperature=0.0, extra=_long(max_tokens)),
                              request_id=rid, enable_empty_final_response=True,
                              outputs=[grpcclient.InferRequestedOutput(n) for n in ("text_output", "num_output_tokens")])
    tokens, chunks, outcome = 0, 0, "cancelled"
    try:
        while chunks < after_chunks:
            result, error = q.get(timeout=120)
            if error is not None:
                return tokens, f"error: {error.message()}"
            n = result.as_numpy("num_output_tokens")
            if n is not None:
                tokens += int(n.reshape(-1)[0])
                chunks += 1
            if result.get_response().parameters["triton_final_response"].bool_param:
                return tokens, "finished"
    finally:
        if how == "drop":
            client._channel.close()          # the connection goes away; then tidy the client's threads
        client.stop_stream(cancel_requests=True)
        client.close()
    return tokens, outcome


KILLED_CLIENT = """
import sys, time
sys.path.insert(0, sys.argv[2])
import numpy as np, stream_client as sc
import tritonclient.grpc as grpcclient
clients = []
for i in range(int(sys.argv[3])):
    c = grpcclient.InferenceServerClient(sys.argv[1])
    c.start_stream(callback=lambda result, error: None)
    c.async_stream_infer("ensemble", sc.make_inputs(f"stream {i}", 200, temperature=0.0,
                         extra={"min_length": np.array([[200]], np.int32)}), request_id=f"killed-{i}",
                         enable_empty_final_response=True)
    clients.append(c)
print("sent", flush=True)
time.sleep(600)
"""


def test_200_cancelled_streams_return_every_kv_block(server, draft_joined, ar_llm):
    start = _settled(server)
    rng = random.Random(1234)
    plan = [(rng.choice(PROMPTS), rng.randint(0, 10), rng.choice(["cancel", "drop"])) for _ in range(200)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        outcomes = list(pool.map(lambda ip: _stream_then_cancel(server.grpc_url, f"storm-{ip[0]}", ip[1][0], 200, ip[1][1],
                                                                ip[1][2]), enumerate(plan)))
    # a client process with 8 open streams dies (its sockets close with it)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, server.grpc_url, str(ROOT / "client"), "8"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "sent"
    time.sleep(rng.uniform(0.5, 1.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    assert [o for _, o in outcomes if o != "cancelled"] == []
    end = _settled(server)
    assert end["specdec_kv_free_blocks"] == start["specdec_kv_free_blocks"] == end["specdec_kv_total_blocks"]
    assert end["specdec_running_requests"] == 0 and end["specdec_waiting_requests"] == 0
    cancelled = end["specdec_requests_cancelled_total"] - start["specdec_requests_cancelled_total"]
    reached = sum(1 for tokens, _ in outcomes if tokens > 0)
    assert reached <= cancelled <= 208
    assert end["specdec_requests_finished_total"] == start["specdec_requests_finished_total"]   # none of the 200-token asks ran to the end
    # Each stream stops within a round or two of the client's cancel: the target logs the rounds it
    # ran for each cancelled request; the client read plan[i][1] of them. One round is usually in
    # flight when the client cancels; the target aborts before the round after it learns of it.
    ran = {int(m.group(1)): int(m.group(2)) for m in
           re.finditer(r"\(id 'storm-(\d+)'\) cancelled after \d+ tokens in (\d+) rounds", server.log_path.read_text())}
    extra = [ran[i] - plan[i][1] for i in ran]
    # The tail is bounded loosely: a round of the tiny model takes ~1 ms, so the few ms that a cancel
    # needs to cross gRPC and Triton can span dozens of rounds when other work shares the 2 cores
    # (seen: 9 on a quiet machine, 43 beside another test suite). The 85 % rule below is the real check.
    assert len(ran) >= reached and min(extra) >= 0 and max(extra) <= 60, sorted(extra)
    # 90 % stop within `soon` rounds. A round on a GPU is ~1-2 ms, shorter than the cancel's way through the
    # ensemble (postprocessing sees it on its next response, then the target's inbox), so there the same wall time
    # spans more rounds: on one H100, 166 of 189 stopped within 2 rounds and none of the last 57 took more than 4.
    soon = 2 if gpu_under_test() is None else 5
    # seen on CPU: 98-99 % within 2, and once 89 % (171 of 192) in a full fresh-clone run on 2 cores
    assert sum(1 for x in extra if x <= soon) >= 0.85 * len(extra), sorted(extra)
    generated = end["specdec_generated_tokens_total"] - start["specdec_generated_tokens_total"]
    received = sum(tokens for tokens, _ in outcomes)
    assert 0 <= generated - received <= 3 * 5 * (len(plan) + 8), (generated, received)    # a round: <= K+1 tokens
    time.sleep(0.5)
    assert metrics(server)["specdec_generated_tokens_total"] == end["specdec_generated_tokens_total"]   # nothing runs on
    r = sc.generate(server.grpc_url, [PROMPTS[1]], inputs=[sc.make_inputs(PROMPTS[1], 24, temperature=0.0,
                                                                          extra=_long(24))])[0]
    assert r.error is None and r.finals == 1 and r.text == _greedy(ar_llm, PROMPTS[1], 24)


# --- overload --------------------------------------------------------------------------------------

def test_past_capacity_requests_get_unavailable_at_once(server, draft_joined, ar_llm):
    """Hold the server at capacity with long streams, then send more: each extra one is refused at
    once; the held ones keep streaming; cancelling them frees everything."""
    start = _settled(server)
    held, got = [], queue.Queue()
    for i in range(CAPACITY):
        c = grpcclient.InferenceServerClient(server.grpc_url)
        c.start_stream(callback=lambda result, error, i=i: got.put((i, result, error)))
        c.async_stream_infer("ensemble", sc.make_inputs(f"held {i}", 200, temperature=0.0, extra=_long(200)),
                             enable_empty_final_response=True)
        held.append(c)
    try:
        assert wait_for(lambda: metrics(server)["specdec_active_requests"] == CAPACITY, timeout_s=30)
        extra = sc.generate(server.grpc_url, [""] * 16, inputs=[sc.make_inputs("one more", 8) for _ in range(16)],
                            timeout_s=60, drain_s=0.2)
        assert all(r.error is not None and r.error.count("UNAVAILABLE: server overloaded") == 1
                   and f"allowed at most {CAPACITY}" in r.error for r in extra), [r.error for r in extra][:3]
        assert all(r.finals == 1 and r.late == 0 and not r.chunks for r in extra)
        assert max(r.t_end - r.t_send for r in extra) < 2.0            # at once, not after queueing
        m = metrics(server)
        assert m["specdec_active_requests"] == CAPACITY and m["specdec_running_requests"] == BATCH
        assert m["specdec_waiting_requests"] == QUEUED                # the queue is full, not growing
        errors = []
        while not got.empty():
            i, result, error = got.get()
            if error is not None:
                errors.append(error)
        assert not errors, errors[:3]                                  # the held streams are unharmed
    finally:
        for c in held:
            c.stop_stream(cancel_requests=True)
            c.close()
    end = _settled(server)
    assert end["specdec_requests_rejected_total"] - start["specdec_requests_rejected_total"] == 16
    assert end["specdec_kv_free_blocks"] == end["specdec_kv_total_blocks"]
    assert end["specdec_max_active_requests"] == CAPACITY
    r = sc.generate(server.grpc_url, [PROMPTS[2]], inputs=[sc.make_inputs(PROMPTS[2], 16, temperature=0.0,
                                                                          extra=_long(16))])[0]
    assert r.error is None and r.text == _greedy(ar_llm, PROMPTS[2], 16)


# --- metrics -------------------------------------------------------------------------------------

def test_metrics_move_as_requests_run(server, draft_joined):
    before = _settled(server)
    for name in ("specdec_kv_free_blocks", "specdec_acceptance_rate", "specdec_cache_hit_rate", "specdec_draft_connected",
                 "specdec_running_requests", "specdec_ar_fallbacks_total", "specdec_draft_seconds_total",
                 "specdec_verify_seconds_total", "specdec_tokens_per_round_total"):
        assert name in before, name
    seen = {"running": 0, "kv_used": 0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            m = metrics(server)
            seen["running"] = max(seen["running"], m["specdec_running_requests"])
            seen["kv_used"] = max(seen["kv_used"], m["specdec_kv_total_blocks"] - m["specdec_kv_free_blocks"])
            time.sleep(0.05)
    sampler = threading.Thread(target=sample)
    sampler.start()
    n = RUNNING_TOKENS or 48
    results = sc.generate(server.grpc_url, PROMPTS, inputs=[sc.make_inputs(p, n, temperature=0.0, extra=_long(n))
                                                           for p in PROMPTS])
    stop.set()
    sampler.join()
    assert all(r.error is None and r.tokens == n for r in results)
    after = _settled(server)
    d = {k: after[k] - before.get(k, 0) for k in after}
    assert seen["running"] >= 2 and seen["kv_used"] > 0
    assert d["specdec_generated_tokens_total"] == 4 * n
    assert d["specdec_draft_tokens_total"] == sum(r.drafted for r in results) > 0
    assert d["specdec_accepted_draft_tokens_total"] == sum(r.accepted for r in results)
    assert d["specdec_spec_rounds_total"] > 0 and d["specdec_draft_steps_total"] > 0 and d["specdec_verify_steps_total"] > 0
    assert d["specdec_draft_seconds_total"] > 0 and d["specdec_verify_seconds_total"] > 0
    assert d["specdec_cache_lookups_total"] > 0 and d["specdec_cache_hits_total"] >= 0     # SSD looks up its cache
    assert after["specdec_tokens_per_round_total"] - before["specdec_tokens_per_round_total"] == d["specdec_spec_rounds_total"]
    assert after["specdec_acceptance_rate"] == pytest.approx(after["specdec_accepted_draft_tokens_total"]
                                                             / after["specdec_draft_tokens_total"])
    assert after["specdec_draft_connected"] == 1 and d["specdec_requests_finished_total"] == 4
    assert after["specdec_kv_free_blocks"] == after["specdec_kv_total_blocks"]


# --- draft failure -------------------------------------------------------------------------------

def test_killed_draft_worker_falls_back_to_ar_and_rejoins(server, draft_joined, ar_llm):
    before = _settled(server)
    status = _draft_status(server)
    assert status["status"] == "running" and status["worker_pid"]
    n = RUNNING_TOKENS or 64
    first = threading.Event()
    out = {}

    def on_text(i, text):
        if i == 0:
            first.set()

    def run():
        out["results"] = sc.generate(server.grpc_url, PROMPTS, on_text=on_text,
                                     inputs=[sc.make_inputs(p, n, temperature=0.0, extra=_long(n)) for p in PROMPTS])
    thread = threading.Thread(target=run)
    thread.start()
    assert first.wait(60)
    wait_for(lambda: metrics(server)["specdec_spec_rounds_total"] > before["specdec_spec_rounds_total"] + 8, timeout_s=30)
    os.kill(status["worker_pid"], signal.SIGKILL)            # the draft's process dies mid-stream
    thread.join(300)
    results = out["results"]
    assert [r.error for r in results] == [None] * len(PROMPTS)
    assert [r.text for r in results] == [_greedy(ar_llm, p, n) for p in PROMPTS]      # greedy output unchanged
    assert all(r.finals == 1 and r.tokens == n for r in results)
    m = _settled(server)
    assert m["specdec_ar_fallbacks_total"] == before["specdec_ar_fallbacks_total"] + 1
    assert "draft channel failed" in server.log_path.read_text()
    # the draft model starts a new worker; it joins and the target speculates again
    assert wait_for(lambda: speculates(server.grpc_url), timeout_s=120, interval_s=0.5), server.log_tail(30)
    m = _settled(server)
    assert m["specdec_draft_connected"] == 1
    assert m["specdec_draft_attaches_total"] == before["specdec_draft_attaches_total"] + 1
    new = _draft_status(server)
    assert new["worker_starts"] == status["worker_starts"] + 1 and new["last_exit_code"] == -signal.SIGKILL
    assert m["specdec_kv_free_blocks"] == m["specdec_kv_total_blocks"]


def test_killed_draft_instance_leaves_ar_until_a_worker_rejoins(server, draft_joined, ar_llm):
    """The draft's Triton instance (its stub process) dies: its worker dies with it, the target
    finishes in AR and keeps serving AR (Triton 2.51 does not restart a stub; model control is
    off); a draft worker started by hand at the same rendezvous brings speculation back."""
    psutil = pytest.importorskip("psutil")
    before = _settled(server)
    worker = _draft_status(server)["worker_pid"]
    (stub,) = [p for p in psutil.Process(server.proc.pid).children() if "draft_0_0" in " ".join(p.cmdline())]
    watcher = StubWatcher(server.proc.pid, server.repository, server.log_path)     # what `specdec serve` runs
    assert {st.instance for st in watcher.stubs} == {"preprocessing_0_0", "target_0_0", "draft_0_0", "postprocessing_0_0"}
    n, out, first = 48, {}, threading.Event()

    def run():
        out["results"] = sc.generate(server.grpc_url, PROMPTS, on_text=lambda i, t: first.set(),
                                     inputs=[sc.make_inputs(p, n, temperature=0.0, extra=_long(n)) for p in PROMPTS])
    thread = threading.Thread(target=run)
    thread.start()
    assert first.wait(60)
    stub.kill()                                              # the draft model's process
    server.draft_stub_killed = True
    thread.join(300)
    assert [r.text for r in out["results"]] == [_greedy(ar_llm, p, n) for p in PROMPTS]
    fatal, warnings = watcher.poll()          # a dead draft stub is reported once; the server keeps serving (AR)
    assert fatal is None and len(warnings) == 1 and "'draft_0_0'" in warnings[0] and "autoregressively" in warnings[0]
    assert watcher.poll() == (None, [])
    assert all(r.error is None and r.finals == 1 for r in out["results"])
    assert wait_for(lambda: not psutil.pid_exists(worker) or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE,
                    timeout_s=10)                            # the worker died with it (PR_SET_PDEATHSIG)
    m = _settled(server)
    assert m["specdec_ar_fallbacks_total"] == before["specdec_ar_fallbacks_total"] + 1 and m["specdec_draft_connected"] == 0
    with pytest.raises(Exception, match="not healthy"):
        _draft_status(server)
    r = sc.generate(server.grpc_url, ["the quick"], max_tokens=8, temperature=0.0)[0]
    assert r.error is None and r.drafted == 0                # AR, and still serving
    s = server.settings
    by_hand = subprocess.Popen([sys.executable, "-m", "specdec.draft.worker", "--config", s.worker_config("cpu").to_json(),
                                "--rendezvous", s.rendezvous, "--num-threads", "1", "--connect-timeout", "120"])
    server.extra_processes.append(by_hand)

    assert wait_for(lambda: speculates(server.grpc_url), timeout_s=120, interval_s=0.5), server.log_tail(30)
    # the gauges are sampled by the target's metrics thread: wait for its next pass
    assert wait_for(lambda: metrics(server)["specdec_draft_connected"] == 1, timeout_s=15, interval_s=0.25)
