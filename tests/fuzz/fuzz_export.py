#!/usr/bin/env python3
"""Fuzz export.py: mutate the config.json, safetensors headers, index weight_map, tokenizer.json,
tokenizer_config.json, the kind of input files and the output path of small checkpoints written
by tests/gen_checkpoints.py, run export.py's main() in this process on each case and check its
contract (README, "Bad input"):

- exit 0 with a model file that ./run loads (when --run is given), or exit 1 with exactly one
  line "export.py: error: ..." (warnings may come before it);
- never another exception (a traceback), never "out of memory", never longer than --timeout
  seconds per case (a hang or runaway work);
- after a failure nothing is left in the output directory; an input, a directory, FIFO or
  device at the output path is never replaced.

Seeded and time-bounded; case k of seed s is the same everywhere, so a failure is replayed with
--seed s --case k. Failing cases are kept under --save.

    fuzz_export.py [--seconds 45] [--seed 0] [--run ./run] [--save build/fuzz-export]
    fuzz_export.py --seed 0 --case 123 --run ./run        # replay one case, verbose
"""
import argparse
import contextlib
import hashlib
import io
import json
import os
import random
import re
import resource
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import export  # noqa: E402
import gen_checkpoints  # noqa: E402

MEMORY_LIMIT = 4 << 30  # address space of this process: runaway memory becomes MemoryError

# A V2-Lite-like model big enough for the real DeepSeek-V2-style tokenizer in tests/data.
gen_checkpoints.VARIANTS["fuzz_v2tok"] = dict(
    gen_checkpoints.VARIANTS["v2lite"], hidden_size=32, num_hidden_layers=2, vocab_size=8476,
    num_attention_heads=2, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8,
    intermediate_size=64, moe_intermediate_size=16, n_routed_experts=4, n_shared_experts=1,
    num_experts_per_tok=2, bos_token_id=8468, eos_token_id=8469)
BASES = {"v3": 4, "v3fp8": 2, "v2lite": 1, "k2rp": 1, "fuzz_v2tok": 2}  # variant: weight

# Keys export.py reads from config.json (and some it does not), for targeted mutations.
CONFIG_KEYS = [key for _, key, _, _ in export.CONFIG_FIELDS] + [
    "model_type", "bos_token_id", "eos_token_id", "tie_word_embeddings", "rope_theta",
    "rope_scaling", "rope_parameters", "num_nextn_predict_layers", "quantization_config"]
ROPE_KEYS = ["type", "rope_type", "factor", "original_max_position_embeddings", "beta_fast",
             "beta_slow", "mscale", "mscale_all_dim", "rope_theta"]

DEEP = "@@DEEP@@"  # placeholders replaced in the JSON text (json.dumps cannot write these)
RAW = "@@RAW:"


# ----------------------------------------------------------------------------------------------
# values


def interesting_value(rng: random.Random, old=None):
    ints = [0, 1, -1, 2, 3, 5, 7, 8, 16, 255, 256, 2**16, 2**16 + 1, 2**24, 2**24 + 1, 2**31 - 1,
            2**31, -2**31, -2**31 - 1, 2**32, 2**63, 2**64, 10**6, 10**30]
    floats = [0.0, -0.0, 0.5, -0.5, 1e-50, 1e-45, 1e-30, 1e30, 1e38, 3.4028235e38, 3.5e38, 1e39,
              1e308, float("nan"), float("inf"), float("-inf"), 1.0001, 0.9999]
    strings = ["", "yarn", "default", "linear", "noaux_tc", "greedy", "group_limited_greedy",
               "sigmoid", "softmax", "deepseek_v3", "BPE", "Sequence", "Split", "Isolated",
               "ByteLevel", "\ud800", "a\udc00b", "\\uZZZZ", "\\", "\\U00110000", "x" * 5000,
               "../config.json", "model.safetensors", "a\x00b", "<｜begin▁of▁sentence｜>"]
    containers = [[], [1], [[1]], [1, 2], {}, {"a": 1}, {"Regex": 1}, {"content": 5},
                  {"type": "yarn", "factor": -1}, [old], {"x": old}, {"content": "\ud800"}]
    raws = ["1e99999", "-1e99999", "1" * 5000, "NaN", "-Infinity", "123456789012345678901234567890"]
    kind = rng.random()
    if isinstance(old, (int, float)) and not isinstance(old, bool) and kind < 0.25:
        return rng.choice([old + 1, old - 1, old * 2, -old, old // 2 if isinstance(old, int) else old / 2,
                           0, old * 1000, old + 0.5])
    if kind < 0.45:
        return rng.choice(ints)
    if kind < 0.6:
        return rng.choice(floats)
    if kind < 0.75:
        return rng.choice(strings)
    if kind < 0.88:
        return rng.choice(containers)
    if kind < 0.94:
        return RAW + rng.choice(raws) + "@@"
    return DEEP + str(rng.choice([900, 1000, 1100, 5000, 100000])) + "@@"


