"""`specdec distill`: train a small draft for a target by self-distillation (see specdec/distill/)."""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("distill", help="train a small draft model for a target by self-distillation",
                       description="Generate text with the target, then train an N-layer draft (initialised from the "
                                   "target's first layers, sharing its embeddings) to match the target's "
                                   "next-token distributions (KL). OUT becomes a draft folder for --draft.")
    p.add_argument("--out", required=True, help="output draft folder (training state goes to OUT/train/)")
    # None = the DistillConfig default for a new run, the saved value for --resume
    p.add_argument("--target", default=None, help="alias or HF folder (default: smollm2-135m)")
    p.add_argument("--arch", default=None, choices=["llama", "eagle"],
                   help="llama: the target's first layers, retrained (default); eagle: a head that drafts from the "
                        "target's hidden states (sync mode only; models/eagle.py)")
    p.add_argument("--layers", type=int, default=None, help="draft decoder layers (default 4; eagle: 1)")
    p.add_argument("--eagle-steps", type=int, default=None,
                   help="eagle: draft depths trained, feeding back the head's own features (default 3)")
    p.add_argument("--feature-weight", type=float, default=None,
                   help="eagle: weight of the feature regression next to the KL (default 1.0)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 1000)")
    p.add_argument("--batch", type=int, default=None, help="sequences per step (default 32)")
    p.add_argument("--seq-len", type=int, default=None, help="max tokens per sequence, prompt included (default 512)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate, cosine decay to 10%% (default 5e-4)")
    p.add_argument("--warmup", type=int, default=None, help="warmup steps (default min(100, steps/10))")
    p.add_argument("--device", default=None, help="cpu, cuda:N (default cpu)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="autocast/teacher dtype (default bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--save-every", type=int, default=None, help="checkpoint + export every N steps (default 200)")
    p.add_argument("--num-prompts", type=int, default=None, help="use N of the built-in training prompts (default all)")
    p.add_argument("--samples", type=int, default=None,
                   help="temperature-1 completions per prompt, besides the greedy one (default 2)")
    p.add_argument("--invent", type=int, default=None,
                   help="also ask the target to write N prompts of its own (the user turn of a chat, sampled); "
                        "more varied data, less overfitting (default 0)")
    p.add_argument("--synth-prompts", type=int, default=None,
                   help="also use N templated prompts: code, maths, multilingual, chat (default 0)")
    p.add_argument("--gen-batch", type=int, default=None, help="engine batch size for corpus generation (default 64)")
    p.add_argument("--gen-time-limit", type=float, default=None,
                   help="stop corpus generation after this many seconds, keeping what was written (default: none)")
    p.add_argument("--loss-chunk", type=int, default=None, help="logit rows per loss chunk (default 4096)")
    p.add_argument("--train-embeddings", action="store_true", default=None,
                   help="also train the embeddings/LM head (the draft then stores them: a large folder)")
    p.add_argument("--save-dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="dtype of the exported weights (default bfloat16)")
    p.add_argument("--standalone", action="store_true", default=None,
                   help="export the embeddings too: a plain HF folder that needs no target to load (larger)")
    p.add_argument("--base", default=None,
                   help="how specdec_draft.json names the target lending the embeddings (default: --target; "
                        "give the alias, e.g. smollm2-135m, when --target is a local path but the draft will ship)")
    p.add_argument("--head-vocab", type=int, default=None,
                   help="give the exported draft an LM head over the N tokens the target writes most often in the "
                        "corpus (a faster draft step on CPU; 0 = the whole vocabulary; default 8192)")
    p.add_argument("--init-from", default=None,
                   help="llama: start the draft's layers and norm from this exported draft (folder or alias, e.g. "
                        "smollm2-135m-draft) instead of the target's first layers: train a shipped draft on new data")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop-at", type=int, default=None, help="checkpoint and stop at this step (then --resume)")
    p.add_argument("--time-limit", type=float, default=None,
                   help="checkpoint and stop after this many seconds of training (then --resume)")
    p.add_argument("--schedule", default=None, choices=["steps", "time"],
                   help="time: the learning rate decays over whichever ends first, --steps or --time-limit "
                        "(a fixed time budget gets a full cosine decay; default steps)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in OUT/train/")
    p.set_defaults(func=run)


def run(args) -> int:
    from tqdm.auto import tqdm

    from ..distill import train
    from ..distill.checkpoint import resolve_config
    names = ("target", "out", "arch", "layers", "eagle_steps", "feature_weight", "steps", "batch", "seq_len", "lr",
             "warmup", "device", "dtype", "save_every", "num_prompts", "samples", "invent", "synth_prompts", "gen_batch",
             "gen_time_limit", "loss_chunk", "train_embeddings", "save_dtype", "standalone", "base", "head_vocab",
             "seed", "stop_at", "time_limit", "schedule", "init_from")
    given = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    cfg = resolve_config(given, args.resume)
    train(cfg, report=tqdm.write)          # prints above the progress bar
    return 0
