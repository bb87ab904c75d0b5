"""Bad input of every kind (issue 6): ./run must answer with one `error: ...` line on stderr and exit
status 1, never a crash, a hang or silent garbage; export.py must fail cleanly and leave no file.

tests/test_engine.py (bad model files, --tokens), tests/test_tokenizer.py (corrupt tokenizer files,
--decode ids) and tests/test_export.py (ERROR_CASES) already cover many cases; this file adds the rest.
With SEEK_RUN=./run-asan (make test-asan) every case also runs under AddressSanitizer and UBSan, and
test_valgrind_* run the normal paths under valgrind memcheck when it is installed.
"""
import math
import os
import shutil
import struct
import subprocess
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
EXPORT = os.path.join(ROOT, "export.py")
TOKENIZER = os.path.join(ROOT, "tokenizer.bin")

CONFIG_AT = 12           # config word i is at 12 + 4 i
TABLE_AT = 12 + 4 * 64 + 4  # format v2: 64 config words
ENTRY = 128


def run(run_bin, *args, stdin=b"", timeout=60):
    return subprocess.run([run_bin, *map(str, args)], input=stdin, capture_output=True, timeout=timeout)


def assert_one_error(p, *words):
    """rc 1, nothing on stdout, exactly one stderr line 'error: ...' containing every word."""
    err = p.stderr.decode(errors="replace")
    assert b"Sanitizer" not in p.stderr and b"runtime error" not in p.stderr, err[-3000:]
    assert p.returncode == 1, f"rc {p.returncode} (0 = accepted, < 0 = killed by a signal)\n{err[-2000:]}"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), f"want one 'error: ' line, got {lines}"
    for w in words:
        assert w in lines[0], f"{w!r} not in {lines[0]!r}"
    assert p.stdout == b"", p.stdout[:200]


def edited(src, dst, edits):
    """Copy of src with (offset, bytes) edits applied (offset < 0 counts from the end)."""
    b = bytearray(open(src, "rb").read())
    for off, data in edits:
        off = off % len(b)
        b[off:off + len(data)] = data
    with open(dst, "wb") as f:
        f.write(bytes(b))
    return dst


def i32(v):
    return struct.pack("<i", v)


def f32(v):
    return struct.pack("<f", v)


def word(i, data):
    return (CONFIG_AT + 4 * i, data)


def table(path):
    """[(name, type, ndim, rows, cols, offset, nbytes)] of a model file."""
    b = open(path, "rb").read()
    n = struct.unpack_from("<I", b, TABLE_AT - 4)[0]
    out = []
    for i in range(n):
        e = b[TABLE_AT + ENTRY * i: TABLE_AT + ENTRY * (i + 1)]
        out.append((e[:96].rstrip(b"\0").decode(),) + struct.unpack_from("<IIIIQQ", e, 96))
    return out


def entry_field(i, field):
    """File offset of a field of table entry i."""
    return TABLE_AT + ENTRY * i + {"type": 96, "ndim": 100, "rows": 104, "cols": 108,
                                   "offset": 112, "nbytes": 120}[field]


@pytest.fixture(scope="module")
def v2(exported):
    """V2-style model: E 16, n_group 4, topk_group 2, K 4, vocab 512, no tokenizer."""
    return exported("v2", "f32")


@pytest.fixture(scope="module")
def v3(exported):
    """V3-style model with an embedded tokenizer (319 tokens, BOS 0, EOS 1)."""
    return exported("v3", "f32")


# ---------------------------------------------------------------- model file: not a file at all

def test_model_path_is_a_directory(run_bin, tmp_path):
    assert_one_error(run(run_bin, tmp_path, "--tokens", "1"), "not a regular file")


