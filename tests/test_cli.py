"""The command line (issue 15): flags, sampling, chat and the routing trace.

Independent references: the sampler is checked against expectations computed here from llama.cpp's
definitions (on logit vectors chosen by the test, through tests/hooks.c, which compiles run.c in);
the repeat penalty against the engine's own teacher-forced logits penalised here; chat's cache against
teacher forcing of the whole conversation; --trace against the numpy reference (tests/reference.py).
"""
import json
import math
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest

import reference
from test_engine import read_model_file

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
EXPORT = os.path.join(ROOT, "export.py")
SHIPPED = os.path.join(ROOT, "models", "shakespeare.bin")
TRACE_VIEW = os.path.join(ROOT, "tools", "trace_view.py")


def run(run_bin, *args, stdin=b"", timeout=120):
    return subprocess.run([run_bin, *map(str, args)], input=stdin, capture_output=True, timeout=timeout)


def ok(p):
    assert p.returncode == 0 and b"Sanitizer" not in p.stderr, p.stderr.decode(errors="replace")[-3000:]
    return p


def one_error(p, *words):
    lines = p.stderr.decode(errors="replace").strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), (p.returncode, lines)
    for w in words:
        assert w in lines[0], (w, lines[0])


def ids(p):
    return [int(x) for x in ok(p).stdout.split()]


@pytest.fixture(scope="module")
def v3(exported):
    return exported("v3", "f32")


def n_tokens_of(path):
    return read_model_file(path)["ints"][35]


# ---------------------------------------------------------------- flags

def test_help_goes_to_stdout_and_lists_every_flag(run_bin):
    for flag in ("--help", "-h"):
        p = ok(run(run_bin, flag))
        assert p.stdout.startswith(b"usage: run model.bin") and p.stderr == b""
    helped = {w for line in p.stdout.decode().splitlines()[2:] for w in line.split()[:4] if re.fullmatch(r"--?[a-z][a-z-]*", w)}
    assert {"-n", "--n-predict", "--temp", "--top-p", "--top-k", "--min-p", "--seed", "--ctx-size", "--threads",
            "-f", "--file", "--repeat-penalty", "--repeat-last-n", "--stop", "--no-echo", "-v", "--version",
            "--keep-last", "--trace", "-ub"} <= helped
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    missing = sorted(f for f in helped if f"`{f}" not in readme and f" {f}" not in readme)
    assert not missing, f"flags in --help but not in README.md: {missing}"
    p = run(run_bin)  # no arguments: a usage error
    assert p.returncode == 1 and p.stdout == b"" and p.stderr.startswith(b"usage:")


def test_version(run_bin):
    for flag in ("-v", "--version"):
        p = ok(run(run_bin, flag))
        assert p.stdout.startswith(b"seek.c") and b"model file format" in p.stdout


def test_flags_before_and_after_the_model(run_bin, v3):
    want = ids(run(run_bin, v3, "--tokens", "5,6,7", "-n", "8", "-t", "0", "--print-ids"))
    assert len(want) == 8
    assert ids(run(run_bin, "--tokens", "5,6,7", "-n", "8", "-t", "0", "--print-ids", v3)) == want
    assert ids(run(run_bin, "-n", "8", v3, "--tokens", "5,6,7", "-t", "0", "--print-ids")) == want
    assert ids(run(run_bin, v3, "--tokens", "5,6,7", "--n-predict", "8", "--temp", "0", "--print-ids")) == want
    one_error(run(run_bin, v3, "--tokens", "5", v3), "two model files")
    one_error(run(run_bin, "--tokens", "5", "-n", "2"), "no model file")


BAD = [(["--stop", ""], "--stop"), (["--repeat-penalty", "0"], "--repeat-penalty"), (["--min-p", "1.5"], "--min-p"),
       (["--repeat-last-n", "-2"], "--repeat-last-n"), (["-s", "4294967296"], "-s"), (["--top-k", "2.5"], "integer"),
       (["--n-predict", "ten"], "--n-predict"), (["-f", "/no/such/file"], "cannot open prompt"),
       (["--trace-layer", "99"], "--trace-layer"), (["-ub", "0"], "-ub"), (["--stop", "x", "--print-ids"], "--stop"),
       (["-f", "-", "-i", "x"], "either")]


