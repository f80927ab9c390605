"""The deployment end to end: sync speculative decoding with the draft as its own Triton model.

One tritonserver for the module (tiny random Llama target, draft = its first layer, both on CPU,
connected through the draft worker's channel). Covers: streamed text == in-process
``LLM.generate`` at temperature 0 (K > 0 and K = 0), exactly one final response per request,
8 concurrent streams, cancellation returning KV blocks, bad requests answered INVALID_ARG while
the server keeps serving, multi-byte text through the ensemble, postprocessing's pass-through, and perf_analyzer.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc")
import stream_client as sc  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
from triton_helpers import metrics, speculates, start_server, stop_server, wait_for  # noqa: E402

from specdec import LLM, SamplingParams  # noqa: E402
from specdec.processes import free_port  # noqa: E402
from specdec.triton.settings import Settings  # noqa: E402

pytestmark = pytest.mark.slow

PROMPTS = ["the quick brown fox", "speculative decoding drafts tokens", "caf\u00e9 na\u00efve \u00fcber",
           "\u65e5\u672c\u8a9e \U0001F600 hello", "how are you today?", "0123456789", "the target verifies",
           "hello world! the lazy dog"]
MAX_TOKENS = 40


@pytest.fixture(scope="module")
def server(tiny_llama, tmp_path_factory):
    settings = Settings(target=str(tiny_llama), draft="self:1", mode="sync", k=4, draft_location="separate",
                        rendezvous=f"tcp://127.0.0.1:{free_port()}", max_batch_size=16)
    srv = start_server(tmp_path_factory.mktemp("triton_sync"), settings)
    yield srv
    assert stop_server(srv) == 0, srv.log_tail(40)


@pytest.fixture(scope="module")
def reference(tiny_llama):
    """Greedy texts from the in-process engine (same target, sync mode with the same draft)."""
    llm = LLM(str(tiny_llama), draft="self:1", mode="sync", k=4)
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS))
    return {p: o.text for p, o in zip(PROMPTS, outs)}


@pytest.fixture(scope="module")
def draft_joined(server):
    """Requests until one is speculated by the separate draft model (it joins in the background)."""
    assert wait_for(lambda: speculates(server.grpc_url), timeout_s=120, interval_s=0.5), "the draft model never joined the target"
    return True


def test_draft_model_is_separate_and_joined(server, draft_joined):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    query = grpcclient.InferInput("query", [1, 1], "BYTES")
    query.set_data_from_numpy(np.array([[b"status"]], dtype=object))
    status = json.loads(client.infer("draft", [query]).as_numpy("status").reshape(-1)[0])
    assert status["draft_location"] == "separate" and status["draft"] == "self:1"
    assert metrics(server)["specdec_draft_tokens_total"] > 0


def test_stream_equals_in_process_generate(server, reference, draft_joined):
    for prompt in PROMPTS[:4]:
        r = sc.generate(server.grpc_url, [prompt], max_tokens=MAX_TOKENS, temperature=0.0, drain_s=0.3)[0]
        assert r.error is None, r.error
        assert r.text == reference[prompt], prompt
        assert r.finals == 1 and r.late == 0
        assert r.tokens == MAX_TOKENS or r.finish_reason == "stop"
        assert r.drafted > 0 and 0.0 <= r.acceptance_rate <= 1.0
        assert len(r.chunks) < r.tokens or r.accepted == 0   # accepted drafts make multi-token chunks


def test_autoregressive_requests_equal_in_process_generate(server, reference):
    r = sc.generate(server.grpc_url, PROMPTS[:2], max_tokens=MAX_TOKENS, temperature=0.0, num_draft_tokens=0)
    for prompt, res in zip(PROMPTS[:2], r):
        assert res.error is None and res.text == reference[prompt]
        assert res.drafted == 0 and all(n == 1 for n in res.chunk_tokens)


def test_eight_concurrent_streams(server, reference, draft_joined):
    before = metrics(server)
    results = sc.generate(server.grpc_url, PROMPTS, max_tokens=MAX_TOKENS, temperature=0.0, drain_s=0.3)
    assert [r.error for r in results] == [None] * 8
    assert [r.text for r in results] == [reference[p] for p in PROMPTS]
    assert all(r.finals == 1 and r.late == 0 for r in results)
    assert wait_for(lambda: metrics(server)["specdec_running_requests"] == 0)
    after = metrics(server)
    assert after["specdec_kv_free_blocks"] == before["specdec_kv_free_blocks"]
    assert after["specdec_requests_finished_total"] - before["specdec_requests_finished_total"] == 8


def test_cancelled_stream_stops_and_frees_kv_blocks(server):
    before = metrics(server)
    results = _generate_with_one_cancel(server, ["tell me a very long story", "hello world"])
    assert results[0].error == "cancelled by the client" and len(results[0].chunks) == 3
    assert results[1].error is None and results[1].finals == 1 and results[1].tokens == 8
    aborted = before["specdec_requests_aborted_total"] + 1
    assert wait_for(lambda: metrics(server)["specdec_requests_aborted_total"] == aborted, timeout_s=20)
    assert wait_for(lambda: metrics(server)["specdec_running_requests"] == 0)
    m = metrics(server)
    assert m["specdec_kv_free_blocks"] == before["specdec_kv_free_blocks"]
    generated = m["specdec_decode_tokens_total"] - before["specdec_decode_tokens_total"]
    assert generated < 100, f"{generated} tokens decoded: the cancelled request (max_tokens=400) kept running"
    time.sleep(0.5)
    assert metrics(server)["specdec_decode_tokens_total"] == m["specdec_decode_tokens_total"]
    again = sc.generate(server.grpc_url, ["the quick"], max_tokens=5, temperature=0.0)[0]
    assert again.error is None and again.tokens == 5


def _generate_with_one_cancel(server, prompts):
    """prompts[0] asks for 400 tokens and is cancelled after 3 chunks; the others run to the end."""
    long = {"min_length": np.array([[400]], np.int32)}          # min_length >= max_tokens: ignore EOS
    inputs = [sc.make_inputs(p, 400 if i == 0 else 8, temperature=0.0, extra=long if i == 0 else None)
              for i, p in enumerate(prompts)]
    out = {}

    def run(i):
        out[i] = sc.generate(server.grpc_url, [prompts[i]], inputs=[inputs[i]],
                             cancel_after_chunks=3 if i == 0 else None)[0]
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return [out[i] for i in range(len(prompts))]


BAD_HTTP = [
    ({"text_input": "", "max_tokens": 8}, "text_input"),
    ({"text_input": "hi", "max_tokens": 0}, "max_tokens=0"),
    ({"text_input": "hi", "max_tokens": -3}, "max_tokens=-3"),
    ({"text_input": "hi", "max_tokens": 100000}, "max_tokens=100000"),
    ({"text_input": "hi", "max_tokens": 8, "temperature": -0.5}, "temperature=-0.5"),
    ({"text_input": "hi", "max_tokens": 8, "top_p": 0.0}, "top_p=0.0"),
    ({"text_input": "hi", "max_tokens": 8, "top_p": 1.5}, "top_p=1.5"),
    ({"text_input": "hi", "max_tokens": 8, "num_draft_tokens": 17}, "num_draft_tokens=17"),
    ({"text_input": "hi", "max_tokens": 8, "num_draft_tokens": -1}, "num_draft_tokens=-1"),
    ({"text_input": "hello " * 600, "max_tokens": 8}, "text_input has"),
    ({"text_input": "hi", "max_tokens": 8, "apply_chat_template": True}, "apply_chat_template"),
]


@pytest.mark.parametrize("body,needle", BAD_HTTP, ids=[b[1].split("=")[0] + str(i) for i, b in enumerate(BAD_HTTP)])
def test_bad_request_is_invalid_arg_and_server_keeps_serving(server, body, needle):
    req = urllib.request.Request(f"{server.http_url}/v2/models/ensemble/generate", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 400                       # Triton maps INVALID_ARG to HTTP 400
    message = json.loads(e.value.read())["error"]
    assert needle in message and "allowed" in message, message
    ok = sc.generate(server.grpc_url, ["the quick"], max_tokens=3, temperature=0.0)[0]
    assert ok.error is None and ok.tokens == 3


def test_bad_requests_over_grpc_stream(server):
    """NaN and a wrong dtype (Triton itself rejects it, naming the input and the expected type).
    Stream errors carry no status code in tritonclient; the HTTP test above checks the 400."""
    nan = sc.generate(server.grpc_url, ["hi"], max_tokens=4, temperature=float("nan"))[0]
    assert "temperature=nan" in nan.error and "allowed" in nan.error and nan.finals == 1
    wrong = sc.generate(server.grpc_url, ["hi"], inputs=[[*sc.make_inputs("hi", None),
                                                          *_fp32("max_tokens", 4.0)]])[0]
    assert "'max_tokens'" in wrong.error and "INT32" in wrong.error and wrong.finals == 1, wrong.error
    ok = sc.generate(server.grpc_url, ["the quick"], max_tokens=3, temperature=0.0)[0]
    assert ok.error is None and ok.tokens == 3


def _fp32(name, value):
    t = grpcclient.InferInput(name, [1, 1], "FP32")
    t.set_data_from_numpy(np.array([[value]], np.float32))
    return [t]


def test_postprocessing_passes_chunks_through(server):
    """Postprocessing decodes nothing: each chunk's text (multi-byte characters included) and counters leave as
    they came, without the cancel_key (the target's engine makes the text: test_stream_text.py)."""
    text = "caf\u00e9 na\u00efve \u00fcber \u65e5\u672c\u8a9e \U0001F600 ok"
    client = grpcclient.InferenceServerClient(server.grpc_url)
    inputs = []
    for name, arr, dtype in (("text_output", np.array([[text.encode()]], np.object_), "BYTES"),
                             ("num_output_tokens", np.array([[3]], np.uint32), "UINT32"),
                             ("cancel_key", np.array([[b"nobody/1/secret"]], np.object_), "BYTES")):
        t = grpcclient.InferInput(name, list(arr.shape), dtype)
        t.set_data_from_numpy(arr)
        inputs.append(t)
    r = client.infer("postprocessing", inputs)
    assert r.as_numpy("text_output").reshape(-1)[0].decode() == text
    assert r.as_numpy("num_output_tokens").reshape(-1).tolist() == [3]
    assert {o.name for o in r.get_response().outputs} == {"text_output", "num_output_tokens"}


def test_perf_analyzer_measures_the_ensemble(server, tmp_path):
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, "client/perf_sweep.py", "-u", server.grpc_url, "--concurrency", "1:2:1",
                           "--max-tokens", "12", "--ignore-eos", "--chat", "off", "--requests-per-window", "2",
                           "--json", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=str(_root()))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["concurrency"] for r in rows] == [1, 2]
    for r in rows:
        assert r["requests"] >= 2 and r["output_tokens_per_s"] > 0 and r["uncounted_responses"] == 0
        # tokens are counted from num_output_tokens, not responses: exactly the 12 each request made,
        # although a speculative round's response carries several of them
        assert r["tokens_per_request"] == 12 and r["itl_ms_p50"] is not None


def _root():
    from pathlib import Path
    return Path(__file__).resolve().parents[2]