def to_text(doc) -> bytes:
    text = json.dumps(doc, ensure_ascii=True, allow_nan=True)
    while DEEP in text:
        i = text.index('"' + DEEP)
        j = text.index('@@"', i + 1)
        n = int(text[i + 1 + len(DEEP):j])
        text = text[:i] + "[" * n + "]" * n + text[j + 3:]
    while RAW in text:
        i = text.index('"' + RAW)
        j = text.index('@@"', i + 1)
        text = text[:i] + text[i + 1 + len(RAW):j] + text[j + 3:]
    return text.encode()


# ----------------------------------------------------------------------------------------------
# JSON tree mutations


def all_paths(doc, limit: int = 20000) -> list:
    paths, stack = [], [((), doc)]
    while stack and len(paths) < limit:
        path, v = stack.pop()
        paths.append(path)
        if isinstance(v, dict):
            stack.extend((path + (k,), x) for k, x in v.items())
        elif isinstance(v, list):
            stack.extend((path + (k,), x) for k, x in enumerate(v))
    return paths


def node(doc, path):
    for k in path:
        doc = doc[k]
    return doc


def set_path(doc, path, value):
    if not path:
        return value
    node(doc, path[:-1])[path[-1]] = value
    return doc


def delete_path(doc, path):
    if path:
        parent = node(doc, path[:-1])
        del parent[path[-1]]
    return doc


def existing(doc, path) -> bool:
    try:
        node(doc, path)
        return True
    except (KeyError, IndexError, TypeError):
        return False


def mutate_tree(rng: random.Random, doc, targets: list):
    """One mutation: a targeted path (if it exists) or any node gets a new value, or is deleted."""
    paths = [p for p in targets if existing(doc, p)] if targets and rng.random() < 0.6 else []
    path = rng.choice(paths) if paths else rng.choice(all_paths(doc))
    if path and rng.random() < 0.12:
        return delete_path(doc, path)
    return set_path(doc, path, interesting_value(rng, node(doc, path)))


def config_targets(doc) -> list:
    out = [(k,) for k in CONFIG_KEYS]
    for key in ("rope_scaling", "rope_parameters"):
        if isinstance(doc.get(key), dict):
            out += [(key, k) for k in ROPE_KEYS]
    return out


def tokenizer_targets(rng: random.Random, doc) -> list:
    out = [("added_tokens",), ("normalizer",), ("pre_tokenizer",), ("model",), ("model", "type"),
           ("model", "vocab"), ("model", "merges"), ("model", "byte_fallback"), ("model", "dropout"),
           ("normalizer", "type"), ("normalizer", "normalizers"), ("pre_tokenizer", "pretokenizers"),
           ("pre_tokenizer", "type")]
    added = doc.get("added_tokens") if isinstance(doc.get("added_tokens"), list) else []
    for k in range(len(added)):
        out += [("added_tokens", k)] + [("added_tokens", k, f) for f in
                                        ("content", "id", "special", "normalized", "lstrip")]
    pre = doc.get("pre_tokenizer")
    stages = pre.get("pretokenizers") if isinstance(pre, dict) else None
    for k in range(len(stages) if isinstance(stages, list) else 0):
        out += [("pre_tokenizer", "pretokenizers", k, f) for f in
                ("type", "pattern", "behavior", "invert", "use_regex", "individual_digits")]
        out += [("pre_tokenizer", "pretokenizers", k, "pattern", "Regex")]
    model = doc.get("model") if isinstance(doc.get("model"), dict) else {}
    if isinstance(model.get("vocab"), dict) and model["vocab"]:
        out += [("model", "vocab", rng.choice(list(model["vocab"])))]
    if isinstance(model.get("merges"), list) and model["merges"]:
        out += [("model", "merges", rng.randrange(len(model["merges"])))]
    return out


