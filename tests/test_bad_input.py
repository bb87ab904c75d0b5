"""Bad input of every kind (issue 6): ./run must answer with one `error: ...` line on stderr and exit
status 1, never a crash, a hang or silent garbage; export.py must fail cleanly and leave no file.

tests/test_engine.py (bad model files, --tokens), tests/test_tokenizer.py (corrupt tokenizer files,
--decode ids) and tests/test_export.py (ERROR_CASES) already cover many cases; this file adds the rest.
With SEEK_RUN=./run-asan (make test-asan) every case also runs under AddressSanitizer and UBSan, and (with
clang) LeakSanitizer, also at the exit after an error; test_valgrind_* run the normal paths under valgrind
memcheck when it is installed. Issue 14's classes (non-finite results, overflowing rmsnorm, quadratic added-token
search, non-regular inputs, partial --dump-logits files, a model file truncated while mapped) are at the end.
"""
import json
import math
import os
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

import reference as R

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
    "mtp_layers": (34, i32(2), "n_mtp_layers = 2"),  # 0 or 1 (one MTP module); a missing module: test_mtp.py
    "n_tokens_gt_vocab": (35, i32(513), "n_tokens"),
    "n_tokens_0": (35, i32(0), "n_tokens"),
    # version 2's words: an indexer (V3.2) needs its head dim; reserved words must be 0; stop ids within the vocabulary
    "index_heads": (38, i32(4), "index_head_dim"),
    "eos_2_beyond_vocab": (41, i32(512), "eos_token_id_2"),
    "reserved_word": (50, i32(1), "config word 50"),
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


def test_chat_stops_when_the_context_is_full(run_bin, chat_model):
    p = run(run_bin, chat_model, "-m", "chat", "-c", "40", "-n", "8", "-t", "0", "--print-ids",
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


# ---------------------------------------------------------------- issue 14: no NaN reported as a result

def model_with(src, dst, edits):
    """Copy of model file src with (tensor name, row, value) edits of an f32 tensor."""
    t = {e[0]: e for e in table(src)}
    out = []
    for name, row, value in edits:
        _, typ, _, _, cols, off, _ = t[name]
        assert typ == 0, f"{name} is not f32"
        out.append((off + 4 * cols * row + 4 * 3, f32(value)))  # element 3 of the row
    return edited(src, dst, out)


# v3 (vocab 600, tokenizer 319 ids): rows 319.. of lm_head are padding, never sampled but in --ppl's softmax.
NON_FINITE = {
    "nan_in_padding_row": [("lm_head.weight", 500, math.nan)],
    "inf_in_padding_row": [("lm_head.weight", 599, math.inf)],
    "inf_in_a_token_row": [("lm_head.weight", 7, -math.inf)],
    "nan_in_final_norm": [("model.norm.weight", 0, math.nan)],
}


@pytest.mark.parametrize("case", sorted(NON_FINITE))
def test_ppl_of_non_finite_logits_is_an_error(case, run_bin, v3, tmp_path):
    bad = model_with(v3, tmp_path / "bad.bin", NON_FINITE[case])
    text = tmp_path / "t.txt"
    text.write_text("To be, or not to be, that is the question. " * 8)
    assert_one_error(run(run_bin, bad, "--ppl", text), "non-finite logit")
    assert run(run_bin, v3, "--ppl", text).returncode == 0  # the unedited model scores it


@pytest.mark.parametrize("case", sorted(NON_FINITE))
def test_dump_of_non_finite_logits_is_an_error_and_keeps_the_old_file(case, run_bin, v3, tmp_path):
    bad = model_with(v3, tmp_path / "bad.bin", NON_FINITE[case])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "logits.f32"
    out.write_bytes(b"previous")
    assert_one_error(run(run_bin, bad, "--tokens", "5,6,7", "--dump-logits", out), "non-finite logit")
    assert out.read_bytes() == b"previous" and os.listdir(out_dir) == ["logits.f32"], "partial or temporary file"


# ---------------------------------------------------------------- rmsnorm of huge (finite) activations

def scaled_checkpoint(src, dst, name, power):
    """Copy of HF checkpoint src with tensor `name` multiplied by 2**power (exact in F32 and BF16)."""
    shutil.copytree(src, dst)
    path = os.path.join(dst, "model.safetensors")
    b = bytearray(open(path, "rb").read())
    n = struct.unpack_from("<Q", b)[0]
    info = json.loads(b[8:8 + n])[name]
    a, z = (8 + n + o for o in info["data_offsets"])
    if info["dtype"] == "F32":
        x = np.frombuffer(bytes(b[a:z]), "<f4") * np.float32(2.0 ** power)
        b[a:z] = x.astype("<f4").tobytes()
    else:
        assert info["dtype"] == "BF16"
        x = (np.frombuffer(bytes(b[a:z]), "<u2").astype(np.uint32) << 16).view(np.float32) * np.float32(2.0 ** power)
        b[a:z] = (x.view(np.uint32) >> 16).astype("<u2").tobytes()
    assert np.all(np.isfinite(x)) and np.abs(x).max() > 1e20
    open(path, "wb").write(bytes(b))
    return dst


# x² of a finite float overflows above ~1.8e19: each of these puts activations of ~1e28..1e36 into an rmsnorm.
HUGE = {
    "embedding": ("v2lite", "model.embed_tokens.weight", 100),
    "dense_down_proj": ("v2lite", "model.layers.0.mlp.down_proj.weight", 110),
    "last_o_proj": ("v2lite", "model.layers.2.self_attn.o_proj.weight", 90),
    "q_a_proj": ("v2", "model.layers.1.self_attn.q_a_proj.weight", 120),
}


@pytest.mark.parametrize("case", sorted(HUGE))
def test_rmsnorm_of_huge_activations(case, run_bin, checkpoint, tmp_path):
    """RMSNorm is scale-invariant: the float64 reference computes these logits without trouble, and run.c
    must too (overflowing Σx² to inf gave all-zero activations and uniform logits)."""
    variant, name, power = HUGE[case]
    hf = scaled_checkpoint(checkpoint(variant), tmp_path / "hf", name, power)
    model = tmp_path / "m.bin"
    subprocess.run([sys.executable, EXPORT, hf, model, "--dtype", "f32"], check=True, capture_output=True)
    toks = [5, 17, 3, 200, 42, 9, 77, 120]
    p = run(run_bin, model, "--tokens", ",".join(map(str, toks)), "--dump-logits", tmp_path / "l.f32")
    assert p.returncode == 0 and b"Sanitizer" not in p.stderr, p.stderr.decode(errors="replace")
    got = np.fromfile(tmp_path / "l.f32", "<f4").reshape(len(toks), -1).astype(np.float64)
    want = R.reference_logits(str(hf), toks)
    assert want.std(axis=1).min() > 0.01, "the reference logits are flat; the case tests nothing"
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max()), np.abs(got - want).max()


