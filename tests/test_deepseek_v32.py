"""DeepSeek-V3.2: the lightning indexer, DeepSeek Sparse Attention, and the chat encoding.

The generated `v32` and `v32fp8` checkpoints (tests/gen_checkpoints.py: real tensor names and config
spellings, FP8 indexer weights with E8M0 scales in v32fp8) have index_topk 8, so on the 40-64 token prompts
of tests/test_engine.py (which runs them like every variant: f32 and bf16 logits, other seeds, greedy) MLA
attends to 8 positions per query. Here:
- the selection changes the output (the dense reference is far away) and run.c follows the sparse
  reference written from the V3.2-Exp report and the official inference/model.py (tests/reference.py);
  the reference's selections are not near ties, so float32 cannot flip them;
- negative control: the reference with the indexer's RoPE on adjacent pairs (the pre-fix code) disagrees;
- with index_topk >= the context every position is selected and run.c gives bit for bit the logits of the
  same weights exported as DeepSeek-V3 (the indexer's scoring is skipped there);
- decoding token by token, odd prefill chunks and other thread counts give the same logits; with
  index_topk 100 of 160 positions the selected rows span several blocks of the attention (f32 and bf16
  caches, the bf16 one against the reference with bf16-rounded latents, bounded as in test_engine's bf16
  cache test), and tokens of a chunk below and above index_topk are mixed;
- bad indexer configs are refused by export.py and run.c with one line;
- -m chat feeds the turns of encoding_dsv32.py as model-spec-addendum C.6 states its rules (written here
  independently of run.c), in chat (--no-think) and thinking mode, with the BOS that the encoder adds
  although tokenizer_config.json says add_bos_token false; -i adds it too.
"""
import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

import gen_checkpoints as G
import reference as R
from test_families import edited_checkpoint as edited  # a copy of a checkpoint with config.json edited

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-4
MARGIN = 1e-5  # a selection closer than this to a tie could flip between float32 and float64


def export(hf: str, out: str, *extra: str) -> subprocess.CompletedProcess:
    exporter = os.environ.get("SEEK_EXPORT") or os.path.join(ROOT, "export.py")
    return subprocess.run([sys.executable, exporter, hf, out, *extra], capture_output=True, text=True)


def logits(run_bin: str, model: str, toks: list, out: str, *opts: str) -> np.ndarray:
    cmd = [run_bin, model, "--tokens", ",".join(map(str, toks)), "--dump-logits", out, *opts]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{' '.join(cmd)}: {r.stderr[-2000:]}"
    return np.fromfile(out, "<f4").reshape(len(toks), -1).astype(np.float64)


def tokens(vocab: int, n: int, seed: int = 7) -> list:
    return [int(i) for i in np.random.default_rng(seed).choice(vocab - 1, n, replace=False)]


def exported_dir(hf: str, dtype: str = "f32") -> str:
    out = hf + f"-{dtype}.bin"
    if not os.path.exists(out):
        r = export(hf, out, "--dtype", dtype)
        assert r.returncode == 0, r.stderr
    return out


# ---------------------------------------------------------------- sparse attention against the reference

@pytest.mark.parametrize("variant", ["v32", "v32fp8"])
def test_selection_changes_the_output_and_run_c_follows_it(variant, checkpoint, exported, run_bin, workdir):
    hf, model = checkpoint(variant), exported(variant, "f32")
    ref = R.load(hf)
    toks = tokens(ref.cfg["vocab_size"], 48)
    margins = []
    want = ref.forward(toks, index_margins=margins)
    nonzero = [m for m in margins if m != 0]  # exact ties (all ReLUs 0) are equal in float32 too
    assert len(margins) == 40 * ref.cfg["num_hidden_layers"] and min(nonzero) > MARGIN, min(nonzero)
    dense = ref.forward(toks, sparse=False)
    assert np.abs(dense - want).max() > 1000 * TOL, "index_topk 8 of 48 positions should change the logits"
    for opts in ((), ("-ub", "1")):  # one token at a time: positions 0..7 skip the indexer's scoring
        got = logits(run_bin, model, toks, os.path.join(workdir, f"{variant}-sparse.f32"), *opts)
        diff = np.abs(got - want).max(axis=1)
        assert diff.max() <= TOL, f"{opts}: max |run.c - reference| {diff.max():.3g} at {int(diff.argmax())}"