def special_tokenizer_mutation(rng: random.Random, doc):
    """Mutations a random value rarely makes: duplicate ids, bad escapes, surrogates in tokens."""
    model = doc.get("model") if isinstance(doc.get("model"), dict) else {}
    vocab = model.get("vocab") if isinstance(model.get("vocab"), dict) else {}
    merges = model.get("merges") if isinstance(model.get("merges"), list) else []
    kind = rng.randrange(7)
    if kind == 0 and len(vocab) > 1:  # two tokens, one id
        a, b = rng.sample(list(vocab), 2)
        vocab[a] = vocab[b]
    elif kind == 1 and vocab:  # a token renamed to hold a lone surrogate or to ""
        a = rng.choice(list(vocab))
        vocab[rng.choice(["\ud800", a + "\udfff", ""])] = vocab.pop(a)
    elif kind == 2:  # a bad escape in a Split regex
        for p in all_paths(doc):
            if p and p[-1] == "Regex" and isinstance(node(doc, p), str):
                s = node(doc, p)
                i = rng.randrange(len(s) + 1)
                set_path(doc, p, s[:i] + rng.choice(["\\u12", "\\uZZZZ", "\\U00110000", "\\U0001F6", "\\"]) + s[i:])
                break
    elif kind == 3 and merges:  # merges as nested lists, ints, 3 parts, unknown tokens
        k = rng.randrange(len(merges))
        merges[k] = rng.choice([[["a"], ["b"]], [1, 2], 7, "a b c", "zzzq zzzr", ["a"], "ab", None])
    elif kind == 4 and isinstance(doc.get("added_tokens"), list) and doc["added_tokens"]:
        a = rng.choice(doc["added_tokens"])
        if isinstance(a, dict):  # an added token on a vocab id, or twice the same id / content
            a[rng.choice(["id", "content"])] = rng.choice(
                [rng.choice(list(vocab.values()) or [0]), doc["added_tokens"][0].get("id"),
                 doc["added_tokens"][0].get("content"), "\ud83d"])
    elif kind == 5 and vocab:  # an id out of range
        vocab[rng.choice(list(vocab))] = rng.choice([-1, 2**24, 2**24 - 1, 2**32, 1.5, True, "3"])
    elif kind == 6:  # a Split pattern as a bare string / String pattern / no Regex
        for p in all_paths(doc):
            if p and p[-1] == "pattern":
                set_path(doc, p, rng.choice(["\\p{N}", {"String": " "}, {}, {"Regex": 5},
                                             {"Regex": "a", "String": "b"}]))
                break
    return doc


# ----------------------------------------------------------------------------------------------
# file mutations


def read_header(path: str):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    return header, data


def write_shard(path: str, header_bytes: bytes, data: bytes, length=None) -> None:
    header_bytes += b" " * (-len(header_bytes) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes) if length is None else length))
        f.write(header_bytes + data)


def mutate_shard(rng: random.Random, case: str, log: list) -> None:
    shards = sorted(f for f in os.listdir(case)
                    if f.endswith(".safetensors") and os.path.isfile(os.path.join(case, f)))
    if not shards:
        return
    path = os.path.join(case, rng.choice(shards))
    try:
        header, data = read_header(path)
    except (ValueError, struct.error, RecursionError, OverflowError, MemoryError):  # mutated before
        return
    if not isinstance(header, dict):
        return
    names = [n for n in header if n != "__metadata__"]
    length = None
    for _ in range(rng.choice([1, 1, 2, 3])):
        if not isinstance(header, dict):  # replaced as a whole by an earlier mutation
            break
        kind = rng.randrange(8)
        name = rng.choice(names) if names else "__metadata__"
        if kind <= 2 and isinstance(header.get(name), dict):
            field = rng.choice(["dtype", "shape", "data_offsets"])
            entry = header[name]
            if field in entry and isinstance(entry[field], list) and entry[field] and rng.random() < 0.5:
                k = rng.randrange(len(entry[field]))
                entry[field][k] = interesting_value(rng, entry[field][k])
            else:
                entry[field] = rng.choice(["F32", "BF16", "F8_E4M3", "I32", "F99", 7, None]) \
                    if field == "dtype" and rng.random() < 0.5 else interesting_value(rng, entry.get(field))
        elif kind == 3:
            header[name] = interesting_value(rng, header.get(name))
        elif kind == 4 and names:
            header.pop(name, None)
        elif kind == 5 and names:
            header[rng.choice(["model.layers.99.mlp.gate.weight", name + "x", "__metadata__",
                               "model.layers.0.self_attn.q_proj.bias"])] = header.get(name)
        elif kind == 6:
            header = mutate_tree(rng, header, [])
        else:
            length = rng.choice([0, 1, 7, 2**63, 2**64 - 1, 101 << 20, os.path.getsize(path)])
        log.append(f"{os.path.basename(path)} header mutation {kind} on {name!r}")
    text = to_text(header)
    if rng.random() < 0.1:
        data = data[:rng.randrange(len(data) + 1)]
        log.append("data truncated")
    write_shard(path, text, data, length)


