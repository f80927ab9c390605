"""Request validation, model parameters and the generated model repository (no server)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from specdec.triton import schema
from specdec.triton.repository import default_source, read_config, write_repository
from specdec.triton.schema import GenerationRequest, check_lengths, parse_request
from specdec.triton.settings import PARAMETERS, Settings, parse_parameters


def _get(**inputs):
    arrays = {k: np.array([[v]] if not isinstance(v, list) else [v], dtype=object if isinstance(v, (str, list)) else None)
              for k, v in inputs.items()}
    return lambda name: arrays.get(name)


def _parse(**inputs):
    return parse_request(_get(**inputs), default_max_tokens=16, max_model_len=512)


def test_defaults_and_mapping():
    text, req = _parse(text_input="hi", max_tokens=np.int32(8), temperature=np.float32(0.5), top_p=np.float32(0.9),
                       top_k=np.int32(5), random_seed=np.uint64(7), stop_words=["a", "bc"], num_draft_tokens=np.int32(2),
                       stream=np.bool_(False), return_perf_metrics=np.bool_(True), min_length=np.int32(8))
    assert text == "hi"
    assert req.params == {"max_tokens": 8, "temperature": 0.5, "top_p": pytest.approx(0.9), "top_k": 5, "seed": 7,
                          "stop": ["a", "bc"], "num_draft_tokens": 2, "ignore_eos": True}
    assert not req.stream and req.return_perf_metrics and req.return_num_output_tokens
    assert GenerationRequest.from_json(req.to_json()) == req
    assert _parse(text_input="hi")[1].params == {"max_tokens": 16}


BAD = [
    (dict(text_input=""), "text_input=''"),
    (dict(text_input="hi", max_tokens=np.int32(0)), "max_tokens=0 is out of range: allowed [1, 511]"),
    (dict(text_input="hi", temperature=np.float32(-1)), "temperature=-1.0 is out of range: allowed [0.0, 100.0]"),
    (dict(text_input="hi", temperature=np.float32(math.nan)), "temperature=nan"),
    (dict(text_input="hi", top_p=np.float32(0)), "top_p=0.0 is out of range: allowed (0.0, 1.0]"),
    (dict(text_input="hi", top_p=np.float32(1.5)), "top_p=1.5"),
    (dict(text_input="hi", top_k=np.int32(-1)), "top_k=-1"),
    (dict(text_input="hi", num_draft_tokens=np.int32(17)), "num_draft_tokens=17 is out of range: allowed [0, 16]"),
    (dict(text_input="hi", num_draft_tokens=np.int32(-1)), "num_draft_tokens=-1"),
    (dict(text_input="hi", seed=np.uint64(1), random_seed=np.uint64(2)), "seed=1 and random_seed=2 differ"),
    (dict(text_input="hi", presence_penalty=np.float32(0.5)), "presence_penalty=0.5 is not supported: allowed [0.0, 0.0]"),
    (dict(text_input="hi", bad_words=["x"]), "bad_words=['x'] is not supported"),
    (dict(text_input="hi", max_tokens=np.int32(8), min_length=np.int32(3)), "min_length=3 is not supported"),
    (dict(text_input="hi", exclude_input_in_output=np.bool_(False)), "exclude_input_in_output=False"),
]


@pytest.mark.parametrize("inputs,message", BAD, ids=[m.split("=")[0] for _, m in BAD])
def test_bad_inputs_name_field_value_and_range(inputs, message):
    with pytest.raises(ValueError) as e:
        _parse(**inputs)
    assert message in str(e.value)


def test_lengths():
    check_lengths(10, 502, 512)
    with pytest.raises(ValueError, match=r"max_tokens=503 is out of range: allowed \[1, 502\]"):
        check_lengths(10, 503, 512)
    with pytest.raises(ValueError, match=r"text_input has 512 tokens: allowed \[1, 511\]"):
        check_lengths(512, 1, 512)


def test_sampling_parameters_json_is_validated_again():
    with pytest.raises(ValueError, match="unknown keys"):
        GenerationRequest.from_json('{"params": {}, "evil": 1}')
    with pytest.raises(ValueError, match="top_p=2.0"):
        GenerationRequest.from_json('{"params": {"top_p": 2.0}}')


def test_parameters_parse_and_engine_config():
    s = parse_parameters({"target": "t", "k": "6", "mode": "sync", "draft": "self:2", "apply_chat_template": "true",
                          "kv_cache_memory_gib": "0.5", "FORCE_CPU_ONLY_INPUT_TENSORS": "no"})
    assert s.k == 6 and s.apply_chat_template and s.kv_cache_memory_gib == 0.5
    cfg = s.engine_config("cpu")
    assert cfg.mode == "sync" and cfg.spec.draft == "self:2" and cfg.spec.k == 6
    sep = Settings(draft="m", draft_location="separate", rendezvous="tcp://127.0.0.1:1234")
    assert sep.engine_config("cuda:0").spec.draft == "remote:tcp://127.0.0.1:1234"
    assert Settings(mode="ar").engine_config("cpu").spec.draft is None
    with pytest.raises(ValueError, match="parameter k='x': expected int"):
        parse_parameters({"k": "x"})
    with pytest.raises(ValueError, match="draft_location='gpu'"):
        Settings(draft_location="gpu")


def _io(cfg, kind):
    return {t.name: (t.data_type, list(t.dims), "optional" in t.DESCRIPTOR.fields_by_name and t.optional)
            for t in getattr(cfg, kind)}


def test_checked_in_repository_matches_the_schema():
    src = default_source()
    cfgs = {m: read_config(src / m / "config.pbtxt") for m in ("preprocessing", "target", "draft", "postprocessing", "ensemble")}
    from tritonclient.grpc import model_config_pb2 as mc
    ens_in = {n: mc.DataType.Name(d) for n, (d, _, _) in _io(cfgs["ensemble"], "input").items()}
    assert ens_in == schema.INPUTS
    assert {n: mc.DataType.Name(d) for n, (d, _, _) in _io(cfgs["ensemble"], "output").items()} == schema.OUTPUTS
    assert _io(cfgs["preprocessing"], "input") == _io(cfgs["ensemble"], "input")
    assert all(opt for n, (_, _, opt) in _io(cfgs["ensemble"], "input").items() if n != "text_input")
    # every target output feeds postprocessing, with the same type
    tgt_out, post_in = _io(cfgs["target"], "output"), _io(cfgs["postprocessing"], "input")
    assert {n: v[:2] for n, v in tgt_out.items()} == {n: v[:2] for n, v in post_in.items()}
    assert cfgs["target"].model_transaction_policy.decoupled
    assert not cfgs["postprocessing"].HasField("dynamic_batching")      # see its config.pbtxt
    assert cfgs["ensemble"].platform == "ensemble" and cfgs["ensemble"].max_batch_size == 1
    for m, gpu in (("target", 0), ("draft", 1)):
        (group,) = cfgs[m].instance_group
        assert group.kind == mc.ModelInstanceGroup.KIND_GPU and list(group.gpus) == [gpu]
    for m in ("target", "draft"):
        assert set(cfgs[m].parameters) <= set(PARAMETERS)
        parse_parameters({k: v.string_value for k, v in cfgs[m].parameters.items()})


def test_generated_repository(tmp_path):
    from tritonclient.grpc import model_config_pb2 as mc
    s = Settings(target="/models/t", draft="self:3", k=5, draft_location="in_target")
    repo = write_repository(tmp_path / "cpu", s)
    assert sorted(p.name for p in repo.iterdir()) == ["ensemble", "postprocessing", "preprocessing", "target"]
    tgt = read_config(repo / "target" / "config.pbtxt")
    assert tgt.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU and not tgt.instance_group[0].gpus
    assert tgt.parameters["target"].string_value == "/models/t" and tgt.parameters["k"].string_value == "5"
    assert read_config(repo / "preprocessing" / "config.pbtxt").parameters["target"].string_value == "/models/t"
    assert (repo / "target" / "1" / "model.py").exists()

    sep = Settings(target="/models/t", draft="/models/d", draft_location="separate")
    repo = write_repository(tmp_path / "gpu", sep, target_gpu=0, draft_gpu=1)
    draft = read_config(repo / "draft" / "config.pbtxt")
    assert draft.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU and list(draft.instance_group[0].gpus) == [1]
    assert draft.parameters["draft_location"].string_value == "separate"
    assert default_source().joinpath("target", "config.pbtxt").read_text().count("KIND_GPU") == 1   # unchanged


def test_draft_that_cannot_load_falls_back_to_ar(tiny_llama, caplog):
    import logging
    from specdec.triton.target import build_engine
    log = logging.getLogger("test.fallback")
    with caplog.at_level(logging.WARNING, logger="test.fallback"):
        engine = build_engine(Settings(target=str(tiny_llama), draft="/no/such/draft", mode="sync"), "cpu", log)
    assert engine.cfg.mode == "ar" and engine.drafter is None
    assert "serving in AR mode" in caplog.text


def test_serve_command_is_registered():
    from specdec.cli import main
    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    assert e.value.code == 0


def _serve_args(argv):
    import argparse

    from specdec.commands import serve
    parser = argparse.ArgumentParser()
    serve.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_serve_defaults_are_safe(tiny_llama, tmp_path):
    """The server command line `specdec serve` builds: loopback only, model control off, caps on."""
    from triton_helpers import require_tritonserver

    from specdec.commands.serve import build_server
    require_tritonserver()
    settings, server, _ = build_server(_serve_args(["--target", str(tiny_llama), "--workdir", str(tmp_path)]), cuda=False)
    cmd = server.command
    for flag in ("--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
                 "--model-control-mode=none"):
        assert flag in cmd, cmd
    assert not any(a.startswith(("--load-model", "--model-control-mode=explicit", "--model-control-mode=poll"))
                   for a in cmd)
    assert settings.max_queued_requests == 64 and settings.max_input_bytes == 0        # 0 = derived from the model
    pre = read_config(server.repository / "preprocessing" / "config.pbtxt")
    tgt = read_config(server.repository / "target" / "config.pbtxt")
    assert pre.parameters["max_input_bytes"].string_value == "0"
    assert tgt.parameters["max_queued_requests"].string_value == "64"
    _, custom, _ = build_server(_serve_args(["--target", str(tiny_llama), "--workdir", str(tmp_path / "b"), "--host",
                                             "0.0.0.0", "--max-input-bytes", "4096", "--max-queued-requests", "8"]),
                                cuda=False)
    assert "--http-address=0.0.0.0" in custom.command       # only when asked
    assert read_config(custom.repository / "preprocessing" / "config.pbtxt").parameters["max_input_bytes"].string_value == "4096"
    assert read_config(custom.repository / "target" / "config.pbtxt").parameters["max_queued_requests"].string_value == "8"


def test_input_byte_cap_covers_any_prompt_that_fits(tiny_llama):
    """The derived cap is max_model_len x the longest token: a prompt that fits the context is never refused by it."""
    from transformers import AutoTokenizer

    from specdec.triton.preprocessing import input_byte_cap
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    cap = input_byte_cap(tok, 512)
    per_token = cap // 512
    for text in ("the quick brown fox " * 20, "caf\u00e9 \u65e5\u672c\u8a9e \U0001F600" * 30, "\U0001F600" * 100,
                 "0123456789 hello world! " * 10, "\u00ff\u0100" * 50):
        assert len(text.encode("utf-8")) <= per_token * len(tok.encode(text)), text[:20]
    with pytest.raises(ValueError, match=r"text_input has 101 bytes: allowed \[1, 100\] \(max_input_bytes\)"):
        parse_request(_get(text_input="a" * 101), default_max_tokens=4, max_model_len=512, max_input_bytes=100)


def test_request_path_evaluates_nothing():
    """Requests are data: nothing on the serving path evaluates, unpickles or runs code from them."""
    import re
    from pathlib import Path

    import specdec.triton as pkg
    for path in Path(pkg.__file__).parent.glob("*.py"):
        code = "\n".join(line.split("#")[0] for line in path.read_text().splitlines())
        for bad in (r"\beval\(", r"\bexec\(", r"\bpickle\b", r"trust_remote_code\s*=\s*True", r"shell\s*=\s*True",
                    r"yaml\.load\(", r"__import__\("):
            assert not re.search(bad, code), f"{path.name}: {bad}"
