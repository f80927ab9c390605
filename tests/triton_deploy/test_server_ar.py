"""The deployment in AR mode (no draft): text equality, stop strings, non-streaming and HTTP streaming.

One server for the module, started the way a user does: ``specdec serve --mode ar`` (tiny random
Llama on CPU); stopping it with Ctrl-C (SIGINT) must exit 0.
"""
from __future__ import annotations

import json
import urllib.request

import pytest

pytest.importorskip("tritonclient.grpc")
import stream_client as sc  # noqa: E402
from triton_helpers import ServeProcess, metrics  # noqa: E402

from specdec import LLM, SamplingParams  # noqa: E402

pytestmark = pytest.mark.slow

PROMPTS = ["the quick brown fox", "caf\u00e9 \u65e5\u672c\u8a9e \U0001F600", "speculative decoding", "hello world!"]
MAX_TOKENS = 48


@pytest.fixture(scope="module")
def server(tiny_llama, tmp_path_factory):
    srv = ServeProcess(tmp_path_factory.mktemp("triton_ar"), ["--target", str(tiny_llama), "--mode", "ar", "--cpu"])
    yield srv
    assert srv.stop() == 0, srv.log_tail(40)


@pytest.fixture(scope="module")
def llm(tiny_llama):
    return LLM(str(tiny_llama), mode="ar")


def test_stream_equals_in_process_generate(server, llm):
    ref = llm.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS))
    for prompt, out in zip(PROMPTS, ref):
        r = sc.generate(server.grpc_url, [prompt], max_tokens=MAX_TOKENS, temperature=0.0, drain_s=0.2)[0]
        assert r.error is None, r.error
        assert r.text == out.text, prompt
        assert r.tokens == len(out.token_ids) and r.finish_reason == out.finish_reason
        assert r.finals == 1 and r.late == 0
        assert all(n == 1 for n in r.chunk_tokens)            # AR: one token per round, one round per response
        assert r.num_input_tokens == len(llm.encode(prompt, SamplingParams()))
        assert r.drafted == 0


def test_seeded_sampling_equals_in_process(server, llm):
    params = SamplingParams(temperature=0.8, top_p=0.9, top_k=50, max_tokens=24, seed=1234)
    ref = llm.generate([PROMPTS[0]], params)[0]
    r = sc.generate(server.grpc_url, [PROMPTS[0]], max_tokens=24, temperature=0.8, top_p=0.9, top_k=50, seed=1234)[0]
    assert r.error is None and r.text == ref.text


def test_stop_strings_cut_like_the_engine(server, llm, tiny_llama):
    """A stop string taken from the greedy output itself: the streamed text stops where the engine's does."""
    full = llm.generate([PROMPTS[0]], SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS))[0].text
    stop = full[len(full) // 2: len(full) // 2 + 3]
    assert stop.strip(), full
    ref = llm.generate([PROMPTS[0]], SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, stop=[stop]))[0]
    r = sc.generate(server.grpc_url, [PROMPTS[0]], max_tokens=MAX_TOKENS, temperature=0.0, stop=[stop])[0]
    assert r.error is None and r.text == ref.text and r.finish_reason == "stop"
    assert stop not in r.text


def test_non_streaming_request_gets_one_response(server, llm):
    ref = llm.generate([PROMPTS[1]], SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS))[0]
    r = sc.generate(server.grpc_url, [PROMPTS[1]], max_tokens=MAX_TOKENS, temperature=0.0, stream=False, drain_s=0.2)[0]
    assert r.error is None and len(r.chunks) == 1 and r.finals == 1 and r.late == 0
    assert r.text == ref.text and r.tokens == len(ref.token_ids)
    body = json.dumps({"text_input": PROMPTS[1], "max_tokens": MAX_TOKENS, "temperature": 0.0, "stream": False})
    req = urllib.request.Request(f"{server.http_url}/v2/models/ensemble/generate", data=body.encode())
    out = json.loads(urllib.request.urlopen(req, timeout=60).read())        # generate = exactly one response
    assert out["text_output"] == ref.text and out["num_output_tokens"] == len(ref.token_ids)


def test_http_generate_stream(server, llm):
    ref = llm.generate([PROMPTS[2]], SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS))[0]
    body = json.dumps({"text_input": PROMPTS[2], "max_tokens": MAX_TOKENS, "temperature": 0.0})
    req = urllib.request.Request(f"{server.http_url}/v2/models/ensemble/generate_stream", data=body.encode())
    events = [json.loads(line[len(b"data: "):]) for line in urllib.request.urlopen(req, timeout=60).read().splitlines()
              if line.startswith(b"data: ")]
    assert "".join(e["text_output"] for e in events) == ref.text
    assert sum(e["num_output_tokens"] for e in events) == len(ref.token_ids)
    assert events[-1]["finish_reason"] == ref.finish_reason


def test_kv_blocks_all_free_when_idle(server):
    m = metrics(server)
    assert m["specdec_running_requests"] == 0 and m["specdec_waiting_requests"] == 0
    assert m["specdec_requests_finished_total"] >= 6 and m["specdec_requests_aborted_total"] == 0