@pytest.mark.parametrize("variant", ["v32", "v32fp8"])
def test_control_indexer_rope_on_adjacent_pairs(variant, checkpoint, exported, run_bin, workdir):
    """The September 2025 code rotated the indexer's adjacent pairs, as MLA does; DeepSeek's fix rotates halves."""
    hf, model = checkpoint(variant), exported(variant, "f32")
    ref = R.load(hf)
    toks = tokens(ref.cfg["vocab_size"], 48)
    got = logits(run_bin, model, toks, os.path.join(workdir, f"{variant}-rope.f32"))
    good = np.abs(got - ref.forward(toks)).max()
    bad = np.abs(got - ref.forward(toks, index_rope_halves=False)).max()
    assert good <= TOL and bad > 100 * TOL, f"halves {good:.3g}, adjacent pairs {bad:.3g}"


def v3_copy(hf: str, out: str) -> str:
    """The same weights as a DeepSeek-V3 checkpoint: no indexer tensors, no index_* config fields."""
    os.makedirs(out, exist_ok=True)
    st = R.SafeTensors(hf)
    entries = []
    for name in sorted(st.names()):
        if ".indexer." in name:
            continue
        path, dtype, shape, off, nbytes = st.where[name]
        with open(path, "rb") as f:
            f.seek(off)
            entries.append((name, dtype, shape, f.read(nbytes)))
    G.write_safetensors(os.path.join(out, "model.safetensors"), entries)
    cfg = json.load(open(os.path.join(hf, "config.json")))
    for k in ("index_n_heads", "index_head_dim", "index_topk"):
        del cfg[k]
    cfg.update(model_type="deepseek_v3", architectures=["DeepseekV3ForCausalLM"])
    json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=2)
    return out


def test_topk_at_least_context_is_v3(checkpoint, run_bin, workdir):
    """index_topk 48 >= a 48-token prompt: every position is selected, the scoring is skipped, and the
    logits are those of the same weights run as DeepSeek-V3, bit for bit (batched and token by token)."""
    hf = edited(checkpoint, workdir, "v32", "v32-topk48", lambda c: c.update(index_topk=48))
    v32 = exported_dir(hf)
    v3 = exported_dir(v3_copy(hf, os.path.join(workdir, "hf", "v32-as-v3")))
    toks = tokens(500, 48)
    want = logits(run_bin, v3, toks, os.path.join(workdir, "as-v3.f32"))
    for opts in ((), ("-ub", "1")):
        got = logits(run_bin, v32, toks, os.path.join(workdir, "topk48.f32"), *opts)
        assert np.array_equal(got, want), f"{opts}: max diff {np.abs(got - want).max():.3g}"
    ref = R.Reference(hf)
    assert np.abs(want - ref.forward(toks)).max() <= TOL
    assert np.array_equal(ref.forward(toks), ref.forward(toks, sparse=False))


def test_decode_prefill_and_threads_agree(exported, run_bin, workdir):
    model = exported("v32", "f32")
    toks = tokens(500, 64, seed=3)
    base = logits(run_bin, model, toks, os.path.join(workdir, "agree.f32"))
    for opts in (("--threads", "1"), ("--threads", "3"), ("-ub", "1"), ("-ub", "7"), ("-ub", "1", "--threads", "3")):
        got = logits(run_bin, model, toks, os.path.join(workdir, "agree2.f32"), *opts)
        assert np.array_equal(got, base), f"{opts}: max diff {np.abs(got - base).max():.3g}"


@pytest.mark.parametrize("cache", ["f32", "bf16"])
def test_selection_over_several_blocks(cache, checkpoint, run_bin, workdir):
    """index_topk 100 of up to 160 positions: each query's selected rows fill two blocks of the blocked
    attention; the first prefill chunk (64) is dense, the second mixes queries below and above index_topk."""
    hf = edited(checkpoint, workdir, "v32", "v32-topk100", lambda c: c.update(index_topk=100))
    model = exported_dir(hf)
    ref = R.Reference(hf)
    toks = [int(t) for t in np.random.default_rng(9).integers(0, 500, 160)]
    margins = []
    want = ref.forward(toks, bf16_cache=(cache == "bf16"), index_margins=margins)
    assert min(m for m in margins if m != 0) > MARGIN
    assert np.abs(ref.forward(toks, sparse=False) - want).max() > 100 * TOL
    got = logits(run_bin, model, toks, os.path.join(workdir, f"blocks-{cache}.f32"), "--cache-type", cache)
    diff = np.abs(got - want).max(axis=1)
    if cache == "f32":
        assert diff.max() <= TOL, f"max diff {diff.max():.3g} at {int(diff.argmax())}"
    else:  # a value within fp32 error of a bf16 midpoint rounds apart: the bound of test_engine's bf16 cache test
        assert np.median(diff) <= 2e-3, f"median position's max |diff| {np.median(diff):.3g}"
    single = logits(run_bin, model, toks, os.path.join(workdir, f"blocks-{cache}-1.f32"), "--cache-type", cache,
                    "-ub", "1")
    assert np.array_equal(single, got), f"token by token: max diff {np.abs(single - got).max():.3g}"


