"""Remote draft workers: ``draft="remote:tcp://HOST:PORT"`` (how the Triton target finds the Triton
draft model), late joins, channel failures and reconnection, plain sync speculation over the
channel. The worker runs ``serve_draft`` in a background thread of another process, as the
Triton draft model does."""
import subprocess
import sys
import time

import pytest
from tiny import PROMPTS

from specdec import LLM, SamplingParams
from specdec.processes import free_port

GREEDY = SamplingParams(max_tokens=24, ignore_eos=True)
WORKER = """
import sys, threading, torch
torch.set_num_threads(1)
from specdec.config import engine_config
from specdec.draft.worker import serve_draft
cfg = engine_config(target=sys.argv[3], draft=sys.argv[1], mode="async", max_batch_size=8)
t = threading.Thread(target=serve_draft, args=(cfg, sys.argv[2]), kwargs=dict(connect_timeout_s=120))
t.start()
t.join()
"""


pytestmark = pytest.mark.usefixtures("one_thread")   # several processes share 2 cores


@pytest.fixture(scope="module")
def ar_ref(tiny_llama):
    outs = LLM(str(tiny_llama), mode="ar", max_batch_size=8).generate(PROMPTS, GREEDY)
    return {tuple(p): o.token_ids for p, o in zip(PROMPTS, outs)}


@pytest.fixture
def workers():
    """Start draft worker processes; all are killed at the end of the test."""
    procs = []

    def start(draft, rendezvous, target):
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, draft, rendezvous, str(target)]))
        return procs[-1]

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def wait_attached(llm, timeout=60.0):
    end = time.monotonic() + timeout
    while llm.engine.drafter is None:
        assert time.monotonic() < end, "the draft worker never attached"
        llm.engine.step()                       # step() picks up a connected channel
        time.sleep(0.05)


def run_all(llm, prompts, params, kill_after=None, proc=None):
    seqs = [llm.engine.add_request(list(p), params) for p in prompts]
    steps = 0
    while any(not s.finished for s in seqs):
        llm.engine.step()
        steps += 1
        if kill_after is not None and steps == kill_after:
            proc.kill()
            proc.wait()
    return seqs


def test_late_join_failure_fallback_and_reconnect(tiny_llama, ar_ref, workers):
    rdv = f"tcp://127.0.0.1:{free_port()}"
    with LLM(str(tiny_llama), draft=f"remote:{rdv}", mode="async", k=4, max_batch_size=8) as llm:
        # 1. no draft yet: plain AR, same output
        seqs = run_all(llm, PROMPTS, GREEDY)
        assert [s.output_ids for s in seqs] == [ar_ref[tuple(p)] for p in PROMPTS]
        assert llm.metrics.rounds == 0 and llm.engine.drafter is None
        # 2. the draft joins late (loads after the target, as Triton may do): SSD takes over
        proc = workers(str(tiny_llama), rdv, tiny_llama)
        wait_attached(llm)
        seqs = run_all(llm, PROMPTS, GREEDY)
        assert [s.output_ids for s in seqs] == [ar_ref[tuple(p)] for p in PROMPTS]
        m = llm.metrics
        assert m.rounds > 0 and m.cache_hits / m.cache_lookups > 0.8 and m.ar_fallbacks == 0
        # 3. the worker dies mid-stream: AR fallback, in-flight sequences keep their tokens
        rounds = m.rounds
        seqs = run_all(llm, PROMPTS, GREEDY, kill_after=3, proc=proc)
        assert [s.output_ids for s in seqs] == [ar_ref[tuple(p)] for p in PROMPTS]
        assert m.ar_fallbacks == 1 and m.rounds > rounds and any(s.stats.ar_steps for s in seqs)
        assert llm.engine.drafter is None
        # 4. a new worker at the same rendezvous: reconnected
        workers("self:1", rdv, tiny_llama)
        wait_attached(llm)
        rounds = m.rounds
        seqs = run_all(llm, PROMPTS[:4], GREEDY)
        assert [s.output_ids for s in seqs] == [ar_ref[tuple(p)] for p in PROMPTS[:4]]
        assert m.rounds > rounds


def test_sync_speculation_through_a_remote_worker(tiny_llama, ar_ref, workers):
    rdv = f"tcp://127.0.0.1:{free_port()}"
    workers(str(tiny_llama), rdv, tiny_llama)              # draft == target
    with LLM(str(tiny_llama), draft=f"remote:{rdv}", mode="sync", k=3, max_batch_size=8) as llm:
        wait_attached(llm)
        outs = llm.generate(PROMPTS, GREEDY)
        assert [o.token_ids for o in outs] == [ar_ref[tuple(p)] for p in PROMPTS]
        m = llm.metrics
        assert m.accepted == m.drafted > 0 and m.cache_lookups == 0    # plain SD: no speculation cache
        sampled = llm.generate(PROMPTS[:4], SamplingParams(max_tokens=16, temperature=0.8, ignore_eos=True))
        assert all(len(o.token_ids) == 16 for o in sampled)