def test_model_path_is_a_fifo_does_not_hang(run_bin, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert_one_error(run(run_bin, fifo, "--tokens", "1", timeout=20), "not a regular file")


def test_model_path_is_a_device(run_bin):
    assert_one_error(run(run_bin, "/dev/null", "--tokens", "1"), "not a regular file")


def test_model_file_tiny(run_bin, tmp_path):
    for data in (b"S", b"SEEK", b"SEEK\x01\0\0\0(\0\0\0"):
        p = tmp_path / "tiny.bin"
        p.write_bytes(data)
        assert_one_error(run(run_bin, p, "--tokens", "1"), "too small")


# ---------------------------------------------------------------- truncated anywhere

def test_truncated_everywhere(run_bin, v2, tmp_path):
    """Cut in the magic, the header words, the config, the table count, the table, the padding,
    the first tensor, the middle and the last byte: every prefix is an error, never a read past it."""
    data = open(v2, "rb").read()
    t = table(v2)
    table_end = TABLE_AT + ENTRY * len(t)
    first, mid = t[0][5], t[len(t) // 2][5]
    cuts = [1, 3, 5, 9, 12, 13, 100, 267, 268, 271, 272, 273, TABLE_AT + ENTRY // 2, TABLE_AT + ENTRY,
            table_end - 1, table_end, first, first + 1, mid - 1, mid + 3, len(data) - 64, len(data) - 1]
    assert sorted(cuts) == cuts and cuts[-1] < len(data)
    for cut in cuts:
        p = tmp_path / f"cut{cut}.bin"
        p.write_bytes(data[:cut])
        assert_one_error(run(run_bin, p, "--tokens", "1,2"))


# ---------------------------------------------------------------- absurd config values

# (word index, value, words of the expected message); v2 has E 16, n_group 4, topk_group 2, K 4.
CONFIG_CASES = {
    "dim_0": (0, i32(0), "dim = 0"),
    "dim_negative": (0, i32(-8), "dim = -8"),
    "n_layers_0": (1, i32(0), "n_layers"),
    "n_layers_huge": (1, i32(2 ** 31 - 1), "n_layers"),
    "vocab_0": (2, i32(0), "vocab_size"),
    "vocab_huge": (2, i32(1 << 30), "vocab_size"),
    "q_lora_negative": (4, i32(-1), "q_lora_rank"),
    "kv_lora_rank_0": (5, i32(0), "kv_lora_rank = 0"),
    "rope_head_dim_odd": (7, i32(7), "qk_rope_head_dim"),
    "experts_per_tok_gt_experts": (13, i32(17), "num_experts_per_tok = 17"),
    "experts_per_tok_0": (13, i32(0), "num_experts_per_tok = 0"),
    "n_group_not_dividing": (14, i32(3), "does not divide"),
    "n_group_0": (14, i32(0), "n_group = 0"),
    "topk_group_gt_n_group": (15, i32(5), "topk_group = 5"),
    "topk_method_unknown": (16, i32(7), "topk_method"),
    "scoring_func_unknown": (17, i32(2), "scoring_func"),
    "routed_scaling_nan": (19, f32(math.nan), "routed_scaling_factor"),
    "routed_scaling_negative": (19, f32(-1.0), "routed_scaling_factor"),
    "moe_layer_freq_0": (21, i32(0), "moe_layer_freq"),  # would divide by zero
    "rope_theta_inf": (22, f32(math.inf), "rope_theta"),
    "rope_type_unknown": (23, i32(2), "rope_type"),
    "rope_factor_0": (24, f32(0.0), "rope_factor"),
    "rms_norm_eps_nan": (30, f32(math.nan), "rms_norm_eps"),
    "rms_norm_eps_negative": (30, f32(-1e-6), "rms_norm_eps"),
    "max_position_0": (31, i32(0), "max_position_embeddings"),
    "bos_out_of_vocab": (32, i32(512), "bos_token_id"),
    "eos_below_minus_one": (33, i32(-2), "eos_token_id"),
    "mtp_layers": (34, i32(1), "n_mtp_layers"),
    "n_tokens_gt_vocab": (35, i32(513), "n_tokens"),
    "n_tokens_0": (35, i32(0), "n_tokens"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_absurd_config(case, run_bin, v2, tmp_path):
    i, value, words = CONFIG_CASES[case]
    bad = edited(v2, tmp_path / f"{case}.bin", [word(i, value)])
    assert_one_error(run(run_bin, bad, "--tokens", "1,2"), words)


def test_size_products_overflow(run_bin, v2, tmp_path):
    """Each factor in range, the product not: H (dn + dr) = 2^32 + ... wraps an int, S Ie = 2^34."""
    bad = edited(v2, tmp_path / "h.bin", [word(3, i32(65536)), word(6, i32(65536))])
    assert_one_error(run(run_bin, bad, "--tokens", "1"), "attention shapes are too large")
    bad = edited(v2, tmp_path / "s.bin", [word(10, i32(1 << 24)), word(12, i32(1 << 10))])
    assert_one_error(run(run_bin, bad, "--tokens", "1"), "n_shared_experts")


def test_tokenizer_hash_without_tokenizer_tensor(run_bin, v2, tmp_path):
    bad = edited(v2, tmp_path / "h.bin", [word(36, struct.pack("<I", 12345))])
    assert_one_error(run(run_bin, bad, "--tokens", "1"), "tokenizer")


# ---------------------------------------------------------------- tensor table: offsets and sizes

def table_cases(t, size):
    last = len(t) - 1
    return {
        # offset + nbytes wraps around 2^64 unless checked without adding
        "offset_wraps": [(entry_field(3, "offset"), struct.pack("<Q", 2 ** 64 - 64))],
        "nbytes_huge": [(entry_field(3, "nbytes"), struct.pack("<Q", 2 ** 64 - 1))],
        "nbytes_0": [(entry_field(3, "nbytes"), struct.pack("<Q", 0))],
        "last_tensor_past_end": [(entry_field(last, "offset"), struct.pack("<Q", t[last][5] + 64))],
        "overlap_previous": [(entry_field(2, "offset"), struct.pack("<Q", t[1][5]))],
        "offset_in_header": [(entry_field(0, "offset"), struct.pack("<Q", 0))],
        "ndim_3": [(entry_field(1, "ndim"), struct.pack("<I", 3))],
        "ndim_0": [(entry_field(1, "ndim"), struct.pack("<I", 0))],
        "rows_huge": [(entry_field(0, "rows"), struct.pack("<I", 2 ** 32 - 1))],
        "type_unknown": [(entry_field(0, "type"), struct.pack("<I", 99))],
        "name_not_terminated": [(TABLE_AT, b"A" * 96)],
        "name_empty": [(TABLE_AT, b"\0" * 96)],
        "n_tensors_huge": [(TABLE_AT - 4, struct.pack("<I", 2 ** 32 - 1))],
        "n_tensors_plus_one": [(TABLE_AT - 4, struct.pack("<I", len(t) + 1))],
        "n_tensors_0": [(TABLE_AT - 4, struct.pack("<I", 0))],
    }


def test_bad_tensor_table(run_bin, v2, tmp_path):
    t = table(v2)
    size = os.path.getsize(v2)
    for case, edits in table_cases(t, size).items():
        bad = edited(v2, tmp_path / f"{case}.bin", edits)
        p = run(run_bin, bad, "--tokens", "1,2")
        try:
            assert_one_error(p)
        except AssertionError as e:
            raise AssertionError(f"{case}: {e}") from None


def test_trailing_bytes(run_bin, v2, tmp_path):
    bad = tmp_path / "trail.bin"
    bad.write_bytes(open(v2, "rb").read() + b"\0" * 64)
    assert_one_error(run(run_bin, bad, "--tokens", "1"), "trailing")


def test_embedded_tokenizer_corrupt(run_bin, v3, tmp_path):
    """A flipped byte in the embedded tokenizer fails its hash; a consistent but broken blob (hash
    recomputed) fails the tokenizer's own validation."""
    t = table(v3)
    name, _, _, nbytes, _, off, _ = t[-1]
    assert name == "tokenizer"
    bad = edited(v3, tmp_path / "flip.bin", [(off + nbytes // 2, b"\xff")])
    assert_one_error(run(run_bin, bad, "-i", "hi", "-n", "2"), "hash")
    blob = bytearray(open(v3, "rb").read()[off:off + nbytes])
    blob[8:12] = struct.pack("<I", 100)  # n_vocab below 256
    h = 0xcbf29ce484222325
    for x in blob:
        h = ((h ^ x) * 0x100000001b3) % 2 ** 64
    bad = edited(v3, tmp_path / "rehashed.bin", [(off, bytes(blob)), word(36, struct.pack("<Q", h))])
    assert_one_error(run(run_bin, bad, "-i", "hi", "-n", "2"), "embedded tokenizer")


# ---------------------------------------------------------------- tokenizer vs model

def test_tokenizer_size_must_match_model(run_bin, v2):
    """v2 has no embedded tokenizer (hash 0): only the size can be checked, and 128815 != 512."""
    assert_one_error(run(run_bin, v2, "-z", TOKENIZER, "-i", "hello", "-n", "2"), "tokens but the model has")


def test_text_prompt_without_any_tokenizer(run_bin, v2):
    assert_one_error(run(run_bin, v2, "-i", "hello", "-n", "2"), "no embedded tokenizer")


def test_tokenizer_path_is_a_directory(run_bin, tmp_path):
    assert_one_error(run(run_bin, "-z", tmp_path, "--encode", stdin=b"x"), "is a directory, not a tokenizer file")


def test_decode_id_beyond_the_models_tokens(run_bin, v3):
    """The embedded tokenizer has 319 tokens; rows 319..599 of the model are padding."""
    assert_one_error(run(run_bin, v3, "--decode", stdin=b"5 319"), "319")
    assert run(run_bin, v3, "--decode", stdin=b"72 318").returncode == 0


# ---------------------------------------------------------------- flags

FLAG_CASES = [
    (["--bogus"], "unknown option"), (["-x", "1"], "unknown option"), (["--tokens"], "needs a value"),
    (["--tokens", "1", "-n"], "needs a value"), (["--tokens", "1", "-t"], "needs a value"),
    (["--tokens", "1", "-z"], "needs a value"),
    (["--tokens", "1", "-n", "ten"], "integer"), (["--tokens", "1", "-n", "3x"], "integer"),
    (["--tokens", "1", "-n", "99999999999999999999"], "integer"), (["--tokens", "1", "-n", ""], "integer"),
    (["--tokens", "1", "-t", "warm"], "number"), (["--tokens", "1", "-t", "nan"], "number"),
    (["--tokens", "1", "-t", "inf"], "number"), (["--tokens", "1", "-p", "0.9.1"], "number"),
    (["--tokens", "1", "-k", "1.5"], "integer"), (["--tokens", "1", "-s", "0x"], "integer"),
    (["--tokens", "1", "-c", "many"], "integer"),
    (["--tokens", "1", "-n", "-1"], "-n"), (["--tokens", "1", "-t", "-0.5"], "-t"),
    (["--tokens", "1", "-p", "1.5"], "-p"), (["--tokens", "1", "-p", "-0.1"], "-p"),
    (["--tokens", "1", "-k", "-1"], "-k"), (["--tokens", "1", "-s", "-3"], "-s"),
    (["--tokens", "1", "-c", "0"], "-c"), (["--tokens", "1", "-c", "-4"], "-c"),
    (["--tokens", "1", "-m", "talk"], "-m"), (["--tokens", "1", "-y", "be brief"], "-y"),
    (["--tokens", "1", "-i", "x"], "either"), (["--dump-logits", "/dev/null"], "--dump-logits needs"),
    (["--tokens", "1", "--batch"], "--batch"),
]


@pytest.mark.parametrize("args,words", FLAG_CASES, ids=[" ".join(a) for a, _ in FLAG_CASES])
def test_bad_flags(args, words, run_bin, v2):
    assert_one_error(run(run_bin, v2, *args), words)


def test_no_model_given(run_bin):
    assert_one_error(run(run_bin, "--tokens", "1"), "no model file")
    p = run(run_bin)
    assert p.returncode == 1 and b"usage" in p.stderr


def gen_ids(run_bin, model, *args):
    p = run(run_bin, model, "--tokens", "5,6,7,8", "-n", "16", "--print-ids", *args)
    assert p.returncode == 0 and b"Sanitizer" not in p.stderr, p.stderr.decode(errors="replace")
    return p.stdout.split()


def test_seed_0_is_time_based(run_bin, v3):
    """-s 0 (the default) picks a new seed every run, like llama2.c; a fixed seed repeats."""
    fixed = [gen_ids(run_bin, v3, "-t", "1.5", "-p", "1", "-s", "11") for _ in range(2)]
    assert fixed[0] == fixed[1]
    outs = {tuple(gen_ids(run_bin, v3, "-t", "1.5", "-p", "1", "-s", "0")) for _ in range(3)}
    outs |= {tuple(gen_ids(run_bin, v3, "-t", "1.5", "-p", "1"))}
    assert len(outs) >= 2, "runs with seed 0 all sampled the same tokens"


def test_edge_values_are_accepted(run_bin, v3):
    """The ends of each range are valid: -n 0, -t 0, -p 0 and 1, -k 0, -c 1 with a 1-token prompt."""
    assert gen_ids(run_bin, v3, "-n", "0") == []
    assert len(gen_ids(run_bin, v3, "-t", "0", "-p", "0", "-k", "0")) == 16
    assert len(gen_ids(run_bin, v3, "-t", "1", "-p", "1", "-s", "1")) == 16
    p = run(run_bin, v3, "--tokens", "5", "-c", "1", "-n", "9", "-t", "0", "--print-ids")
    assert p.returncode == 0 and len(p.stdout.split()) == 1 and b"context limit" in p.stderr


def test_tiny_temperature_is_greedy(run_bin, v3):
    """logit / 1.2e-38 overflows to inf (and inf - inf = NaN in the softmax) unless the max is
    subtracted first; the limit t -> 0 is greedy."""
    greedy = gen_ids(run_bin, v3, "-t", "0")
    for opts in (["-p", "1"], ["-p", "0.5"], ["-k", "3", "-p", "1"]):
        assert gen_ids(run_bin, v3, "-t", "1.2e-38", "-s", "1", *opts) == greedy, opts


def test_nan_weights_are_an_error_not_garbage(run_bin, v2, tmp_path):
    """A NaN in lm_head makes a NaN logit: sampling stops with an error instead of printing garbage."""
    name, _, _, _, _, off, _ = table(v2)[-1]
    assert name == "lm_head.weight"
    bad = edited(v2, tmp_path / "nan.bin", [(off + 4 * 112 * 5 + 8, f32(math.nan))])  # row 5 (D = 112)
    for t in ("0", "0.8"):
        p = run(run_bin, bad, "--tokens", "5,6", "-n", "3", "-t", t, "--print-ids")
        assert p.returncode == 1 and p.stderr.decode().strip().splitlines()[-1].startswith("error: "), p.stderr
        assert b"non-finite logit" in p.stderr and b"Sanitizer" not in p.stderr


# ---------------------------------------------------------------- prompts

def test_invalid_utf8_prompt_is_repaired_with_a_warning(run_bin, v3):
    """Ill-formed bytes in -i become U+FFFD (as HF tokenizers' from_utf8_lossy): same tokens, one warning."""
    raw = subprocess.run([run_bin, v3, b"-i", b"ab\xff\xfe c\xe4\xb8", "-n", "4", "-t", "0", "--print-ids"],
                         capture_output=True, timeout=60)
    fixed = run(run_bin, v3, "-i", "ab\ufffd\ufffd c\ufffd", "-n", "4", "-t", "0", "--print-ids")
    assert raw.returncode == 0 and fixed.returncode == 0, raw.stderr
    assert raw.stdout == fixed.stdout and len(raw.stdout.split()) == 4
    assert b"warning: 3 ill-formed UTF-8" in raw.stderr and b"warning" not in fixed.stderr
    enc = run(run_bin, v3, "--encode", stdin=b"ab\xff\xfe c\xe4\xb8")
    assert enc.returncode == 0 and b"warning: 3 ill-formed" in enc.stderr


def test_prompt_longer_than_the_context(run_bin, v3):
    assert_one_error(run(run_bin, v3, "--tokens", ",".join(["5"] * 10), "-c", "9", "-n", "2"),
                     "prompt has 10 tokens", "9")
    assert_one_error(run(run_bin, v3, "-i", "Hello world, this is a prompt", "-c", "3", "-n", "2"), "prompt has")
    assert_one_error(run(run_bin, v3, "--tokens", "5,6", "--dump-logits", "/dev/null", "-c", "1"), "prompt has 2")


def test_generation_stops_at_the_context_limit(run_bin, v3):
    """The cache holds -c positions: with a 4-token prompt and -c 10, 6 tokens are fed back and a 7th is
    sampled from the last logits; then it says so on stderr, exits 0 and the ids are the same as without
    the limit."""
    p = run(run_bin, v3, "--tokens", "5,6,7,8", "-c", "10", "-n", "100", "-t", "0", "--print-ids")
    assert p.returncode == 0, p.stderr
    assert b"reached the context limit of 10 tokens" in p.stderr
    got = p.stdout.split()
    free = run(run_bin, v3, "--tokens", "5,6,7,8", "-n", "7", "-t", "0", "--print-ids").stdout.split()
    assert b"1" not in free, "EOS came first; pick another prompt"
    assert got == free and len(got) == 7
    text = run(run_bin, v3, "-i", "Hi", "-c", "8", "-n", "100", "-t", "0")
    assert text.returncode == 0 and b"context limit" in text.stderr


def test_chat_stops_when_the_context_is_full(run_bin, checkpoint, tmp_path):
    import json
    hf = tmp_path / "hf"
    shutil.copytree(checkpoint("v3"), hf)
    with open(os.path.join(TESTS, "data", "chat_fixture.json"), encoding="utf-8") as f:
        template = json.load(f)["cases"][0]["template"]
    cfg = json.loads((hf / "tokenizer_config.json").read_text(encoding="utf-8"))
    cfg["chat_template"] = template
    (hf / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    model = tmp_path / "chat.bin"
    subprocess.run([sys.executable, EXPORT, hf, model], check=True, capture_output=True)
    p = run(run_bin, model, "-m", "chat", "-c", "40", "-n", "8", "-t", "0", "--print-ids",
            stdin=b"hello there\nand again\nand once more\nstill here\n")
    assert p.returncode == 0, p.stderr
    assert b"is full; ending the chat" in p.stderr
    assert b"Sanitizer" not in p.stderr


# ---------------------------------------------------------------- export.py output side

def run_export(*args):
    return subprocess.run([sys.executable, EXPORT, *map(str, args)], capture_output=True, text=True, timeout=120)


def assert_export_error(p, words):
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1 and lines[0].startswith("export.py: error: "), p.stderr
    assert words in lines[0] and "Traceback" not in p.stderr


def test_export_bad_paths(checkpoint, tmp_path):
    hf = checkpoint("v2")
    assert_export_error(run_export(tmp_path / "nope", tmp_path / "m.bin"), "not a directory")
    (tmp_path / "file").write_text("x")
    assert_export_error(run_export(tmp_path / "file", tmp_path / "m.bin"), "not a directory")
    assert_export_error(run_export(hf, tmp_path / "no-dir" / "m.bin"), "cannot create a file")
    assert_export_error(run_export(hf, tmp_path), "is a directory")
    assert not os.path.exists(tmp_path / "m.bin")
    # no tokenizer.json in a checkpoint without one
    assert_export_error(run_export("--tokenizer", hf, tmp_path / "t.bin"), "no tokenizer")
    assert sorted(os.listdir(tmp_path)) == ["file"], "no output and no temporary file left"


def test_export_keeps_an_existing_output_on_failure(checkpoint, tmp_path):
    """A failed export does not clobber what is already at the output path."""
    hf = tmp_path / "hf"
    shutil.copytree(checkpoint("v2"), hf)
    out = tmp_path / "m.bin"
    out.write_bytes(b"previous")
    st = hf / "model.safetensors"
    os.truncate(st, os.path.getsize(st) - 1)
    assert_export_error(run_export(hf, out), "truncated")
    assert out.read_bytes() == b"previous" and sorted(os.listdir(tmp_path)) == ["hf", "m.bin"]


# ---------------------------------------------------------------- valgrind memcheck on the normal paths

VALGRIND = shutil.which("valgrind")


@pytest.fixture(scope="module")
def vg_run(tmp_path_factory) -> str:
    """run.c built for valgrind: -O2 -g without -march=native (valgrind lacks e.g. AVX-512)."""
    if not VALGRIND:
        pytest.skip("valgrind not installed")
    if os.environ.get("SEEK_RUN"):
        pytest.skip("SEEK_RUN is set: this pass tests another build")
    out = str(tmp_path_factory.mktemp("vg") / "run-vg")
    subprocess.run([os.environ.get("CC", "cc"), "-O2", "-g", "-std=c11", "-D_POSIX_C_SOURCE=200809L", "-o", out,
                    os.path.join(ROOT, "run.c"), "-lm", "-lpthread"], check=True)
    return out


def valgrind(binary, *args, stdin=b""):
    p = subprocess.run([VALGRIND, "-q", "--error-exitcode=99", "--leak-check=full",
                        "--errors-for-leak-kinds=definite,indirect,possible", binary, *map(str, args)],
                       input=stdin, capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr.decode(errors="replace")[-4000:]
    assert b"==" not in p.stderr, p.stderr.decode(errors="replace")[-4000:]  # any valgrind report
    return p


def test_valgrind_generate(vg_run, v3, exported):
    valgrind(vg_run, v3, "-i", "Hello world", "-n", "4", "-t", "0.8", "-p", "0.9", "-k", "20", "-s", "3")
    shipped = os.path.join(ROOT, "models", "shakespeare.bin")
    if os.path.exists(shipped):
        valgrind(vg_run, shipped, "-i", "ROMEO:", "-n", "6", "-t", "0.8", "-s", "5")
    # no tokenizer and no --print-ids: ids are printed after checking that there is no tokenizer
    valgrind(vg_run, exported("v2", "bf16"), "--tokens", "5,6,7", "-n", "3", "-t", "0")


def test_valgrind_encode_decode(vg_run, v3):
    text = "Hello <｜User｜> 12345 中文 ".encode() + b"\xff\xe4"
    p = valgrind(vg_run, "-z", TOKENIZER, "--encode", stdin=text)
    ids = p.stdout
    assert len(ids.split()) > 5
    valgrind(vg_run, "-z", TOKENIZER, "--decode", stdin=ids)
    valgrind(vg_run, v3, "--encode", stdin=b"ab\xffcd")