@pytest.mark.parametrize("args,word", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_new_flags(run_bin, v3, args, word):
    one_error(run(run_bin, v3, *(args if "-f" in args else args + ["--tokens", "5"])), word)


def test_prompt_from_a_file_or_stdin(run_bin, v3, tmp_path):
    text = "The quick brown fox jumps over the lazy dog.\n"
    want = ok(run(run_bin, v3, "-i", text, "-n", "6", "-t", "0")).stdout
    assert want.startswith(text.encode())  # the prompt is echoed
    assert ok(run(run_bin, v3, "-f", "-", "-n", "6", "-t", "0", stdin=text.encode())).stdout == want
    (tmp_path / "p.txt").write_text(text, encoding="utf-8")
    assert ok(run(run_bin, v3, "--file", tmp_path / "p.txt", "-n", "6", "-t", "0")).stdout == want


def test_make_run_echoes_the_prompt(run_bin):
    p = ok(run(run_bin, SHIPPED, "-n", "8", "-t", "0", "-i", "ROMEO:"))
    assert p.stdout.startswith(b"ROMEO:")
    q = ok(run(run_bin, SHIPPED, "-n", "8", "-t", "0", "-i", "ROMEO:", "--no-echo"))
    assert p.stdout == b"ROMEO:" + q.stdout


def test_stop_ends_exactly_before_the_stop_string(run_bin):
    """--stop cuts the continuation exactly before the first occurrence of any stop string, which is never
    printed; the strings below span several tokens, so a decoder that printed a possible start of a stop
    string before knowing would print part of it."""
    base = [SHIPPED, "-n", "80", "-t", "0", "-i", "ROMEO:", "--no-echo"]
    full = ok(run(run_bin, *base)).stdout.decode()
    assert full.endswith("\n") and len(full) > 60
    text = full[:-1]
    for start in (3, 17, 30):
        stop = text[start:start + 7]
        cut = text.find(stop)
        p = ok(run(run_bin, *base, "--stop", stop))
        assert p.stdout.decode() == text[:cut] + "\n", (stop, p.stdout)
    # several stop strings: the earliest wins, whichever flag gave it
    a, b = text[40:46], text[20:26]
    assert ok(run(run_bin, *base, "--stop", a, "--stop", b)).stdout.decode() == text[:min(text.find(a), text.find(b))] + "\n"
    # a stop string inside the prompt does not stop the echo
    p = ok(run(run_bin, SHIPPED, "-n", "80", "-t", "0", "-i", "ROMEO:", "--stop", "ROMEO"))
    assert p.stdout.decode().startswith("ROMEO:") and "ROMEO" not in p.stdout.decode()[6:]


def test_keep_last(run_bin, v3):
    prompt = [0] + list(range(5, 40))  # BOS and 35 tokens
    one_error(run(run_bin, v3, "--tokens", ",".join(map(str, prompt)), "-c", "20", "-n", "4"), "--keep-last", "raise -c")
    got = ids(run(run_bin, v3, "--tokens", ",".join(map(str, prompt)), "-c", "20", "-n", "4", "--keep-last", "-t", "0",
                  "--print-ids"))
    kept = [0] + prompt[-15:]  # 20 - min(4, 20 / 2) = 16 tokens: BOS and the last 15
    assert got == ids(run(run_bin, v3, "--tokens", ",".join(map(str, kept)), "-c", "20", "-n", "4", "-t", "0", "--print-ids"))
    top = read_model_file(SHIPPED)["ints"][31]  # max_position_embeddings: -c is capped there
    p = run(run_bin, SHIPPED, "-i", "ROMEO: " * top, "-c", "100000", "-n", "4")
    one_error(p, f"the model's maximum is {top}", "--keep-last")


# ---------------------------------------------------------------- sampling

def penalised(logits, history, penalty, last_n):
    x = np.array(logits, dtype=np.float64)
    window = history if last_n < 0 else history[len(history) - last_n:] if last_n else []
    for t in set(window) & set(range(len(x))):
        x[t] = x[t] / penalty if x[t] > 0 else x[t] * penalty
    return x


@pytest.mark.parametrize("last_n", [64, 1, -1])
def test_repeat_penalty_changes_greedy_output(run_bin, v3, workdir, last_n):
    """Greedy decoding with --repeat-penalty picks the argmax of the logits penalised over the last
    --repeat-last-n tokens of prompt + output (llama.cpp: positive logits divided, negative multiplied),
    computed here from the engine's teacher-forced logits."""
    n_tok = n_tokens_of(v3)
    prompt = [0] + [5, 9, 5, 9, 5, 9, 5, 9, 17, 17, 30]
    plain = ids(run(run_bin, v3, "--tokens", ",".join(map(str, prompt)), "-n", "8", "-t", "0", "--print-ids"))
    got = ids(run(run_bin, v3, "--tokens", ",".join(map(str, prompt)), "-n", "8", "-t", "0", "--print-ids",
                  "--repeat-penalty", "4", "--repeat-last-n", str(last_n)))
    seq = prompt + got[:-1]
    out = os.path.join(workdir, f"pen{last_n}.f32")
    ok(run(run_bin, v3, "--tokens", ",".join(map(str, seq)), "--dump-logits", out))
    rows = np.fromfile(out, "<f4").reshape(len(seq), -1)[len(prompt) - 1:, :n_tok]
    changed = 0
    for i, row in enumerate(rows):
        x = penalised(row, prompt + got[:i], 4.0, last_n)
        order = np.argsort(-x)
        if x[order[0]] - x[order[1]] < 1e-4:
            break  # a near-tie: the batched teacher-forced logits may round the other way
        assert got[i] == order[0], f"step {i}: got {got[i]}, penalised argmax {order[0]}"
        changed += got[i] != int(np.argmax(row))
    assert changed or got != plain, "the penalty changed nothing; pick another prompt"
    assert got != plain


@pytest.fixture(scope="module")
def hooks(tmp_path_factory):
    exe = str(tmp_path_factory.mktemp("hooks") / "hooks")
    cc = os.environ.get("CC", "cc")
    r = subprocess.run([cc, "-O1", "-std=c11", "-D_POSIX_C_SOURCE=200809L", "-o", exe, os.path.join(TESTS, "hooks.c"),
                        "-lm", "-lpthread"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return exe


def draw(hooks, logits, n=None, temp=1.0, top_p=1.0, min_p=0.0, top_k=0, penalty=1.0, last_n=64, history=(),
         draws=20000, seed=1):
    n = len(logits) if n is None else n
    case = (f"{n} {temp} {top_p} {min_p} {top_k} {penalty} {last_n} {draws} {seed}\n" + " ".join(map(str, logits))
            + "\n" + " ".join(map(str, history)) + "\n")
    r = subprocess.run([hooks, "sample"], input=case.encode(), capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return np.array([int(x) for x in r.stdout.split()])


def expected(logits, temp=1.0, top_p=1.0, min_p=0.0, top_k=0):
    """llama.cpp's chain on one logit vector: top-k -> top-p -> min-p (both at temperature 1) -> temperature."""
    x = np.array(logits, dtype=np.float64)
    order = list(np.argsort(-x, kind="stable"))
    if top_k > 0:
        order = order[:top_k]
    if top_p < 1:
        p = np.exp(x[order] - x[order[0]])
        p /= p.sum()
        order = order[:int(np.searchsorted(np.cumsum(p), top_p) + 1)]
    if min_p > 0:
        order = [i for i in order if x[i] >= x[order[0]] + math.log(min_p)]
    p = np.zeros(len(x))
    p[order] = np.exp((x[order] - x[order[0]]) / temp)
    return p / p.sum()


def assert_distribution(counts, p):
    n = counts.sum()
    assert set(np.nonzero(counts)[0]) == set(np.nonzero(p)[0]), (counts, p)
    sigma = np.sqrt(n * p * (1 - p)) + 1
    assert np.all(np.abs(counts - n * p) <= 5 * sigma), (counts, n * p)


LOGITS = [3.0, 2.5, 1.0, 0.0, -1.0, 2.9, -3.0]
SAMPLER_CASES = {
    "min_p": dict(min_p=0.2),                      # keeps logits >= 3 + ln 0.2 = 1.39: ids 0, 1, 5
    "min_p_then_temperature": dict(min_p=0.2, temp=3.0),
    "top_p_before_temperature": dict(top_p=0.5, temp=8.0),  # at temperature 1 ids 0 and 5 make 0.5
    "top_k_then_top_p": dict(top_k=3, top_p=0.9),
    "all": dict(top_k=5, top_p=0.95, min_p=0.1, temp=0.7),
    "plain": dict(),
}


@pytest.mark.parametrize("case", sorted(SAMPLER_CASES))
def test_sampler_chain_on_known_logits(hooks, case):
    kw = SAMPLER_CASES[case]
    assert_distribution(draw(hooks, LOGITS, **kw), expected(LOGITS, **kw))


def test_min_p_is_relative_to_the_top_probability(hooks):
    """min-p 0.5 keeps ids at least half as likely as the most likely one: logit >= max - ln 2."""
    logits = [1.0, 1.0 - math.log(2) + 0.01, 1.0 - math.log(2) - 0.01, 0.5, -2.0]
    counts = draw(hooks, logits, min_p=0.5)
    assert counts[0] > 0 and counts[1] > 0 and counts[3] > 0 and counts[2] == 0 and counts[4] == 0
    assert_distribution(counts, expected(logits, min_p=0.5))


def test_penalty_and_padding_in_the_sampler(hooks):
    # greedy: id 0 (3.0) penalised to 1.5 loses to id 5 (2.9), then id 5 (1.45) to id 1 (2.5)
    assert list(draw(hooks, LOGITS, temp=0, penalty=2.0, history=[0, 0, 4], draws=3)) == [0, 0, 0, 0, 0, 3, 0]
    assert list(draw(hooks, LOGITS, temp=0, penalty=2.0, history=[5, 0], draws=3)) == [0, 3, 0, 0, 0, 0, 0]
    logits = [3.0, 2.5, 1.0, 0.0, -1.0]
    want = penalised(logits, [9, 0, 4, 0], 2.0, 64)  # 9 is beyond n: ignored
    assert_distribution(draw(hooks, logits, penalty=2.0, history=[9, 0, 4, 0]), expected(want))
    # only the last 2 tokens of history count
    want = penalised(logits, [0, 1, 2, 3], 2.0, 2)
    assert_distribution(draw(hooks, logits, penalty=2.0, last_n=2, history=[0, 1, 2, 3]), expected(want))
    # ids >= n are padding rows: never drawn, however large
    counts = draw(hooks, [0.0, 0.0, 50.0], n=2, draws=2000)
    assert len(counts) == 2 and counts.sum() == 2000


def test_seed_is_printed_and_reproduces(run_bin, v3):
    args = [v3, "--tokens", "5,6,7,8", "-n", "24", "-t", "1.5", "-p", "1", "--print-ids"]
    first = ok(run(run_bin, *args))
    lines = [l for l in first.stderr.decode().splitlines() if l.startswith("seed: ")]
    assert len(lines) == 1
    seed = int(lines[0].split()[1])
    assert 1 <= seed < 2 ** 32
    again = ok(run(run_bin, *args, "-s", seed))
    assert again.stdout == first.stdout and f"seed: {seed}\n".encode() in again.stderr
    other = ok(run(run_bin, *args, "-s", seed % 1000 + 1 if seed % 1000 + 1 != seed else 7))
    assert other.stdout != first.stdout


# ---------------------------------------------------------------- chat

@pytest.fixture(scope="module")
def chat_model(checkpoint, tmp_path_factory):
    """The v3 checkpoint with DeepSeek-V3's chat template, and with R1's (its generation prompt opens <think>)."""
    with open(os.path.join(TESTS, "data", "chat_fixture.json"), encoding="utf-8") as f:
        template = json.load(f)["cases"][0]["template"]
    r1 = template.replace("{{'<｜Assistant｜>'}}{% endif %}", "{{'<｜Assistant｜><think>\\n'}}{% endif %}")
    assert r1 != template
    made = {}
    for name, tpl in (("v3", template), ("r1", r1)):
        hf = tmp_path_factory.mktemp("chat") / "hf"
        shutil.copytree(checkpoint("v3"), hf)
        cfg = json.loads((hf / "tokenizer_config.json").read_text(encoding="utf-8"))
        cfg["chat_template"] = tpl
        (hf / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
        tj = json.loads((hf / "tokenizer.json").read_text(encoding="utf-8"))
        for content in ("<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"):  # added tokens, as in DeepSeek's files
            i = len(tj["model"]["vocab"])
            tj["model"]["vocab"][content] = i
            tj["added_tokens"].append({"id": i, "content": content, "single_word": False, "lstrip": False,
                                       "rstrip": False, "normalized": False, "special": content[1] == "｜"})
        (hf / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
        made[name] = str(hf.parent / f"{name}.bin")
        subprocess.run([sys.executable, EXPORT, hf, made[name]], check=True, capture_output=True)
    return made


def encode(run_bin, model, text):
    return ids(run(run_bin, model, "--encode", stdin=text if isinstance(text, bytes) else text.encode()))


def chat(run_bin, model, stdin, dump, *args):
    p = ok(run(run_bin, model, "-m", "chat", "-t", "0", "-n", "6", "--print-ids", "--dump-logits", dump, *args,
               stdin=stdin.encode()))
    V = read_model_file(model)["ints"][2]
    return p, np.fromfile(dump, "<f4").reshape(-1, V)


def test_chat_moves_the_model_into_memory_unchanged(run_bin, chat_model, tmp_path):
    """In chat, while run.c waits for the user's turn, a thread reads the mapped file into huge-page memory,
    which then takes the mapping's place between two forward passes (mremap, Linux). Over three turns the
    replies and their logits equal --no-mmap's (read before the first token) bit for bit."""
    stdin = "hello\nand again\nonce more\n"
    got = [chat(run_bin, chat_model["v3"], stdin, str(tmp_path / f"moved{len(how)}.f32"), *how)
           for how in ([], ["--no-mmap"])]
    assert got[0][0].stdout == got[1][0].stdout and np.array_equal(got[0][1], got[1][1])


def replies(p):
    return [[int(x) for x in line.split()] for line in p.stdout.decode().splitlines()]


def teacher_forced(run_bin, model, seq, path):
    ok(run(run_bin, model, "--tokens", ",".join(map(str, seq)), "--dump-logits", path))
    return np.fromfile(path, "<f4").reshape(len(seq), -1)


@pytest.mark.parametrize("family", ["v3", "r1"])
def test_chat_cache_equals_the_rendered_conversation(run_bin, chat_model, tmp_path, family):
    """The logits each reply token was sampled from equal those of the whole conversation, rendered by the
    template and teacher-forced: history turns close with EOS, and R1's keep only the text after the last
    </think>, without the "<think>\\n" the generation prompt opened. Empty lines are ignored."""
    model = chat_model[family]
    p, got = chat(run_bin, model, "hello there\n\n\nand again\n", str(tmp_path / "chat.f32"))
    assert p.stderr.count(b"Assistant: ") == 2
    r = replies(p)
    eos = 1
    think = "<think>\n" if family == "r1" else ""
    turn1 = encode(run_bin, model, f"<｜begin▁of▁sentence｜><｜User｜>hello there<｜Assistant｜>{think}")
    turn2 = encode(run_bin, model, f"<｜User｜>and again<｜Assistant｜>{think}")
    reply1 = [t for t in r[0] if t != eos]
    if family == "r1":  # the history holds the reply's text after its last </think>, without "<think>\n"
        text = ok(run(run_bin, model, "--decode", stdin=" ".join(map(str, reply1)).encode())).stdout
        assert b"</think>" in text  # the new ids take rows of lm_head that gen_checkpoints made large
        hist1 = encode(run_bin, model, "<｜begin▁of▁sentence｜><｜User｜>hello there<｜Assistant｜>".encode()
                       + text.split(b"</think>")[-1])
    else:
        hist1 = turn1 + reply1
    seq = hist1 + [eos] + turn2 + r[1]
    want = teacher_forced(run_bin, model, seq, str(tmp_path / "tf.f32"))
    n1 = len(r[0])
    first = [len(turn1) - 1 + i for i in range(n1)]  # rows of turn 1's reply (prompt as generated)
    tf1 = teacher_forced(run_bin, model, turn1 + r[0][:-1] if r[0][-1] == eos else turn1 + r[0], str(tmp_path / "tf1.f32"))
    assert np.abs(got[:n1] - tf1[first]).max() < 1e-4
    start = len(hist1) + 1 + len(turn2) - 1
    assert np.abs(got[n1:] - want[start:start + len(r[1])]).max() < 1e-4


def test_chat_save_load_and_reset(run_bin, chat_model, tmp_path):
    """/load continues a conversation with bit-identical logits; /reset starts a new one."""
    model = chat_model["v3"]
    save = tmp_path / "conv.bin"
    a, la = chat(run_bin, model, f"hello there\n/save {save}\nand again\n", str(tmp_path / "a.f32"))
    assert b"(saved " in a.stderr and save.exists() and not os.path.exists(str(save) + ".tmp")
    b, lb = chat(run_bin, model, f"/load {save}\nand again\n", str(tmp_path / "b.f32"))
    assert b"(loaded " in b.stderr
    assert replies(b)[0] == replies(a)[1] and np.array_equal(lb, la[-len(lb):])
    c, lc = chat(run_bin, model, "hello there\n/reset\nhello there\n", str(tmp_path / "c.f32"))
    n1 = len(replies(c)[0])
    assert b"new conversation" in c.stderr and np.array_equal(lc[:n1], lc[n1:])
    # refused files leave the conversation as it was
    (tmp_path / "junk").write_bytes(b"not a conversation")
    d, ld = chat(run_bin, model, f"hello there\n/load {tmp_path / 'junk'}\n/load {tmp_path / 'none'}\nand again\n",
                 str(tmp_path / "d.f32"))
    assert d.stderr.count(b"cannot load") == 2 and np.array_equal(ld, la)
    e, _ = chat(run_bin, SHIPPED, f"/load {save}\nhi\n", str(tmp_path / "e.f32"))  # another model
    assert b"not saved with this model" in e.stderr
    short = tmp_path / "short.bin"
    short.write_bytes(save.read_bytes()[:-7])
    f, lf = chat(run_bin, model, f"/load {short}\nhello there\n", str(tmp_path / "f.f32"))
    assert b"truncated or corrupt" in f.stderr and np.array_equal(lf, la[:len(lf)])


def test_chat_context_full_is_announced_at_once(run_bin, chat_model):
    p = ok(run(run_bin, chat_model["v3"], "-m", "chat", "-c", "40", "-n", "100", "-t", "0", "--print-ids",
               stdin=b"hello there\nthis line is never read\n"))
    err = p.stderr.decode()
    assert "is full; ending the chat" in err and err.count("User: ") == 1, err


class Pty:
    def __init__(self, argv):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.execv(argv[0], argv)
        self.out = b""

    def read_until(self, pattern: bytes, timeout=60.0) -> bytes:
        end = time.time() + timeout
        while pattern not in self.out and time.time() < end:
            if select.select([self.fd], [], [], 0.1)[0]:
                try:
                    data = os.read(self.fd, 4096)
                except OSError:
                    break
                if not data:
                    break
                self.out += data
        assert pattern in self.out, f"waited for {pattern!r}; got {self.out[-500:]!r}"
        i = self.out.index(pattern) + len(pattern)
        seen, self.out = self.out[:i], self.out[i:]
        return seen

    def write(self, data: bytes):
        os.write(self.fd, data)

    def wait(self, timeout=30.0) -> int:
        end = time.time() + timeout
        while time.time() < end:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                try:
                    while select.select([self.fd], [], [], 0)[0]:
                        data = os.read(self.fd, 4096)
                        if not data:
                            break
                        self.out += data
                except OSError:
                    pass
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.05)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError("the chat did not exit")


@pytest.mark.parametrize("ending", [b"\x04", b"\x03"])
def test_chat_ctrl_c_through_a_pty(run_bin, ending):
    """Ctrl-C during a reply stops it and the prompt comes back; the next turn works; then Ctrl-D, or Ctrl-C
    at the prompt, ends the chat with a newline and status 0."""
    c = Pty([run_bin, SHIPPED, "-m", "chat", "-n", "100000", "-t", "0.8", "-s", "1"])
    c.read_until(b"User: ")
    c.write(b"hello\n")
    c.read_until(b"Assistant: ")
    c.read_until(b" ")  # the reply has begun
    c.write(b"\x03")
    seen = c.read_until(b"User: ", timeout=30)
    assert b"context" not in seen, "the reply ended by itself before Ctrl-C; raise -n"
    c.write(b"and again\n")
    c.read_until(b"Assistant: ")
    c.read_until(b" ")
    c.write(b"\x03")
    c.read_until(b"User: ", timeout=30)
    c.write(ending)
    assert c.wait() == 0
    assert c.out.endswith(b"\r\n"), c.out[-50:]


def test_r1_history_keeps_the_text_after_the_last_think(hooks):
    """R1's template renders an earlier reply as content.split('</think>')[-1]: r1_history returns the ids
    of that text and moves the reply's start back over the "<think>\\n" of the generation prompt."""
    tok = os.path.join(ROOT, "tokenizer.bin")

    def enc(text):
        r = subprocess.run([os.path.join(ROOT, "run"), "-z", tok, "--encode"], input=text.encode(), capture_output=True)
        return [int(x) for x in r.stdout.split()]
    for reply, kept in [("let me think</think>\n\nThe answer is 4.", "\n\nThe answer is 4."),
                        ("a</think>b</think>c", "c"), ("no end of thinking", "no end of thinking"), ("", "")]:
        r = subprocess.run([hooks, "r1", tok], input=reply.encode(), capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.decode().split("\n")
        assert [int(x) for x in lines[0].split()] == enc(kept) and int(lines[1]) == len(enc("<think>\n"))


# ---------------------------------------------------------------- trace

def read_trace(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("layer", [None, 0])
def test_trace_matches_the_reference(run_bin, v3, checkpoint, tmp_path, layer):
    """Every token the model reads gets a line; its experts and gate weights are the ones the numpy
    reference routes it to, and the traced layer's top-4 attention positions per head its largest
    attention probabilities."""
    prompt = [0, 5, 17, 42, 99, 7, 250, 3]
    trace = tmp_path / "t.jsonl"
    extra = [] if layer is None else ["--trace-layer", str(layer)]
    got = ids(run(run_bin, v3, "--tokens", ",".join(map(str, prompt)), "-n", "5", "-t", "0", "--print-ids",
                  "--trace", trace, *extra))
    lines = read_trace(trace)
    fed = prompt + got[:-1]
    assert [l["pos"] for l in lines] == list(range(len(fed))) and [l["id"] for l in lines] == fed
    assert all(isinstance(l["text"], str) for l in lines)
    routing, probs = [], {}
    reference.reference_logits(checkpoint("v3"), fed, routing=routing, attention_probs=probs)
    cfg = reference.load(checkpoint("v3")).cfg
    L, traced = cfg["num_hidden_layers"], cfg["num_hidden_layers"] - 1 if layer is None else layer
    by = {(l, t): (experts, w) for l, t, experts, w in routing}
    for line in lines:
        t = line["pos"]
        assert [x["layer"] for x in line["layers"]] == list(range(L))
        for x in line["layers"]:
            if (x["layer"], t) not in by:
                assert "experts" not in x
                continue
            experts, w = by[(x["layer"], t)]
            assert sorted(e for e, _ in x["experts"]) == list(experts), (t, x)
            for e, g in x["experts"]:
                assert abs(g - w[e]) < 1e-4 * max(1.0, abs(w[e])), (t, e, g, w[e])
            assert ("attention" in x) == (x["layer"] == traced)
        heads = line["layers"][traced]["attention"]
        p = probs[traced][:, t, :t + 1]  # (H, t+1)
        assert len(heads) == p.shape[0]
        for h, top in enumerate(heads):
            assert len(top) == min(4, t + 1)
            want = np.sort(p[h])[::-1][:len(top)]
            assert np.allclose([q for _, q in top], want, atol=2e-4), (t, h, top, want)
            for pos, q in top:
                assert abs(p[h, pos] - q) < 2e-4


def test_trace_with_ppl_and_the_viewer(run_bin, tmp_path):
    """With --ppl every fed position gets a line, and their experts add up to --ppl's expert_load counts;
    tools/trace_view.py turns the file into a valid PNG heatmap and a summary."""
    with open(os.path.join(TESTS, "data", "shakespeare_val.json"), encoding="utf-8") as f:
        text = json.load(f)["text"]
    passage = tmp_path / "passage.txt"
    passage.write_text(text, encoding="utf-8")
    trace = tmp_path / "t.jsonl"
    p = ok(run(run_bin, SHIPPED, "--ppl", passage, "--trace", trace, timeout=600))
    fields = dict(kv.split("=") for kv in p.stdout.decode().splitlines()[-1].split()[1:])
    lines = read_trace(trace)
    assert len(lines) == int(fields["tokens"])
    counts = {}
    for line in lines:
        for x in line["layers"]:
            for e, _ in x.get("experts", []):
                counts.setdefault(x["layer"], [0] * 8)[e] += 1
    for row in p.stdout.decode().splitlines():
        if row.startswith("expert_load"):
            kv = dict(f.split("=") for f in row.split()[1:])
            assert [int(c) for c in kv["counts"].split(",")] == counts[int(kv["layer"])]
    png = tmp_path / "load.png"
    r = subprocess.run([sys.executable, TRACE_VIEW, str(trace), "-o", str(png)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "MoE layers x 8 routed experts" in r.stdout and "attention in layer 4" in r.stdout
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    at, chunks = 8, {}
    while at < len(data):
        n, tag = struct.unpack(">I4s", data[at:at + 8])
        body = data[at + 8:at + 8 + n]
        assert struct.unpack(">I", data[at + 8 + n:at + 12 + n])[0] == zlib.crc32(tag + body)
        chunks[tag] = chunks.get(tag, b"") + body
        at += 12 + n
    w, h = struct.unpack(">II", chunks[b"IHDR"][:8])
    assert len(zlib.decompress(chunks[b"IDAT"])) == h * (1 + 3 * w) and b"IEND" in chunks
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{\"pos\": 1}\n", encoding="utf-8")
    r = subprocess.run([sys.executable, TRACE_VIEW, str(bad), "-o", str(tmp_path / "x.png")], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith("trace_view.py: error:") and "Traceback" not in r.stderr
    assert not (tmp_path / "x.png").exists()
