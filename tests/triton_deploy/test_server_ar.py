"""The deployment in AR mode (no draft): text equality, stop strings, non-streaming and HTTP streaming,
and the security defaults of `specdec serve` (loopback only, model control off, request size cap).

One server for the module, started the way a user does: ``specdec serve --mode ar`` (tiny random
Llama on CPU); stopping it with Ctrl-C (SIGINT) must exit 0.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

pytest.importorskip("tritonclient.grpc")
import stream_client as sc  # noqa: E402
from triton_helpers import ServeProcess, metrics  # noqa: E402

from specdec import LLM, SamplingParams  # noqa: E402

pytestmark = pytest.mark.slow

PROMPTS = ["the quick brown fox", "caf\u00e9 \u65e5\u672c\u8a9e \U0001F600", "speculative decoding", "hello world!"]
MAX_TOKENS = 48
MAX_INPUT_BYTES = 4096


@pytest.fixture(scope="module")
def server(tiny_llama, tmp_path_factory):
    srv = ServeProcess(tmp_path_factory.mktemp("triton_ar"), ["--target", str(tiny_llama), "--mode", "ar", "--cpu",
                                                              "--max-input-bytes", str(MAX_INPUT_BYTES)])
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


def _tritonserver(server):
    import psutil
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if cmd and cmd[0].endswith("tritonserver") and f"--grpc-port={server.ports.grpc}" in cmd:
            return p
    raise AssertionError("tritonserver process not found")


def test_listens_on_loopback_only_with_model_control_off(server):
    psutil = pytest.importorskip("psutil")
    proc = _tritonserver(server)
    assert "--model-control-mode=none" in proc.cmdline()
    listening = [c.laddr for p in [proc, *proc.children(recursive=True)] for c in p.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    assert {a.port for a in listening} >= {server.ports.http, server.ports.grpc, server.ports.metrics}
    assert all(a.ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for a in listening), listening


def test_models_cannot_be_loaded_or_unloaded(server):
    for action in ("unload", "load"):
        req = urllib.request.Request(f"{server.http_url}/v2/repository/models/ensemble/{action}", data=b"{}")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 503 and "explicit model load / unload is not allowed" in e.value.read().decode()
    assert urllib.request.urlopen(f"{server.http_url}/v2/models/ensemble/ready", timeout=10).status == 200


def test_request_over_the_size_cap_is_refused(server):
    body = json.dumps({"text_input": "a" * (MAX_INPUT_BYTES + 1), "max_tokens": 4}).encode()
    req = urllib.request.Request(f"{server.http_url}/v2/models/ensemble/generate_stream", data=body)
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 400
    message = e.value.read().decode()
    assert f"text_input has {MAX_INPUT_BYTES + 1} bytes: allowed [1, {MAX_INPUT_BYTES}] (max_input_bytes)" in message
    r = sc.generate(server.grpc_url, ["the quick"], max_tokens=3, temperature=0.0)[0]
    assert r.error is None and r.tokens == 3


def test_short_soak_without_failures_then_overload(server, tmp_path):
    """client/load_test.py for ~30 s (two cycles of perf_analyzer at concurrency 1, 4, 16), then a burst
    of capacity + 8 streams: no failed request below the limit, all KV blocks back, exactly 8 refused."""
    import subprocess
    import sys
    from pathlib import Path

    from perf_sweep import find_perf_analyzer
    try:
        find_perf_analyzer()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    out = tmp_path / "soak.json"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "client/load_test.py", "-u", server.grpc_url, "--metrics-url", server.metrics_url,
                           "--minutes", "0.3", "--cycle-s", "9", "--levels", "1,4,16", "--max-tokens", "16",
                           "--overload", "8", "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads(out.read_text())["summary"]
    assert summary["cycles"] == 2 and summary["requests"] > 0 and summary["failed_requests"] == 0
    assert summary["rejected"] == 0 and not summary["perf_analyzer_failures"]
    assert summary["kv_free_at_end"] == summary["kv_total"]
    o = summary["overload"]
    assert o["refused_unavailable"] == 8 and o["completed"] == o["capacity"] and o["max_refusal_s"] < 2.0
