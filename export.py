#!/usr/bin/env python3
"""
seek.c exporter, tokenizer part: HF tokenizer.json + tokenizer_config.json -> tokenizer file.

    python3 export.py --tokenizer <hf_dir> <tokenizer.bin>

Reads tokenizer.json directly (never through transformers' AutoTokenizer, spec §8 pitfall 17) and
writes the format below. run.c re-implements HF `tokenizers` encoding on top of it (spec §6.3).

Tokenizer file, version 1 (all integers little-endian):
  offset 0   4 bytes   magic "STOK"
  offset 4   u32       version = 1
  offset 8   u32       n_vocab: ids are 0 .. n_vocab-1
  offset 12  u32       n_merges
  offset 16  u32       n_added: number of added tokens (special or not)
  offset 20  i32       bos_id (-1 if none)
  offset 24  i32       eos_id (-1 if none)
  offset 28  u32       flags: bit 0 add_bos_token, bit 1 add_eos_token (tokenizer_config.json)
  offset 32  u32       pre_tokenizer: 1 = DeepSeek-V3 regex sequence (spec §6.1),
                                      2 = DeepSeek-V2 7-stage pipeline (spec §6.2)
  offset 36  u32       chat template family: 0 raw (none/unknown), 1 deepseek_v2 ("User: ...\\n\\nAssistant:"),
                                             2 deepseek_v3, 3 deepseek_r1 (forced <think>), 4 deepseek_v3_1
  offset 40  u32       template_nbytes: length of the verbatim chat_template string stored at the end
  offset 44  u32       pool_nbytes: total length of all token byte strings
  offset 48  (n_vocab+1) x u32   offsets into the pool: token i is pool[off[i] .. off[i+1]), off[0] = 0,
                                 non-decreasing, off[n_vocab] = pool_nbytes
             n_vocab x u8        token flags: bit 0 BPE token (byte-level vocab entry, may take part in
                                 merges), bit 1 added token, bit 2 special (skip_special_tokens would drop
                                 it), bit 3 added token matched after normalization (HF `normalized`);
                                 flags 0 = an id with no token (a hole)
             pool_nbytes bytes   token byte strings: for a BPE token, its vocab string mapped back through
                                 the GPT-2 byte table; for an added token, its literal UTF-8 content
             n_merges x 3 u32    merges (left id, right id, result id); rank = position in this list
             n_added x u32       ids of the added tokens, in tokenizer.json order
             template_nbytes     chat_template, UTF-8 (empty if none)
  The file ends exactly there.
"""
import argparse
import json
import os
import struct
import sys

MAGIC = b"STOK"
VERSION = 1

PRETOK_V3 = 1
PRETOK_V2 = 2

CHAT_RAW, CHAT_V2, CHAT_V3, CHAT_R1, CHAT_V3_1 = 0, 1, 2, 3, 4

FLAG_BPE, FLAG_ADDED, FLAG_SPECIAL, FLAG_NORMALIZED = 1, 2, 4, 8

