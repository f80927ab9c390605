"""`specdec serve`: run the Triton deployment (preprocessing -> target -> postprocessing ensemble).

Writes a copy of model_repository/ with these settings (the checked-in one is never changed),
starts tritonserver (the image's, or the one in the nvidia-pytriton wheel), waits until
/v2/health/ready answers 200, prints the endpoints and stays in the foreground until Ctrl-C.

Safe defaults (docs/security.md): HTTP, gRPC and metrics bind 127.0.0.1 unless ``--host`` says
otherwise; model control mode is ``none`` (no load/unload over the API); ``text_input`` is capped
(``--max-input-bytes``) and the requests held at once are bounded (``--max-queued-requests``);
requests are data only (JSON and tensors are parsed, never evaluated).
"""
from __future__ import annotations

import signal
import sys
import tempfile
import time
from pathlib import Path

from .common import add_engine_args, engine_options


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve through NVIDIA Triton (HTTP, gRPC streaming, metrics)")
    add_engine_args(p, skip=("device", "draft_device", "devices", "tensor_parallel_size"),
                    defaults={"target": "smollm2-135m"})
    g = p.add_argument_group("serving")
    g.add_argument("--default-max-tokens", type=int, default=128, help="when a request sends no max_tokens")
    g.add_argument("--cpu-threads", type=int, default=0, help="torch threads of a CPU engine (0 = torch default)")
    g.add_argument("--chat", action="store_true", help="apply the chat template unless a request says otherwise")
    g.add_argument("--no-capture-at-start", action="store_true",
                   help="CUDA: skip the warm-up that captures the common steps' graphs before ready (faster start, "
                        "slower first requests)")
    g.add_argument("--max-queued-requests", type=int, default=64,
                   help="requests held beyond the engine batch; more get UNAVAILABLE at once (-1 = no cap)")
    g.add_argument("--max-input-bytes", type=int, default=0,
                   help="cap on text_input in UTF-8 bytes (0 = max_model_len x the longest token's bytes)")
    d = p.add_argument_group("placement")
    d.add_argument("--target-gpu", type=int, default=None, help="GPU of the target (default: 0 if CUDA, else CPU)")
    d.add_argument("--draft-gpu", type=int, default=None,
                   help="run the draft as its own Triton model on this GPU (draft_location=separate)")
    d.add_argument("--cpu", action="store_true", help="run on CPU even if CUDA is available")
    d.add_argument("--rendezvous-port", type=int, default=29500, help="target <-> draft channel port")
    s = p.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1",
                   help="address HTTP, gRPC and metrics bind (default 127.0.0.1: this host only; 0.0.0.0 = all)")
    s.add_argument("--http-port", type=int, default=8000)
    s.add_argument("--grpc-port", type=int, default=8001)
    s.add_argument("--metrics-port", type=int, default=8002)
    s.add_argument("--model-repository", type=Path, default=None, help="source repository (default: ./model_repository)")
    s.add_argument("--workdir", type=Path, default=None, help="where the generated repository and log go")
    s.add_argument("--tritonserver", default=None, help="tritonserver binary (default: image's or pytriton wheel's)")
    s.add_argument("--ready-timeout", type=float, default=600.0)
    s.add_argument("--verbose", action="store_true", help="tritonserver --log-verbose=1")
    p.set_defaults(func=run)


def settings_from_args(args, cuda: bool):
    from ..triton.settings import Settings
    from ..models.registry import default_draft
    options = engine_options(args)
    options.setdefault("dtype", "bfloat16" if cuda else "float32")
    # serving speculates by default: no --mode and no --draft means sync with the alias's default draft
    options["draft"] = default_draft(options["target"], options.get("mode") or "sync", options.get("draft")) or ""
    return Settings(**options, cpu_threads=args.cpu_threads,
                    draft_location="separate" if args.draft_gpu is not None else "in_target",
                    rendezvous=f"tcp://127.0.0.1:{args.rendezvous_port}",
                    default_max_tokens=args.default_max_tokens, apply_chat_template=args.chat,
                    max_queued_requests=args.max_queued_requests, max_input_bytes=args.max_input_bytes,
                    capture_at_start=not args.no_capture_at_start)


