"""GLM-4.7-Flash and Moonlight / Kimi-K2: what the engine does beyond the DeepSeek graph.

The logits and greedy tests of tests/test_engine.py cover both families' random checkpoints (the `glm` and
`moonlight` variants of tests/gen_checkpoints.py) against tests/reference.py; the tokenizer parity tests are in
tests/test_tokenizer.py. Here:
- the config mapping: GLM's router is sigmoid although its config.json has no scoring_func, the re-saved
  spellings (rope_parameters, mlp_layer_types) export to the same file, what cannot be run is refused;
- generation stops on any id of an eos_token_id list;
- GLM has no BOS: a text prompt starts with [gMASK]<sop>; Kimi adds none;
- -m chat feeds, turn by turn, the ids of the chat templates as @huggingface/jinja renders them and the oracles
  tokenize them (tests/data/chat_glm_kimi_fixture.json), and stops where each template ends a reply.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import gen_checkpoints as G
import reference as R

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")
TOL = 1e-4


def export(hf: str, out: str, *extra: str) -> subprocess.CompletedProcess:
    exporter = os.environ.get("SEEK_EXPORT") or os.path.join(ROOT, "export.py")
    return subprocess.run([sys.executable, exporter, hf, out, *extra], capture_output=True, text=True)


def config_words(path: str) -> tuple:
    buf = open(path, "rb").read(12 + 4 * 64)
    n = int(np.frombuffer(buf[8:12], "<u4")[0])
    return np.frombuffer(buf[12:12 + 4 * n], "<i4"), np.frombuffer(buf[12:12 + 4 * n], "<f4")


def greedy(run_bin: str, model: str, toks: list, n: int) -> list:
    r = subprocess.run([run_bin, model, "--tokens", ",".join(map(str, toks)), "-n", str(n), "-t", "0",
                        "--print-ids"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return [int(x) for x in r.stdout.split()]


def edited_checkpoint(checkpoint, workdir: str, variant: str, name: str, edit) -> str:
    """A copy of a generated checkpoint whose config.json went through edit(cfg)."""
    hf = os.path.join(workdir, "hf", name)
    if not os.path.exists(hf):
        shutil.copytree(checkpoint(variant), hf)
        path = os.path.join(hf, "config.json")
        cfg = json.load(open(path))
        edit(cfg)
        json.dump(cfg, open(path, "w"), indent=2)
    return hf


# ---------------------------------------------------------------- config mapping

def test_glm_config_words(exported):
    """No scoring_func in GLM's config.json: the word says sigmoid (the default softmax is the bug llama.cpp
    shipped); no YaRN, rope_theta 1e6; no BOS; eos_token_id's three ids in words 33, 41, 42."""
    i, f = config_words(exported("glm", "f32"))
    assert "scoring_func" not in G.VARIANTS["glm"]
    assert i[17] == 1 and i[16] == 2                      # sigmoid, noaux_tc
    assert i[23] == 0 and f[22] == 1e6                    # no YaRN, theta 1e6
    assert (i[6], i[7], i[8]) == (24, 8, 32)              # dn, dr, dv
    assert i[32] == -1                                    # no bos_token_id: never HF's class default 0
    assert [i[33], i[41], i[42], i[43]] == [6993, 7000, 7002, -1]
    assert i[34] == 0 and i[35] == 7029                   # MTP layer skipped; tokenizer size
    assert f[30] == pytest.approx(1e-5)


def test_control_glm_softmax_router(checkpoint, exported, run_bin, workdir):
    """The reference with a softmax router (what a loader that defaults scoring_func gets) is far from run.c."""
    model = exported("glm", "f32")
    toks = list(range(5, 6900, 173))
    out = os.path.join(workdir, "glm-control.logits")
    r = subprocess.run([run_bin, model, "--tokens", ",".join(map(str, toks)), "--dump-logits", out], capture_output=True)
    assert r.returncode == 0
    got = np.fromfile(out, "<f4").reshape(len(toks), -1)
    ref = R.Reference(checkpoint("glm"))
    good = np.abs(got - ref.forward(toks)).max()
    ref.cfg["scoring_func"] = "softmax"
    bad = np.abs(got - ref.forward(toks)).max()
    assert good <= TOL and bad > 100 * TOL, f"sigmoid {good:.3g}, softmax {bad:.3g}"


def test_glm_resaved_spellings_export_the_same(checkpoint, exported, workdir):
    """transformers 5 re-saves rope_theta inside rope_parameters and the dense/MoE layout as mlp_layer_types;
    the exported file must not change."""
    def resave(cfg):
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg.pop("rope_theta")}
        cfg.pop("rope_scaling")
        k = cfg.pop("first_k_dense_replace")
        cfg["mlp_layer_types"] = ["dense"] * k + ["sparse"] * (cfg["num_hidden_layers"] - k)
    hf = edited_checkpoint(checkpoint, workdir, "glm", "glm-resaved", resave)
    out = hf + ".bin"
    r = export(hf, out, "--dtype", "f32")
    assert r.returncode == 0, r.stderr
    assert open(out, "rb").read() == open(exported("glm", "f32"), "rb").read()


