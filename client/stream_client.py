#!/usr/bin/env python3
"""Stream completions from the specdec Triton ensemble over gRPC and report TTFT, tokens/s, acceptance.

    python client/stream_client.py "What is speculative decoding?" --max-tokens 128
    python client/stream_client.py "Tell me a story" -n 4 --num-draft-tokens 0     # 4 concurrent, AR

Needs only ``tritonclient[grpc]`` and numpy (no specdec). One gRPC stream carries all requests;
each response holds one engine round: its ``text_output`` delta and ``num_output_tokens``.
Importable: :func:`generate` returns one :class:`Result` per prompt (the tests use it).
"""
from __future__ import annotations

import argparse
import queue
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import np_to_triton_dtype

OUTPUTS = ("text_output", "num_output_tokens", "num_input_tokens", "acceptance_rate",
           "total_accepted_draft_tokens", "total_draft_tokens", "finish_reason")


@dataclass
class Result:
    request_id: str
    chunks: list[str] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    error: str | None = None
    finish_reason: str | None = None
    acceptance_rate: float | None = None
    accepted: int | None = None
    drafted: int | None = None
    num_input_tokens: int | None = None
    t_send: float = 0.0
    t_first: float | None = None
    t_end: float | None = None
    finals: int = 0
    late: int = 0           # responses after the final one (must stay 0)

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    @property
    def tokens(self) -> int:
        return sum(self.chunk_tokens)

    @property
    def tau(self) -> float | None:
        """Mean accepted length: tokens committed per target forward. Each response after the first (the
        prefill's token) carries one engine round's tokens, i.e. one target forward's."""
        rounds = [n for n in self.chunk_tokens[1:] if n > 0]
        return sum(rounds) / len(rounds) if rounds else None

    @property
    def ttft_s(self) -> float | None:
        return None if self.t_first is None else self.t_first - self.t_send

    @property
    def tokens_per_s(self) -> float:
        dt = (self.t_end or time.perf_counter()) - self.t_send
        return self.tokens / dt if dt > 0 else 0.0


def _tensor(name: str, value, dtype) -> grpcclient.InferInput:
    arr = np.array(value, dtype=dtype).reshape(1, -1)        # [batch 1, n]
    t = grpcclient.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
    t.set_data_from_numpy(arr)
    return t


def make_inputs(prompt: str, max_tokens: int | None = 128, *, stream: bool = True, temperature: float | None = None,
                top_p: float | None = None, top_k: int | None = None, seed: int | None = None,
                stop: list[str] | None = None, num_draft_tokens: int | None = None, chat: bool | None = None,
                perf_metrics: bool = True, extra: dict | None = None) -> list[grpcclient.InferInput]:
    """The ensemble's inputs (Triton LLM names); ``extra`` maps name -> numpy array for anything else."""
    ins = [_tensor("text_input", [prompt.encode("utf-8")], np.object_),
           _tensor("stream", [stream], np.bool_),
           _tensor("return_perf_metrics", [perf_metrics], np.bool_),
           _tensor("return_num_input_tokens", [True], np.bool_)]
    if max_tokens is not None:
        ins.append(_tensor("max_tokens", [max_tokens], np.int32))
    for name, v, dt in (("temperature", temperature, np.float32), ("top_p", top_p, np.float32),
                        ("top_k", top_k, np.int32), ("seed", seed, np.uint64),
                        ("num_draft_tokens", num_draft_tokens, np.int32), ("apply_chat_template", chat, np.bool_)):
        if v is not None:
            ins.append(_tensor(name, [v], dt))
    if stop:
        ins.append(_tensor("stop_words", [s.encode() for s in stop], np.object_))
    for name, arr in (extra or {}).items():
        arr = np.asarray(arr)
        t = grpcclient.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        t.set_data_from_numpy(arr)
        ins.append(t)
    return ins


def _scalar(result, name):
    arr = result.as_numpy(name)
    if arr is None:
        return None
    v = arr.reshape(-1)[0]
    return v.decode("utf-8") if isinstance(v, bytes) else v.item()


def _is_final(result) -> bool:
    params = result.get_response().parameters
    return "triton_final_response" in params and params["triton_final_response"].bool_param