def mutate_json_file(rng: random.Random, path: str, targets_of, log: list) -> None:
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except (ValueError, RecursionError):  # already mutated beyond reading
        return
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        if targets_of is tokenizer_targets and rng.random() < 0.3:
            with contextlib.suppress(TypeError, AttributeError, KeyError, IndexError, ValueError):
                doc = special_tokenizer_mutation(rng, doc)  # on a document mutated before: may not apply
            log.append(f"{os.path.basename(path)}: special mutation")
        else:
            targets = []
            if targets_of and isinstance(doc, dict):
                with contextlib.suppress(TypeError, AttributeError, KeyError, IndexError, ValueError):
                    targets = targets_of(rng, doc)
            doc = mutate_tree(rng, doc, targets)
            log.append(f"{os.path.basename(path)}: tree mutation")
    text = to_text(doc)
    if rng.random() < 0.05:  # raw bytes: a flip, a cut, an invalid UTF-8 byte
        i = rng.randrange(len(text) + 1)
        text = text[:i] + rng.choice([b"\xff", b"\xed\xa0\x80", b"", b"}", b"\\"]) + text[i + rng.randrange(3):]
        log.append(f"{os.path.basename(path)}: raw byte edit at {i}")
    with open(path, "wb") as f:
        f.write(text)


def replace_with_special(rng: random.Random, path: str, log: list) -> None:
    """An input that is not a regular file: FIFO, directory, device, dangling or looping symlink."""
    if os.path.lexists(path):
        os.unlink(path)
    kind = rng.choice(["fifo", "dir", "zero", "null", "dangling", "loop"])
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dir":
        os.mkdir(path)
    elif kind in ("zero", "null"):
        os.symlink("/dev/" + kind, path)
    elif kind == "dangling":
        os.symlink(path + ".nowhere", path)
    else:
        os.symlink(os.path.basename(path), path)
    log.append(f"{os.path.basename(path)} replaced by a {kind}")


def choose_output(rng: random.Random, case: str, out_dir: str, tokenizer_mode: bool, log: list):
    """(output path, a path whose bytes or kind must survive the export, or None)."""
    out = os.path.join(out_dir, "model.bin")
    if rng.random() > 0.12:
        return out, None
    names = ["tokenizer.json", "tokenizer_config.json"] if tokenizer_mode else sorted(os.listdir(case))
    inputs = [os.path.join(case, f) for f in names if os.path.isfile(os.path.join(case, f))]
    kind = rng.choice(["input", "symlink", "hardlink", "relative"] * bool(inputs)
                      + ["dir", "fifo", "devnull", "regular"])
    victim = rng.choice(inputs) if kind in ("input", "symlink", "hardlink", "relative") else out
    log.append(f"output is a {kind} ({os.path.basename(victim)})")
    if kind == "input":
        return victim, victim
    if kind == "relative":
        return os.path.relpath(victim), victim
    if kind == "symlink":
        os.symlink(victim, out)
    elif kind == "hardlink":
        os.link(victim, out)
    elif kind == "dir":
        os.mkdir(out)
    elif kind == "fifo":
        os.mkfifo(out)
    elif kind == "devnull":
        os.symlink("/dev/null", out)
        victim = "/dev/null"
    else:  # a regular file: replaced on success, kept on failure
        with open(out, "wb") as f:
            f.write(b"previous")
        victim = None
    return out, victim


def fingerprint(path: str):
    st = os.lstat(path)
    if stat.S_ISREG(st.st_mode):
        with open(path, "rb") as f:
            return ("file", hashlib.sha256(f.read()).hexdigest())
    return (stat.S_IFMT(st.st_mode), st.st_ino)


# ----------------------------------------------------------------------------------------------
# one case


class Timeout(BaseException):
    pass


def on_alarm(signum, frame):
    raise Timeout()