@pytest.mark.parametrize("case,edit,message", [
    ("rope_interleave_false", lambda c: c.update(rope_interleave=False), "rope_interleave"),
    ("partial_rotary", lambda c: c.update(partial_rotary_factor=0.5), "partial_rotary_factor"),
    ("dense_in_the_middle", lambda c: c.update(mlp_layer_types=["dense", "sparse", "dense"]), "mlp_layer_types"),
    ("scoring_softmax", lambda c: c.update(scoring_func="softmax"), "scoring_func"),
])
def test_glm_configs_run_c_cannot_run_are_refused(case, edit, message, checkpoint, workdir):
    hf = edited_checkpoint(checkpoint, workdir, "glm", "glm-" + case, edit)
    r = export(hf, hf + ".bin", "--dtype", "f32")
    assert r.returncode == 1 and not os.path.exists(hf + ".bin")
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_eos_ids_from_generation_config(checkpoint, workdir):
    """HF's generate() stops on generation_config.json's eos_token_id: its ids join config.json's (the
    format holds four)."""
    hf = edited_checkpoint(checkpoint, workdir, "glm", "glm-genconfig", lambda c: None)
    gen = os.path.join(hf, "generation_config.json")
    json.dump({"eos_token_id": [6993, 5]}, open(gen, "w"))
    assert export(hf, hf + ".bin", "--dtype", "bf16").returncode == 0
    i, _ = config_words(hf + ".bin")
    assert [i[33], i[41], i[42], i[43]] == [6993, 7000, 7002, 5]
    json.dump({"eos_token_id": [5, 9]}, open(gen, "w"))
    r = export(hf, hf + "-5.bin", "--dtype", "bf16")
    assert r.returncode == 1 and "eos token ids" in r.stderr and not os.path.exists(hf + "-5.bin")


# ---------------------------------------------------------------- stopping and prompts

def test_generation_stops_on_any_eos_id(checkpoint, exported, run_bin, workdir):
    """The greedy continuation's 4th id made the third of eos_token_id: run.c must stop right after it."""
    model = exported("glm", "f32")
    toks = [5, 77, 901, 4000, 12, 6001]
    free = greedy(run_bin, model, toks, 12)
    eos = [6993, 7000, 7002]
    assert len(free) == 12 and not set(free) & set(eos), free
    stop = free[3]
    hf = edited_checkpoint(checkpoint, workdir, "glm", f"glm-eos-{stop}",
                           lambda c: c.update(eos_token_id=[6993, 7000, stop]))
    r = export(hf, hf + ".bin", "--dtype", "f32")
    assert r.returncode == 0, r.stderr
    assert greedy(run_bin, hf + ".bin", toks, 12) == free[:4]


def test_text_prompt_prefix(exported, run_bin):
    """GLM has no BOS: -i text starts with [gMASK]<sop> (6995, 6997), as raw completion should; Kimi adds nothing."""
    for variant, prefix in (("glm", [6995, 6997]), ("moonlight", [])):
        model = exported(variant, "f32")
        text = "Hello world, getUserName 12345"
        enc = subprocess.run([run_bin, model, "--encode"], input=text.encode(), capture_output=True, check=True)
        ids = [int(x) for x in enc.stdout.split()]
        by_text = subprocess.run([run_bin, model, "-i", text, "-n", "8", "-t", "0", "--print-ids"],
                                 capture_output=True, text=True)
        assert by_text.returncode == 0, by_text.stderr
        assert [int(x) for x in by_text.stdout.split()] == greedy(run_bin, model, prefix + ids, 8)


# ---------------------------------------------------------------- chat

with open(os.path.join(DATA, "chat_glm_kimi_fixture.json"), encoding="utf-8") as f:
    CHAT = json.load(f)
CONVERSATIONS = {f"{c['family']}-{c['name']}": c for c in CHAT["conversations"]}


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_chat_feeds_the_templates_turns(name, exported, run_bin):
    """Per user turn, -m chat must feed exactly the ids of the text the Jinja template appends (turn_ids, from
    @huggingface/jinja and the tokenizer oracles), keeping the cache: a reply (greedy, -n 6) must equal the greedy
    continuation of every id fed so far. GLM has no end-of-turn token: the model stops on <|user|> (or
    <|observation|>, <|endoftext|>), and the next turn's text starts with <|user|>. Moonlight's replies end with
    <|im_end|>, which stays in the cache. GLM thinks by default; --no-think closes the section."""
    conv = CONVERSATIONS[name]
    glm = conv["family"] == "glm"
    model = exported("glm" if glm else "moonlight", "f32")
    stops = {6993, 7000, 7002} if glm else {6918}
    args = [run_bin, model, "-m", "chat", "-t", "0", "-n", "6", "--print-ids"]
    args += ["-y", conv["system"]] if conv["system"] else []
    args += ["--no-think"] if conv["kwargs"].get("enable_thinking") is False else []
    chat = subprocess.run(args, input="\n".join(conv["users"]).encode() + b"\n", capture_output=True, timeout=120)
    assert chat.returncode == 0, chat.stderr
    replies = [[int(x) for x in line.split()] for line in chat.stdout.decode().splitlines()]
    assert len(replies) == len(conv["users"])
    fed: list = []
    for k, (ids, reply) in enumerate(zip(conv["turn_ids"], replies)):
        fed += ids
        assert reply == greedy(run_bin, model, fed, 6), f"turn {k}: {conv['turn_texts'][k]!r}"
        fed += [t for t in reply if t not in stops] + ([] if glm else [6918])