def build_server(args, cuda: bool):
    """Settings, the generated repository and the (not yet started) TritonServer for these arguments."""
    from ..draft.load import draft_folder
    from ..models.registry import resolve
    from ..triton.launcher import Ports, TritonServer
    from ..triton.repository import write_repository

    target_gpu = args.target_gpu if args.target_gpu is not None else (0 if cuda else None)
    settings = settings_from_args(args, cuda)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="specdec-serve-"))
    resolve(settings.target)                       # converts packaged weights once, before the models race
    folder = draft_folder(settings.draft) if settings.draft else None
    if folder is not None:
        resolve(settings.draft)
    repo = write_repository(workdir / "model_repository", settings, target_gpu=target_gpu,
                            draft_gpu=args.draft_gpu, source=args.model_repository)
    server = TritonServer(repo, workdir, host=args.host, ports=Ports(args.http_port, args.grpc_port, args.metrics_port),
                          tritonserver=args.tritonserver, verbose=args.verbose)
    return settings, server, target_gpu


def run(args) -> int:
    import torch

    from ..triton.watch import after_ready

    cuda = torch.cuda.is_available() and not args.cpu
    if not cuda and (args.target_gpu is not None or args.draft_gpu is not None):
        print("error: --target-gpu/--draft-gpu given but CUDA is not available (use --cpu)", file=sys.stderr)
        return 2
    try:
        settings, server, target_gpu = build_server(args, cuda)
    except FileNotFoundError as e:          # a missing wheel or model: its message says what to install
        print(f"error: {e}", file=sys.stderr)
        return 2
    repo = server.repository
    where = "CPU" if target_gpu is None else f"GPU {target_gpu}"
    draft = settings.draft_spec or "none (AR)"
    if settings.draft_location == "separate":
        draft += f" on GPU {args.draft_gpu}"
    print(f"specdec serve: target={settings.target} on {where}, mode={settings.mode}, draft={draft}, "
          f"K={settings.k}, dtype={settings.dtype}\n  repository: {repo}\n  log: {server.log_path}", file=sys.stderr)
    t0 = time.perf_counter()
    stop = {"now": False}

    def on_signal(signum, frame):
        stop["now"] = True
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        server.start()                        # refuses a stub that would corrupt tensors (launcher.py)
        server.wait_ready(args.ready_timeout)
        watcher = after_ready(server)         # a known request through a stub; then watch the stubs
    except (RuntimeError, TimeoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        server.stop()
        return 1
    print(f"ready in {time.perf_counter() - t0:.1f} s\n"
          f"  HTTP     {server.http_url}  (POST /v2/models/ensemble/generate_stream)\n"
          f"  gRPC     {server.grpc_url}  (model 'ensemble', streaming)\n"
          f"  metrics  {server.metrics_url}\n"
          f"  bound to {server.host}; model control mode none; up to {settings.max_batch_size} + "
          f"{settings.max_queued_requests} requests at once", flush=True)
    while not stop["now"] and server.proc.poll() is None:
        if watcher.check():                   # a needed model's stub died: Triton cannot restart it
            server.stop(10)                   # the dead model never unloads: a short grace, then SIGKILL
            return 3
        time.sleep(0.5)
    code = server.proc.poll()
    if code is not None:                      # it stopped serving on its own (e.g. it aborted after a stub died)
        while watcher.check():                # names every stub that is gone (the cause is among them)
            pass
        print(f"tritonserver exited with code {code}; last log lines:\n{server.log_tail()}", file=sys.stderr)
        return 3
    print("stopping tritonserver ...", file=sys.stderr)
    server.stop()
    return 0