def make_case(rng: random.Random, bases: dict, case: str, out_dir: str, tokenizer_mode: bool, log: list):
    variant = rng.choices(list(BASES), weights=list(BASES.values()))[0]
    log.append(f"base {variant}")
    shutil.copytree(bases[variant], case, symlinks=True)
    files = set(os.listdir(case))
    targets = ["config", "shard", "config", "shard"]
    if "model.safetensors.index.json" in files:
        targets.append("index")
    if "tokenizer.json" in files:
        targets += ["tokenizer", "tokenizer", "tokenizer", "tokenizer_config"]
    for _ in range(rng.choice([1, 1, 1, 2])):
        try:
            mutate_once(rng, case, files, targets, log)
        except (TypeError, AttributeError, KeyError, IndexError, ValueError, RecursionError):
            log.append("a mutation did not apply to the file as mutated before")
    return choose_output(rng, case, out_dir, tokenizer_mode, log)


JSON_FILES = {"config": "config.json", "index": "model.safetensors.index.json",
              "tokenizer": "tokenizer.json", "tokenizer_config": "tokenizer_config.json"}
TOKENIZER_CONFIG_TARGETS = [("bos_token",), ("eos_token",), ("add_bos_token",), ("add_eos_token",),
                            ("chat_template",)]


def mutate_once(rng: random.Random, case: str, files: set, targets: list, log: list) -> None:
    target = rng.choice(targets)
    if rng.random() < 0.04:
        name = rng.choice(sorted(files) + ["chat_template.jinja"])
        replace_with_special(rng, os.path.join(case, name), log)
        files.discard(name)
    elif target == "shard":
        mutate_shard(rng, case, log)
    elif JSON_FILES[target] in files and os.path.isfile(os.path.join(case, JSON_FILES[target])):
        path = os.path.join(case, JSON_FILES[target])
        if target == "index":
            mutate_weight_map(rng, path, log)
        elif target == "config":
            mutate_json_file(rng, path, lambda r, d: config_targets(d), log)
        elif target == "tokenizer":
            mutate_json_file(rng, path, tokenizer_targets, log)
        else:
            mutate_json_file(rng, path, lambda r, d: TOKENIZER_CONFIG_TARGETS, log)


def mutate_weight_map(rng: random.Random, path: str, log: list) -> None:
    with open(path) as f:
        doc = json.load(f)
    wm = doc["weight_map"]
    key = rng.choice(list(wm))
    wm[key] = rng.choice(["", "../config.json", "nope.safetensors", "config.json", "a/b", "a\x00b", 5,
                          None, ["x"], {"a": 1}, "\ud800", rng.choice(list(wm.values()))])
    if rng.random() < 0.1:
        doc["weight_map"] = interesting_value(rng)
    with open(path, "wb") as f:
        f.write(to_text(doc))
    log.append(f"weight_map[{key!r}] mutated")


def run_case(k: int, seed: int, bases: dict, work: str, run_bin, timeout: float) -> tuple:
    """(outcome, problem or None, log)."""
    rng = random.Random(f"{seed}:{k}")
    case, out_dir = os.path.join(work, "case"), os.path.join(work, "out")
    for d in (case, out_dir):
        if os.path.lexists(d):
            shutil.rmtree(d)
    os.mkdir(out_dir)
    log: list = []
    tokenizer_mode = rng.random() < 0.1
    out, keep = make_case(rng, bases, case, out_dir, tokenizer_mode, log)
    before = fingerprint(keep) if keep else None
    previous = os.path.lexists(out)
    dtype = rng.choice(["f32", "f32", "bf16", "q8", "q4"])
    argv = ["--tokenizer", case, out] if tokenizer_mode else [case, out, "--dtype", dtype]
    log.append("argv " + " ".join(argv))
    err = io.StringIO()
    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    code, problem = None, None
    try:
        with contextlib.redirect_stderr(err):
            export.main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    except Timeout:
        problem = f"no result after {timeout} s (hang or runaway work)"
    except BaseException:
        problem = "exception:\n" + traceback.format_exc()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for s in export.STOP_SIGNALS:
            signal.signal(s, signal.default_int_handler if s == signal.SIGINT else signal.SIG_DFL)
    lines = err.getvalue().strip().splitlines()
    log.append("stderr: " + err.getvalue().strip()[-2000:])
    if problem is None:
        problem = check_result(code, lines, out, out_dir, keep, before, previous, argv, run_bin)
    outcome = "accepted" if code == 0 else "refused"
    log.append("result " + (lines[-1] if lines else ""))
    return outcome, problem, log