# ---------------------------------------------------------------- added tokens: linear time, leftmost-longest

def tokenizer_with_added(checkpoint, tmp_path, contents, normalized=False):
    """(tokenizer file, [ids]) of the v3 checkpoint's tokenizer with extra added tokens."""
    hf = tmp_path / "hf-tok"
    shutil.copytree(checkpoint("v3"), hf)
    tj = json.loads((hf / "tokenizer.json").read_text(encoding="utf-8"))
    n = 1 + max(list(tj["model"]["vocab"].values()) + [a["id"] for a in tj["added_tokens"]])
    ids = list(range(n, n + len(contents)))
    for i, c in zip(ids, contents):
        tj["added_tokens"].append({"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                                   "normalized": normalized, "special": False})
    (hf / "tokenizer.json").write_text(json.dumps(tj), encoding="utf-8")
    out = tmp_path / "tok.bin"
    subprocess.run([sys.executable, EXPORT, "--tokenizer", hf, out], check=True, capture_output=True)
    return out, ids


# (added tokens, normalized, text, whether the first token ends the text): every one took minutes with a
# search that restarts at each position.
LONG_ADDED = {
    "run_never_closed": (["a" * 20000 + "b"], False, b"a" * (1 << 20), False),
    "run_never_closed_normalized": (["a" * 20000 + "b"], True, b"a" * (1 << 20), False),
    "run_closed_at_the_end": (["a" * 20000 + "b"], False, b"a" * (1 << 20) + b"b", True),
    "period_two": (["ab" * 10000 + "c", "abababx"], False, b"ab" * (1 << 19), False),
}


@pytest.mark.parametrize("case", sorted(LONG_ADDED))
def test_added_token_search_is_linear(case, run_bin, checkpoint, tmp_path):
    contents, normalized, text, at_end = LONG_ADDED[case]
    tok, ids = tokenizer_with_added(checkpoint, tmp_path, contents, normalized)
    p = run(run_bin, "-z", tok, "--encode", stdin=text, timeout=40)  # ~0.1 s; a quadratic search takes minutes
    assert p.returncode == 0 and b"Sanitizer" not in p.stderr, p.stderr[-2000:]
    got = [int(x) for x in p.stdout.split()]
    assert (got[-1] == ids[0]) == at_end and ids[0] not in got[:-1] and not set(ids[1:]) & set(got)


def leftmost_longest(text, tokens):
    """[(start, end)] of HF's LeftmostLongest matches, by brute force."""
    out, i = [], 0
    while i < len(text):
        at = next((s for s in range(i, len(text)) if any(text.startswith(t, s) for t in tokens)), None)
        if at is None:
            break
        end = at + max(len(t) for t in tokens if text.startswith(t, at))
        out.append((at, end))
        i = end
    return out


def test_added_tokens_match_leftmost_longest(run_bin, checkpoint, tmp_path):
    """Overlapping added tokens (prefixes, suffixes, a token inside another) on random text: the cut equals a
    brute-force leftmost-longest search, and the text between matches encodes as it does alone."""
    contents = ["abcd", "bc", "b", "abcde", "cdx", "xyz", "aaaa", "aaab", "dab", "cda", "e e"]
    tok, ids = tokenizer_with_added(checkpoint, tmp_path, contents)
    id_of = dict(zip(contents, ids))
    rnd = random.Random(14)
    texts = ["".join(rnd.choice("abcdexyz ") for _ in range(rnd.randrange(1, 60))) for _ in range(300)]
    gaps, plans = [], []
    for text in texts:
        plan, at = [], 0
        for s, e in leftmost_longest(text, contents):
            if s > at:
                plan.append(len(gaps))
                gaps.append(text[at:s])
            plan.append(-1 - id_of[text[s:e]])
            at = e
        if at < len(text):
            plan.append(len(gaps))
            gaps.append(text[at:])
        plans.append(plan)

    def batch(strings):
        data = b"".join(b"%d\n%s" % (len(s.encode()), s.encode()) for s in strings)
        p = run(run_bin, "-z", tok, "--encode", "--batch", stdin=data)
        assert p.returncode == 0, p.stderr
        return [[int(x) for x in line.split()] for line in p.stdout.decode().splitlines()]

    got, gap_ids = batch(texts), batch(gaps)
    for text, plan, ids_got in zip(texts, plans, got):
        want = [i for k in plan for i in (gap_ids[k] if k >= 0 else [-1 - k])]
        assert ids_got == want, text


# ---------------------------------------------------------------- -z and --ppl: regular files only

@pytest.mark.parametrize("what", ["fifo", "/dev/zero", "dir"])
def test_tokenizer_and_ppl_inputs_must_be_regular_files(what, run_bin, v3, tmp_path):
    """A FIFO blocked open() and read() forever; /dev/zero was read until memory ran out."""
    path = {"fifo": tmp_path / "fifo", "/dev/zero": "/dev/zero", "dir": tmp_path}[what]
    if what == "fifo":
        os.mkfifo(path)
    for args in (["-z", path, "--encode"], [v3, "-z", path, "-i", "hi", "-n", "2"], [v3, "--ppl", path]):
        assert_one_error(run(run_bin, *args, stdin=b"hello", timeout=20), "not a regular file")


# ---------------------------------------------------------------- flags: subnormal temperature, --bench without BOS

@pytest.mark.parametrize("t", ["1e-38", "1e-40", "1.4e-45", "1e-50"])
def test_subnormal_temperature_is_greedy(t, run_bin, v3):
    """strtof flags a subnormal (or one rounding to 0) with ERANGE; it is still a number, and that small a
    temperature is greedy."""
    assert gen_ids(run_bin, v3, "-t", t, "-s", "3") == gen_ids(run_bin, v3, "-t", "0")


@pytest.mark.parametrize("model", ["v2", "v3"])
def test_bench_needs_no_bos(model, run_bin, v2, v3, tmp_path):
    bad = edited({"v2": v2, "v3": v3}[model], tmp_path / "nobos.bin", [word(32, i32(-1))])
    for threads in ("1", "2"):
        p = run(run_bin, bad, "--bench", "--threads", threads)
        assert p.returncode == 0 and p.stdout.splitlines()[-1].startswith(b"bench pp="), p.stderr.decode(errors="replace")


# ---------------------------------------------------------------- --dump-logits: never a partial file

def test_dump_logits_refuses_a_fifo_or_device(run_bin, v3, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert_one_error(run(run_bin, v3, "--tokens", "5,6", "--dump-logits", fifo, timeout=20), "not a regular file")
    assert os.path.exists(fifo) and not os.path.isfile(fifo)


def test_dump_logits_full_disk_leaves_no_file(run_bin, v3, tmp_path):
    """A file-size limit makes write() fail with EFBIG, as a full disk fails it with ENOSPC."""

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100000, 100000))
    for previous in (None, b"previous"):
        out = tmp_path / "out" / "logits.f32"
        shutil.rmtree(out.parent, ignore_errors=True)
        out.parent.mkdir()
        if previous:
            out.write_bytes(previous)
        p = subprocess.run([run_bin, v3, "--tokens", ",".join(["5"] * 200), "--dump-logits", out],
                           capture_output=True, timeout=60, preexec_fn=limit)
        assert_one_error(p, "logits.f32")
        assert os.listdir(out.parent) == (["logits.f32"] if previous else []), "partial or temporary file"
        assert not previous or out.read_bytes() == previous


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT", "SIGHUP"])
def test_killed_dump_logits_leaves_no_file(sig, run_bin, v3, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    p = subprocess.Popen([run_bin, v3, "--tokens", ",".join(["5", "6", "7"] * 5000), "-c", "20000",
                          "--dump-logits", out_dir / "logits.f32"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.time()
    while not any(os.path.getsize(out_dir / f) > 0 for f in os.listdir(out_dir)) and time.time() - t0 < 60:
        time.sleep(0.01)
    p.send_signal(getattr(signal, sig))
    _, err = p.communicate(timeout=60)
    assert p.returncode == -getattr(signal, sig), (p.returncode, err[-2000:])
    assert os.listdir(out_dir) == [], "partial or temporary file"


# ---------------------------------------------------------------- the model file truncated while mapped

@pytest.fixture(scope="module")
def chat_model(checkpoint, tmp_path_factory):
    hf = tmp_path_factory.mktemp("chat") / "hf"
    shutil.copytree(checkpoint("v3"), hf)
    with open(os.path.join(TESTS, "data", "chat_fixture.json"), encoding="utf-8") as f:
        template = json.load(f)["cases"][0]["template"]
    cfg = json.loads((hf / "tokenizer_config.json").read_text(encoding="utf-8"))
    cfg["chat_template"] = template
    (hf / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    model = hf.parent / "chat.bin"
    subprocess.run([sys.executable, EXPORT, hf, model], check=True, capture_output=True)
    return model


@pytest.mark.parametrize("case", ["generate_cut_to_0", "generate_cut_in_half", "chat_cut_to_the_header",
                                  "no_mmap_control"])
def test_model_file_truncated_while_running(case, run_bin, v3, chat_model, tmp_path):
    """Truncating the mapped model file turns the next read of a weight into SIGBUS: the run ends with one
    error line and exit status 1 instead of dying of the signal. --no-mmap has its own copy and goes on.
    (By default a thread also reads the file into memory, which then replaces the mapping: whether a cut
    lands before or after that is a race, so the mapped cases run with --map-only.)"""
    copy = tmp_path / "m.bin"
    if case.startswith("chat"):
        shutil.copy(chat_model, copy)
        args = ["-m", "chat", "-n", "4", "-t", "0", "--map-only"]
    else:  # without an EOS id generation runs until the context is full: long enough to cut the file
        edited(v3, copy, [word(33, i32(-1))])
        args = ["--tokens", "5", "-n", "1000000", "-c", "100000", "--print-ids"] + (["--no-mmap"] if "no_mmap" in case else ["--map-only"])
    p = subprocess.Popen([run_bin, copy, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        if case.startswith("chat"):
            p.stdin.write(b"hello\n")
            p.stdin.flush()
            p.stdout.readline()  # the first reply
        else:
            p.stdout.read(20)  # generating
        os.truncate(copy, {"generate_cut_to_0": 0, "generate_cut_in_half": os.path.getsize(copy) // 2}.get(case, 200))
        if case == "no_mmap_control":
            time.sleep(0.5)
            assert p.poll() is None, p.stderr.read()[-2000:]
            return
        _, err = p.communicate(b"and again\n" if case.startswith("chat") else None, timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 1, f"rc {p.returncode} (-7: killed by SIGBUS)\n{err[-2000:]}"
    # (chat's "User: " and "Assistant: " prompts on stderr end without a newline)
    assert err.decode().strip().splitlines()[-1].endswith("error: the model file changed or was truncated while running")
    assert b"Sanitizer" not in err