# The exact pre-tokenizers run.c implements (spec §6.1, §6.2). Anything else is refused: a tokenizer that
# silently pre-tokenizes differently would give wrong ids.
V3_SPLITS = [
    "\\p{N}{1,3}",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
    " ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
]
V2_LETTERS = (
    "A-Za-z\\u00B5\\u00C0-\\u00D6\\u00D8-\\u00F6\\u00F8-\\u01BA\\u01BC-\\u01BF\\u01C4-\\u0293\\u0295-\\u02AF"
    "\\u0370-\\u0373\\u0376\\u0377\\u037B-\\u037D\\u037F\\u0386\\u0388-\\u038A\\u038C\\u038E-\\u03A1"
    "\\u03A3-\\u03F5\\u03F7-\\u0481\\u048A-\\u052F\\u0531-\\u0556\\u10A0-\\u10C5\\u13A0-\\u13F5\\u13F8-\\u13FD"
    "\\u1C90-\\u1CBA\\u1CBD-\\u1CBF\\u1D00-\\u1D2B\\u1D6B-\\u1D77\\u1D79-\\u1D9A\\u1E00-\\u1F15\\u1F18-\\u1F1D"
    "\\u1F20-\\u1F45\\u1F48-\\u1F4D\\u1F50-\\u1F57\\u1F59\\u1F5B\\u1F5D\\u1F5F-\\u1F7D\\u1F80-\\u1FB4"
    "\\u1FB6-\\u1FBC\\u1FBE\\u1FC2-\\u1FC4\\u1FC6-\\u1FCC\\u1FD0-\\u1FD3\\u1FD6-\\u1FDB\\u1FE0-\\u1FEC"
    "\\u1FF2-\\u1FF4\\u1FF6-\\u1FFC\\u2102\\u2107\\u210A-\\u2113\\u2115\\u2119-\\u211D\\u2124\\u2126\\u2128"
    "\\u212A-\\u212D\\u212F-\\u2134\\u2139\\u213C-\\u213F\\u2145-\\u2149\\u214E\\u2183\\u2184\\u2C00-\\u2C7B"
    "\\u2C7E-\\u2CE4\\u2CEB-\\u2CEE\\u2CF2\\u2CF3\\uA640-\\uA66D\\uA680-\\uA69B\\uA722-\\uA76F\\uA771-\\uA787"
    "\\uA78B-\\uA78E\\uAB70-\\uABBF\\uFB00-\\uFB06\\uFB13-\\uFB17\\uFF21-\\uFF3A\\uFF41-\\uFF5A"
    "\\U00010400-\\U0001044F\\U000104B0-\\U000104D3\\U000104D8-\\U000104FB\\U00010C80-\\U00010CB2"
    "\\U00010CC0-\\U00010CF2\\U000118A0-\\U000118DF\\U0001E900-\\U0001E943"
)
V2_SPLITS = [
    "[\r\n]",
    "\\s?[" + V2_LETTERS + "]+",
    "\\s?[!-/:-~\\uFF01-\\uFF0F\\uFF1A-\\uFF5E\\u2018-\\u201F\\u3000-\\u3002]+",
    "\\s+$",
    "[\\u4E00-\\u9FA5\\u0800-\\u4E00\\uAC00-\\uD7FF]+",
]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> character table (spec §6.3 step 3)."""
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, n = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(0x100 + n)
            n += 1
    return table


def fail(msg: str) -> None:
    raise ValueError(msg)


def split_patterns(pre: dict, where: str) -> tuple[list[str], list[dict]]:
    """Regexes of the leading Split(Isolated, not inverted) stages, and the remaining stages."""
    if pre is None or pre.get("type") != "Sequence":
        fail(f"{where}: pre_tokenizer must be a Sequence (got {pre and pre.get('type')})")
    stages = pre.get("pretokenizers", [])
    pats = []
    i = 0
    while i < len(stages) and stages[i].get("type") == "Split":
        s = stages[i]
        if s.get("behavior") != "Isolated" or s.get("invert"):
            fail(f"{where}: Split stage {i} must be behavior Isolated, invert false")
        pat = s.get("pattern", {})
        if "Regex" not in pat:
            fail(f"{where}: Split stage {i} must use a Regex pattern")
        pats.append(pat["Regex"])
        i += 1
    return pats, stages[i:]


def check_byte_level(stage: dict, where: str) -> None:
    if stage.get("type") != "ByteLevel" or stage.get("add_prefix_space") or stage.get("use_regex", True):
        fail(f"{where}: expected a final ByteLevel stage with add_prefix_space false and use_regex false")


def detect_pre_tokenizer(pre: dict) -> int:
    where = "tokenizer.json pre_tokenizer"
    pats, rest = split_patterns(pre, where)
    if pats == V3_SPLITS:
        if len(rest) != 1:
            fail(f"{where}: DeepSeek-V3 splits must be followed by exactly one ByteLevel stage")
        check_byte_level(rest[0], where)
        return PRETOK_V3
    # V2 regexes are written with \u escapes in the file; compare them after expanding the escapes.
    if [expand_escapes(p) for p in pats] == [expand_escapes(p) for p in V2_SPLITS]:
        if len(rest) != 2 or rest[0].get("type") != "Digits" or rest[0].get("individual_digits") is not True:
            fail(f"{where}: DeepSeek-V2 splits must be followed by Digits(individual_digits=true) and ByteLevel")
        check_byte_level(rest[1], where)
        return PRETOK_V2
    fail(f"{where}: not one of the supported pre-tokenizers (DeepSeek-V3 or DeepSeek-V2, spec §6.1/§6.2)")
    return 0


def expand_escapes(p: str) -> str:
    """Turn \\uXXXX and \\UXXXXXXXX escapes into characters, leave every other escape alone."""
    out, i = [], 0
    while i < len(p):
        if p[i] == "\\" and i + 1 < len(p):
            if p[i + 1] == "u" and i + 6 <= len(p):
                out.append(chr(int(p[i + 2:i + 6], 16)))
                i += 6
                continue
            if p[i + 1] == "U" and i + 10 <= len(p):
                out.append(chr(int(p[i + 2:i + 10], 16)))
                i += 10
                continue
            out.append(p[i:i + 2])
            i += 2
            continue
        out.append(p[i])
        i += 1
    return "".join(out)


def check_model_and_normalizer(tj: dict) -> None:
    m = tj.get("model", {})
    if m.get("type") != "BPE":
        fail(f"tokenizer.json: model type must be BPE (got {m.get('type')})")
    if m.get("byte_fallback") or m.get("dropout") not in (None, 0, 0.0) or m.get("ignore_merges"):
        fail("tokenizer.json: BPE byte_fallback, dropout and ignore_merges are not supported")
    if m.get("continuing_subword_prefix") or m.get("end_of_word_suffix"):
        fail("tokenizer.json: BPE continuing_subword_prefix/end_of_word_suffix are not supported")
    norm = tj.get("normalizer")
    if norm is not None and not (norm.get("type") == "Sequence" and not norm.get("normalizers")):
        fail(f"tokenizer.json: only an empty normalizer is supported (got {norm.get('type')})")


def chat_family(template: str | None) -> int:
    """Which fixed chat rendering (spec §6.5) the template string is."""
    if not template:
        return CHAT_RAW
    if "<｜Assistant｜>" in template:
        if "thinking" in template and "</think>" in template:
            return CHAT_V3_1
        if "<think>" in template:
            return CHAT_R1
        return CHAT_V3
    if "'User: '" in template and "Assistant:" in template:
        return CHAT_V2
    print("export.py: warning: unrecognised chat_template, chat mode will not be available", file=sys.stderr)
    return CHAT_RAW


def token_content(tok) -> str | None:
    if tok is None or isinstance(tok, str):
        return tok
    return tok.get("content")


def read_chat_template(hf_dir: str, cfg: dict) -> str | None:
    t = cfg.get("chat_template")
    if isinstance(t, list):  # [{"name": ..., "template": ...}, ...]
        named = {d.get("name"): d.get("template") for d in t}
        t = named.get("default")
    jinja = os.path.join(hf_dir, "chat_template.jinja")
    if t is None and os.path.exists(jinja):
        with open(jinja, encoding="utf-8") as f:
            t = f.read()
    return t


def tokenizer_blob(hf_dir: str) -> bytes | None:
    """The tokenizer file for the checkpoint in hf_dir, or None if it has no tokenizer.json."""
    path = os.path.join(hf_dir, "tokenizer.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        tj = json.load(f)
    cfg = {}
    cfg_path = os.path.join(hf_dir, "tokenizer_config.json")
    if os.path.exists(cfg_path):
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)

    check_model_and_normalizer(tj)
    pretok = detect_pre_tokenizer(tj.get("pre_tokenizer"))

    vocab: dict[str, int] = tj["model"]["vocab"]
    added = tj.get("added_tokens", [])
    for a in added:
        if a.get("lstrip") or a.get("rstrip") or a.get("single_word"):
            fail(f"tokenizer.json: added token {a['content']!r} uses lstrip/rstrip/single_word (unsupported)")
        if not a["content"]:
            fail("tokenizer.json: empty added token")
    ids = list(vocab.values()) + [a["id"] for a in added]
    if not ids or min(ids) < 0:
        fail("tokenizer.json: empty vocabulary or negative id")
    n_vocab = max(ids) + 1
    if n_vocab > (1 << 24):
        fail(f"tokenizer.json: {n_vocab} ids is too many")

    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    tokens: list[bytes] = [b""] * n_vocab
    flags = [0] * n_vocab
    for s, i in vocab.items():
        if all(c in byte_of for c in s):
            tokens[i] = bytes(byte_of[c] for c in s)
            flags[i] |= FLAG_BPE
        else:  # HF's ByteLevel decoder falls back to the raw UTF-8 of such a token
            tokens[i] = s.encode("utf-8")
    for c in byte_of:
        if c not in vocab:
            fail(f"tokenizer.json: byte-level character {c!r} is missing from the vocab")
    contents = set()
    for a in added:
        i = a["id"]
        if a["content"] in contents:
            fail(f"tokenizer.json: duplicate added token {a['content']!r}")
        contents.add(a["content"])
        content = a["content"].encode("utf-8")
        if flags[i] & FLAG_BPE and tokens[i] != content:
            fail(f"tokenizer.json: added token {a['content']!r} reuses the id of a different BPE token")
        tokens[i] = content
        flags[i] |= FLAG_ADDED | (FLAG_SPECIAL if a.get("special") else 0)
        flags[i] |= FLAG_NORMALIZED if a.get("normalized", True) else 0

    # Merge rank = index in the list; HF builds a map, so a repeated pair keeps its last rank.
    ranked: dict[tuple[int, int], tuple[int, int]] = {}
    for rank, m in enumerate(tj["model"]["merges"]):
        parts = m.split(" ") if isinstance(m, str) else list(m)
        if len(parts) != 2:
            fail(f"tokenizer.json: bad merge {m!r}")
        a, b = parts
        if a not in vocab or b not in vocab or a + b not in vocab:
            fail(f"tokenizer.json: merge {m!r} refers to a token that is not in the vocab")
        ia, ib, ir = vocab[a], vocab[b], vocab[a + b]
        if not (flags[ia] & flags[ib] & flags[ir] & FLAG_BPE):
            fail(f"tokenizer.json: merge {m!r} uses a token that is not byte-level")
        ranked[(ia, ib)] = (rank, ir)
    merges = sorted((r, a, b, res) for (a, b), (r, res) in ranked.items())

    def token_id(tok) -> int:
        c = token_content(tok)
        if c is None:
            return -1
        for a in added:
            if a["content"] == c:
                return a["id"]
        if c in vocab:
            return vocab[c]
        fail(f"tokenizer_config.json: token {c!r} is not in the vocabulary")
        return -1

    bos_id = token_id(cfg.get("bos_token"))
    eos_id = token_id(cfg.get("eos_token"))
    cfg_flags = (1 if cfg.get("add_bos_token", False) else 0) | (2 if cfg.get("add_eos_token", False) else 0)
    if cfg_flags & 1 and bos_id < 0:
        fail("tokenizer_config.json: add_bos_token is true but there is no bos_token")
    template = read_chat_template(hf_dir, cfg)
    family = chat_family(template)
    tbytes = (template or "").encode("utf-8")

    pool = b"".join(tokens)
    offsets = [0]
    for t in tokens:
        offsets.append(offsets[-1] + len(t))
    out = [MAGIC, struct.pack("<IIIIiiIIIII", VERSION, n_vocab, len(merges), len(added), bos_id, eos_id,
                              cfg_flags, pretok, family, len(tbytes), len(pool))]
    out.append(struct.pack(f"<{n_vocab + 1}I", *offsets))
    out.append(bytes(flags))
    out.append(pool)
    out.append(b"".join(struct.pack("<III", a, b, r) for _, a, b, r in merges))
    out.append(struct.pack(f"<{len(added)}I", *[a["id"] for a in added]))
    out.append(tbytes)
    return b"".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description="Export a HF DeepSeek checkpoint's tokenizer for seek.c")
    ap.add_argument("--tokenizer", nargs=2, metavar=("HF_DIR", "OUT"), required=True,
                    help="write only the tokenizer file of HF_DIR to OUT")
    args = ap.parse_args()
    hf_dir, out_path = args.tokenizer
    try:
        blob = tokenizer_blob(hf_dir)
    except (ValueError, KeyError, json.JSONDecodeError) as e:
        sys.exit(f"export.py: error: {e}")
    if blob is None:
        sys.exit(f"export.py: error: no tokenizer.json in {hf_dir}")
    with open(out_path, "wb") as f:
        f.write(blob)
    print(f"wrote {out_path} ({len(blob)} bytes)")


if __name__ == "__main__":
    main()