def check_result(code, lines, out, out_dir, keep, before, previous, argv, run_bin):
    errors = [line for line in lines if line.startswith("export.py: error: ")]
    others = [line for line in lines if not line.startswith(("export.py: warning: ", "export: "))]
    if keep and fingerprint(keep) != before:
        return f"{keep} was changed or replaced"
    if code == 1:
        if len(errors) != 1 or others != errors or lines[-1] != errors[0]:
            return "exit 1 without exactly one 'export.py: error:' line"
        if "out of memory" in errors[0]:
            return "ran out of memory"
        left = sorted(set(os.listdir(out_dir)) - ({os.path.basename(out)} if previous else set()))
        if left:
            return f"files left in the output directory after a failure: {left}"
        if previous and not keep and open(out, "rb").read() != b"previous":
            return "the previous output file was changed by a failed export"
        return None
    if code != 0:
        return f"exit status {code!r}"
    if errors or others:
        return "exit 0 with an error line"
    if not os.path.isfile(out) or os.path.islink(out):
        return "exit 0 but no regular output file"
    if run_bin and "--tokenizer" not in argv:
        p = subprocess.run([run_bin, out, "--encode"], stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=60)
        if p.returncode != 0 and b"has no embedded tokenizer" not in p.stderr:
            return "run.c rejects the exported file: " + p.stderr.decode(errors="replace").strip()
    if run_bin and "--tokenizer" in argv:
        p = subprocess.run([run_bin, "-z", out, "--encode"], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=60)
        if p.returncode != 0:
            return "run.c rejects the exported tokenizer: " + p.stderr.decode(errors="replace").strip()
    return None


# ----------------------------------------------------------------------------------------------


def make_bases(work: str) -> dict:
    bases = {}
    for variant in BASES:
        path = gen_checkpoints.write_checkpoint(variant, os.path.join(work, "base", variant))
        if variant == "fuzz_v2tok":
            for name in ("tokenizer.json", "tokenizer_config.json"):
                shutil.copy(os.path.join(ROOT, "tests", "data", "v2_tokenizer", name), path)
        bases[variant] = path
    return bases


def main() -> None:
    ap = argparse.ArgumentParser(description="Fuzz export.py (see the module docstring).")
    ap.add_argument("--seconds", type=float, default=45.0, help="time budget (default 45)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--case", type=int, default=None, help="replay this one case, verbosely")
    ap.add_argument("--run", default=None, help="./run, to check that accepted files load")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per case (default 20)")
    ap.add_argument("--stats", action="store_true", help="print how often each message came")
    ap.add_argument("--save", default=os.path.join(ROOT, "build", "fuzz-export"),
                    help="where failing cases are kept")
    args = ap.parse_args()
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    run_bin = os.path.abspath(args.run) if args.run else None
    start = time.monotonic()
    counts = {"accepted": 0, "refused": 0}
    failures = []
    messages: dict = {}
    with tempfile.TemporaryDirectory(prefix="fuzz-export-") as work:
        bases = make_bases(work)
        cases = [args.case] if args.case is not None else range(10**9)
        for k in cases:
            if args.case is None and time.monotonic() - start > args.seconds:
                break
            outcome, problem, log = run_case(k, args.seed, bases, work, run_bin, args.timeout)
            counts[outcome] += 1
            if args.stats:
                result = re.sub(r"/\S*|\b[-+]?\d[\w.+-]*|'[^']*'|\"[^\"]*\"", "_", log[-1][7:])[:90]
                messages[result] = messages.get(result, 0) + 1
            if args.case is not None:
                print("\n".join(log))
            if problem:
                failures.append(k)
                saved = os.path.join(args.save, f"seed{args.seed}-case{k}")
                shutil.rmtree(saved, ignore_errors=True)
                shutil.copytree(os.path.join(work, "case"), saved, symlinks=True)
                with open(os.path.join(saved, "FAILURE.txt"), "w") as f:
                    f.write(problem + "\n\n" + "\n".join(log) + "\n")
                print(f"fuzz-export: case {k}: {problem.splitlines()[0]} (kept in {saved})", file=sys.stderr)
    for message, count in sorted(messages.items(), key=lambda kv: -kv[1]):
        print(f"{count:6d}  {message}")
    n = counts["accepted"] + counts["refused"]
    print(f"fuzz-export: {n} cases in {time.monotonic() - start:.0f} s ({counts['accepted']} exported, "
          f"{counts['refused']} refused), {len(failures)} failures, seed {args.seed}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