# ---------------------------------------------------------------- bad configs

def v32_config_cases():
    return {
        "missing-index_topk": (lambda c: c.pop("index_topk"), "index_topk"),
        "index_topk-0": (lambda c: c.update(index_topk=0), "index_topk"),
        "index_head_dim-below-rope": (lambda c: c.update(index_head_dim=8), "index_head_dim"),
        "index_n_heads-string": (lambda c: c.update(index_n_heads="8"), "index_n_heads"),
        "index_n_heads-2048": (lambda c: c.update(index_n_heads=2048), "index_n_heads"),
        "no-q-lora": (lambda c: c.update(q_lora_rank=None), "q_lora_rank"),
    }


@pytest.mark.parametrize("case", sorted(v32_config_cases()))
def test_export_refuses_bad_indexer_config(case, checkpoint, workdir):
    edit, word = v32_config_cases()[case]
    hf = edited(checkpoint, workdir, "v32", f"v32-bad-{case}", edit)
    r = export(hf, hf + ".bin")
    assert r.returncode == 1 and word in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not os.path.exists(hf + ".bin")


@pytest.mark.parametrize("word,value,name", [(40, 0, "index_topk"), (39, 15, "index_head_dim"),
                                             (38, 1 << 11, "index_n_heads"), (4, 0, "q_lora_rank")])