def generate(url: str, prompts: list[str], model: str = "ensemble", *, on_text: Callable[[int, str], None] | None = None,
             cancel_after_chunks: int | None = None, timeout_s: float = 300.0, inputs: list | None = None,
             drain_s: float = 0.0, parameters: dict | None = None, **options) -> list[Result]:
    """Send every prompt at once, each on its own gRPC stream; collect the streamed responses.

    One stream per request because tritonclient's stream callback drops the request id of an
    error. ``inputs``: ready-made input lists (one per prompt) instead of building them from
    ``options``. ``cancel_after_chunks``: a request whose stream has delivered that many data
    responses is cancelled (``stop_stream(cancel_requests=True)``). ``drain_s``: keep listening
    that long after the last final response and count what still arrives (``Result.late``).
    ``parameters``: request parameters sent with every request (the model accepts none; for tests).
    """
    q: queue.Queue = queue.Queue()
    results = [Result(str(i)) for i in range(len(prompts))]
    clients = [grpcclient.InferenceServerClient(url) for _ in prompts]
    stopped: set[int] = set()
    open_ids = set(range(len(prompts)))
    try:
        # every stream is opened (a gRPC channel each: the slow part) before the first request goes out, so
        # the requests leave in one burst: a fast server would otherwise finish the first ones before the last
        # are sent, and a burst meant to exceed its capacity would not
        for i, client in enumerate(clients):
            client.start_stream(callback=lambda result, error, i=i: q.put((i, time.perf_counter(), result, error)))
        all_inputs = inputs if inputs is not None else [make_inputs(p, **options) for p in prompts]
        for i, (client, ins) in enumerate(zip(clients, all_inputs)):
            results[i].t_send = time.perf_counter()
            client.async_stream_infer(model, ins, request_id=str(i), enable_empty_final_response=True,
                                      outputs=[grpcclient.InferRequestedOutput(n) for n in OUTPUTS],
                                      parameters=parameters)
        deadline = time.monotonic() + timeout_s
        while open_ids and time.monotonic() < deadline:
            try:
                i, t, result, error = q.get(timeout=0.5)
            except queue.Empty:
                continue
            if i not in open_ids:
                results[i].late += 1
                continue
            r = results[i]
            if error is not None:
                r.error, r.t_end, r.finals = error.message(), t, r.finals + 1
                open_ids.discard(i)
                continue
            text = _scalar(result, "text_output")
            if text is not None:
                if r.t_first is None and text:
                    r.t_first = t
                r.chunks.append(text)
                r.chunk_tokens.append(_scalar(result, "num_output_tokens") or 0)
                if on_text is not None:
                    on_text(i, text)
                for attr, name in (("acceptance_rate", "acceptance_rate"), ("accepted", "total_accepted_draft_tokens"),
                                   ("drafted", "total_draft_tokens"), ("finish_reason", "finish_reason"),
                                   ("num_input_tokens", "num_input_tokens")):
                    v = _scalar(result, name)
                    if v is not None:
                        setattr(r, attr, v)
            if _is_final(result):
                r.finals += 1
                r.t_end = t
                open_ids.discard(i)
            elif cancel_after_chunks is not None and len(r.chunks) >= cancel_after_chunks:
                clients[i].stop_stream(cancel_requests=True)
                stopped.add(i)
                r.error, r.t_end = "cancelled by the client", t
                open_ids.discard(i)
        for i in open_ids:
            results[i].error = f"no final response within {timeout_s:.0f} s"
        end = time.monotonic() + drain_s
        while time.monotonic() < end:
            try:
                i, _, _, _ = q.get(timeout=max(0.0, end - time.monotonic()))
                results[i].late += 1
            except queue.Empty:
                break
    finally:
        for i, client in enumerate(clients):
            if i not in stopped:
                client.stop_stream(cancel_requests=i in open_ids)   # cancel what never finished
            client.close()
    return results


def _print_summary(results: list[Result], wall_s: float) -> None:
    ok = [r for r in results if r.error is None]
    for r in results:
        if r.error is not None:
            print(f"[{r.request_id}] error: {r.error}", file=sys.stderr)
    if not ok:
        return
    toks = sum(r.tokens for r in ok)
    ttfts = sorted(r.ttft_s for r in ok if r.ttft_s is not None)
    line = (f"{len(ok)} request(s), {toks} tokens in {wall_s:.2f} s: {toks / wall_s:.1f} tok/s total, "
            f"{np.mean([r.tokens_per_s for r in ok]):.1f} tok/s per request; "
            f"TTFT {1e3 * ttfts[len(ttfts) // 2]:.0f} ms (median)" if ttfts else "")
    drafted = sum(r.drafted or 0 for r in ok)
    if drafted:
        line += f"; acceptance rate {sum(r.accepted or 0 for r in ok) / drafted:.2f} ({drafted} draft tokens)"
    rounds = [n for r in ok for n in r.chunk_tokens[1:] if n > 0]
    if rounds:
        line += f", tau {sum(rounds) / len(rounds):.2f} tokens per target forward"
    reasons = sorted({str(r.finish_reason) for r in ok})
    print(f"\n{line}; finish: {', '.join(reasons)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("prompt", nargs="?", default="What is speculative decoding? Answer in two sentences.")
    ap.add_argument("-u", "--url", default="localhost:8001", help="gRPC endpoint (default localhost:8001)")
    ap.add_argument("-m", "--model", default="ensemble")
    ap.add_argument("-n", "--concurrency", type=int, default=1, help="send N copies of the prompt at once")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=None)
    ap.add_argument("--top-p", type=float, default=None)
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    ap.add_argument("--num-draft-tokens", type=int, default=None, help="per-request K (0 = autoregressive)")
    ap.add_argument("--no-chat", action="store_true", help="send the prompt without the chat template")
    args = ap.parse_args(argv)

    def show(rid: int, text: str) -> None:
        if rid == 0:
            sys.stdout.write(text)
            sys.stdout.flush()

    t0 = time.perf_counter()
    results = generate(args.url, [args.prompt] * args.concurrency, args.model, on_text=show,
                       max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                       seed=args.seed, stop=args.stop, num_draft_tokens=args.num_draft_tokens, chat=not args.no_chat)
    print()
    _print_summary(results, time.perf_counter() - t0)
    return 0 if all(r.error is None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