def test_run_refuses_bad_indexer_words(word, value, name, exported, run_bin, workdir):
    buf = bytearray(open(exported("v32", "f32"), "rb").read())
    buf[12 + 4 * word:16 + 4 * word] = struct.pack("<i", value)
    bad = os.path.join(workdir, f"v32-word{word}.bin")
    open(bad, "wb").write(bytes(buf))
    r = subprocess.run([run_bin, bad, "--tokens", "1,2"], capture_output=True, text=True, timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and name in lines[0], r.stderr


# ---------------------------------------------------------------- chat: encoding_dsv32's rules

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"


def encode_dsv32(messages: list, thinking: bool, context: list = ()) -> str:
    """encoding_dsv32.encode_messages(messages, thinking_mode, context) as model-spec-addendum C.6 gives its
    rules (no tools): BOS unless there is context; a system message is its text; a user turn is
    <｜User｜>{u}<｜Assistant｜> then <think> if it is the last user turn in thinking mode, else </think>;
    an assistant turn is {reasoning</think> only in thinking mode after the last user turn}{content}EOS."""
    full = list(context) + list(messages)
    last_user = max(i for i, m in enumerate(full) if m["role"] == "user")
    text = "" if context else BOS
    for i in range(len(context), len(full)):
        m = full[i]
        if m["role"] == "system":
            text += m["content"]
        elif m["role"] == "user":
            text += "<｜User｜>" + m["content"] + "<｜Assistant｜>"
            text += "<think>" if thinking and i == last_user else "</think>"
        else:
            reasoning = m.get("reasoning", "") + "</think>" if thinking and i > last_user else ""
            text += reasoning + m["content"] + EOS
    return text


def test_encoder_rules_match_the_addendum_examples():
    sys_user = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert encode_dsv32(sys_user, True) == BOS + "S<｜User｜>U<｜Assistant｜><think>"
    assert encode_dsv32(sys_user, False) == BOS + "S<｜User｜>U<｜Assistant｜></think>"
    two = sys_user + [{"role": "assistant", "content": "A", "reasoning": "R"}, {"role": "user", "content": "V"}]
    assert encode_dsv32(two, True) == BOS + "S<｜User｜>U<｜Assistant｜></think>A" + EOS + \
        "<｜User｜>V<｜Assistant｜><think>"  # earlier reasoning dropped, earlier turn closed


def v32_chat_model(checkpoint, workdir: str) -> str:
    """v32 with tests/gen_checkpoints.py's small V3-style tokenizer, and V3.2's tokenizer_config.json:
    add_bos_token false, no chat_template."""
    hf = os.path.join(workdir, "hf", "v32-chat")
    if not os.path.exists(hf):
        shutil.copytree(checkpoint("v32"), hf)
        G.write_tokenizer(hf, 60)
        path = os.path.join(hf, "tokenizer_config.json")
        cfg = json.load(open(path))
        cfg["add_bos_token"] = False
        assert "chat_template" not in cfg
        json.dump(cfg, open(path, "w"), indent=2)
    return exported_dir(hf)


def encode(run_bin: str, model: str, text: str) -> list:
    r = subprocess.run([run_bin, model, "--encode"], input=text.encode(), capture_output=True, check=True)
    return [int(x) for x in r.stdout.split()]


@pytest.mark.parametrize("thinking", [False, True])
@pytest.mark.parametrize("system", [None, "You are terse."])
def test_chat_feeds_encoding_dsv32_turns(thinking, system, checkpoint, run_bin, workdir):
    """Each turn is encoded incrementally, encode_messages([user], mode, context=history), as run.c keeps the
    history in its cache: earlier reasoning stays there (the encoder drops it only when it re-renders)."""
    model = v32_chat_model(checkpoint, workdir)
    users = ["Hello there.", "And then?", "One more."]
    args = [run_bin, model, "-m", "chat", "-t", "0", "-n", "6", "--print-ids"] + ([] if thinking else ["--no-think"])
    args += ["-y", system] if system else []
    chat = subprocess.run(args, input="\n".join(users).encode() + b"\n", capture_output=True, timeout=120)
    assert chat.returncode == 0, chat.stderr
    replies = [[int(x) for x in line.split()] for line in chat.stdout.decode().splitlines()]
    assert len(replies) == len(users)
    history, fed = ([{"role": "system", "content": system}] if system else []), []
    for k, (user, reply) in enumerate(zip(users, replies)):
        new = [{"role": "user", "content": user}]
        text = encode_dsv32(history + new, thinking) if k == 0 else encode_dsv32(new, thinking, history)
        ids = encode(run_bin, model, text)
        assert (ids[0] == 0) == (k == 0)  # BOS (id 0, an added token) opens the first turn only
        fed += ids
        want = subprocess.run([run_bin, model, "--tokens", ",".join(map(str, fed)), "-n", "6", "-t", "0",
                               "--print-ids"], capture_output=True, check=True)
        assert reply == [int(x) for x in want.stdout.split()], (k, text)
        fed += [t for t in reply if t != 1] + [1]
        history += new + [{"role": "assistant", "content": "(reply)"}]


def test_chat_save_load_keeps_the_indexer_keys(checkpoint, run_bin, workdir, tmp_path):
    """/save writes the indexer's key cache beside the latent cache: after /load, a turn past index_topk
    positions selects as the unbroken conversation does, so its logits are the same bit for bit."""
    model, save = v32_chat_model(checkpoint, workdir), tmp_path / "conv.bin"

    def chat(text: str, dump: str) -> tuple:
        r = subprocess.run([run_bin, model, "-m", "chat", "-t", "0", "-n", "6", "--dump-logits", dump],
                           input=text.encode(), capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stderr.decode(), np.fromfile(dump, "<f4")

    a, la = chat(f"Hello there.\n/save {save}\nAnd then?\n", str(tmp_path / "a.f32"))
    saved = int(a.split("(saved ")[1].split()[0])
    assert saved > G.VARIANTS["v32"]["index_topk"], a
    b, lb = chat(f"/load {save}\nAnd then?\n", str(tmp_path / "b.f32"))
    assert f"(loaded {saved} positions" in b and lb.size and np.array_equal(lb, la[-lb.size:]), b


def test_text_prompt_gets_bos_and_family_detection(checkpoint, run_bin, workdir, tmp_path):
    model = v32_chat_model(checkpoint, workdir)
    by_text = subprocess.run([run_bin, model, "-i", "Hello", "-n", "4", "-t", "0", "--print-ids"], capture_output=True)
    ids = [0] + encode(run_bin, model, "Hello")
    by_ids = subprocess.run([run_bin, model, "--tokens", ",".join(map(str, ids)), "-n", "4", "-t", "0", "--print-ids"],
                            capture_output=True)
    assert by_text.returncode == 0 and by_text.stdout == by_ids.stdout
    # the tokenizer alone: family 7 and the BOS flag from the encoder file, family 0 without it
    tok = tmp_path / "tok"
    shutil.copytree(os.path.join(workdir, "hf", "v32-chat"), tok)
    os.remove(tok / "config.json")
    header = lambda: struct.unpack_from("<IIII", open(tmp_path / "t.bin", "rb").read(), 28)  # noqa: E731
    assert export(str(tok), str(tmp_path / "t.bin"), "--tokenizer").returncode == 0
    assert header()[0] & 1 == 0 and header()[2] == 0
    os.makedirs(tok / "encoding")
    (tok / "encoding" / "encoding_dsv32.py").write_text("# DeepSeek-V3.2's encoder\n")
    assert export(str(tok), str(tmp_path / "t.bin"), "--tokenizer").returncode == 0
    assert header()[0] & 1 == 1 and header()[2] == 7
