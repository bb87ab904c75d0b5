"""Unit tests of the numpy reference and the checkpoint generator alone (no engine needed):
YaRN vectors (computed from the formulas of HF modeling_deepseek.py), FP8/BF16 decoding, naive vs absorbed MLA, and that the generated models
make routing non-trivial (group limit and correction bias change the chosen experts)."""
import json
import os

import numpy as np
import pytest

import gen_checkpoints as G
import reference as R

YARN_DS = {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
           "beta_fast": 32, "beta_slow": 1}


def prompt_ids(vocab: int, n: int = 40, seed: int = 7) -> list:
    """n distinct ids spread over the whole vocabulary, including the last row."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(vocab - 1, n - 1, replace=False).tolist()
    ids.insert(n // 2, vocab - 1)
    return [int(i) for i in ids]


# ---------------------------------------------------------------- YaRN vectors

@pytest.mark.parametrize("m_all,m2", [(0.707, 1.589626165), (1.0, 1.873854207)])
def test_yarn_deepseek_vectors(m_all, m2):
    rope = {"theta": 1e4, "yarn": dict(YARN_DS, mscale=m_all, mscale_all_dim=m_all)}
    theta, m_cs = R.rope_frequencies(rope, 64)
    np.testing.assert_allclose(theta[:4], [1, 0.749894209, 0.562341325, 0.421696503], rtol=1e-8)
    np.testing.assert_allclose(theta[31], 3.33380358e-06, rtol=1e-8)
    np.testing.assert_allclose(theta[10:13], [0.0562341, 0.0390069, 0.0268794], rtol=1e-5)
    assert m_cs == 1.0  # mscale == mscale_all_dim: no generic 0.1 ln(s) + 1 on cos/sin
    assert R.yarn_mscale(40, m_all) ** 2 == pytest.approx(m2, rel=1e-9)
    cfg = {"qk_nope_head_dim": 128, "qk_rope_head_dim": 64}
    want = {0.707: 0.114721387, 1.0: 0.135233779}[m_all]
    assert R.softmax_scale(cfg, rope) == pytest.approx(want, rel=1e-8)
    assert R.softmax_scale(cfg, rope, with_mscale=False) == pytest.approx(192 ** -0.5)


def test_yarn_kimi_vector():
    rope = {"theta": 5e4, "yarn": {"type": "yarn", "factor": 32, "original_max_position_embeddings": 4096,
                                   "beta_fast": 1, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}}
    theta, _ = R.rope_frequencies(rope, 64)
    np.testing.assert_allclose(theta[:4], [1, 0.713111085, 0.508527419, 0.36263654], rtol=1e-8)
    np.testing.assert_allclose(theta[31], 8.76441291e-07, rtol=1e-8)
    assert R.yarn_mscale(32, 1.0) ** 2 == pytest.approx(1.813260434, rel=1e-9)


def test_glm_rope_scale_and_router_vectors():
    """GLM-4.7-Flash: plain RoPE base 1e6 over the 64-wide rope part, softmax scale 256^-0.5 = 1/16 with no
    mscale (values hand-computed), and a sigmoid router although config.json has no scoring_func."""
    cfg = {"model_type": "glm4_moe_lite", "qk_nope_head_dim": 192, "qk_rope_head_dim": 64, "rope_theta": 1e6,
           "rope_scaling": None}
    rope = R.rope_config(cfg)
    theta, m = R.rope_frequencies(rope, 64)
    np.testing.assert_allclose(theta[:4], [1, 0.649381632, 0.421696503, 0.273841963], rtol=1e-8)
    np.testing.assert_allclose(theta[31], 1.5399265e-06, rtol=1e-7)
    assert m == 1.0 and R.softmax_scale(cfg, rope) == 0.0625
    assert R.scoring_func(cfg) == "sigmoid" and R.scoring_func({"model_type": "deepseek_v2"}) == "softmax"
    assert [R.is_moe_layer({"mlp_layer_types": ["dense", "sparse", "sparse"]}, l) for l in range(3)] == [False, True, True]


def test_plain_rope_and_spellings():
    assert R.rope_config({"rope_theta": 5e4, "rope_scaling": None}) == {"theta": 5e4, "yarn": None}
    rp = R.rope_config({"rope_parameters": {"rope_type": "yarn", "rope_theta": 5e4, "factor": 32.0}})
    assert rp["theta"] == 5e4 and rp["yarn"]["factor"] == 32.0
    assert R.rope_config({"rope_parameters": {"rope_type": "default", "rope_theta": 3.0}})["yarn"] is None
    theta, m = R.rope_frequencies({"theta": 1e4, "yarn": None}, 64)
    np.testing.assert_allclose(theta, 1e4 ** (-np.arange(0, 64, 2) / 64))
    assert m == 1.0


def test_rope_interleaved_pairs():
    """Adjacent pairs rotate as complex numbers (inference/model.py apply_rotary_emb), not NeoX halves."""
    x = np.arange(8, dtype=np.float64).reshape(1, 8) + 1
    theta = np.array([1.0, 0.5, 0.25, 0.125])
    y = R.apply_rope(x, np.array([3.0]), theta, 1.0)
    z = (x[0, 0::2] + 1j * x[0, 1::2]) * np.exp(1j * 3.0 * theta)
    np.testing.assert_allclose(y[0, 0::2], z.real)
    np.testing.assert_allclose(y[0, 1::2], z.imag)


# ---------------------------------------------------------------- dtypes

def test_e4m3_decoding():
    t = R.E4M3
    assert t[0x7E] == 448 and t[0xFE] == -448
    assert np.isnan(t[0x7F]) and np.isnan(t[0xFF])
    assert t[0x01] == 2.0 ** -9 and t[0x08] == 2.0 ** -6 and t[0x38] == 1.0 and t[0xB8] == -1.0
    assert t[0x80] == 0 and np.signbit(t[0x80])
    fin = t[:0x7F]
    assert np.all(np.diff(fin) > 0)
    # the generator's encoder is the exact inverse on representable values
    assert np.array_equal(G.f32_to_e4m3_bytes(fin), np.arange(0x7F, dtype=np.uint8))


def test_fp8_block_dequant_partial_edges():
    """Scale grid [ceil(M/128), ceil(N/128)] multiplied block-wise, edge blocks partial."""
    M, N = 300, 130
    q = np.full((M, N), 0x38, np.uint8)          # 1.0 everywhere
    q[299, 129] = 0xC0                            # -2.0
    s = np.arange(1, 3 * 2 + 1, dtype=np.float32).reshape(3, 2)
    w = R.dequant_fp8_blocks(q, s)
    assert w[0, 0] == 1 and w[127, 127] == 1 and w[0, 128] == 2 and w[128, 0] == 3
    assert w[255, 129] == 4 and w[256, 0] == 5 and w[299, 128] == 6 and w[299, 129] == -12
    with pytest.raises(ValueError):
        R.dequant_fp8_blocks(q, s.T.copy())       # a transposed grid is rejected


def test_fp8_roundtrip_close():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((200, 136)).astype(np.float32)
    q, s = G.quantize_fp8_blocks(w, rng)
    assert s.shape == (2, 2) and s.dtype == np.float32
    back = R.dequant_fp8_blocks(q, s)
    rng2 = np.random.default_rng(0)  # regenerate the per-block gains the quantiser applied
    rng2.standard_normal((200, 136))
    gain = rng2.uniform(0.5, 2.0, size=(2, 2))
    target = w * np.repeat(np.repeat(gain, 128, 0), 128, 1)[:200, :136]
    assert np.max(np.abs(back - target) / (np.abs(target) + 0.05)) < 0.1


def test_bf16_rounding():
    x = np.array([1.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -7, -3.14159, 1e-30], np.float32)
    r = R.round_to_bf16(x)
    assert r[0] == 1.0 and r[1] == 1.0 and r[2] == 1 + 2 ** -6 and r[3] == 1 + 2 ** -7  # nearest-even
    assert r[4] == np.float32(-3.140625)
    assert np.array_equal(R.bf16_to_f32(G.f32_to_bf16_bits(x)), r)


# ---------------------------------------------------------------- generated checkpoints

@pytest.mark.parametrize("variant", sorted(G.VARIANTS))
def test_checkpoint_files(checkpoint, variant):
    d = checkpoint(variant)
    cfg = json.load(open(os.path.join(d, "config.json")))
    spec = G.VARIANTS[variant]
    assert cfg["model_type"] == spec["model_type"] and cfg["architectures"]
    st = R.SafeTensors(d)
    names = set(st.names())
    L = cfg["num_hidden_layers"]
    assert "lm_head.weight" in names and "model.embed_tokens.weight" in names
    dtypes = {st.where[n][1] for n in names}
    if spec.get("_fp8"):
        assert os.path.exists(os.path.join(d, "model.safetensors.index.json"))
        assert len({st.where[n][0] for n in names}) == spec["_shards"]
        fp8 = {n for n in names if st.where[n][1] == "F8_E4M3"}
        for n in fp8:
            assert n + "_scale_inv" in names and st.where[n + "_scale_inv"][1] == spec.get("_scale_dtype", "F32")
            assert any(k in n for k in ("self_attn.q_a_proj", "self_attn.q_b_proj", "kv_a_proj_with_mqa",
                                        "kv_b_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                                        "indexer.wq_b", "indexer.wk"))
        partial = [n for n in fp8 if any(s % 128 for s in st.where[n][2]) and max(st.where[n][2]) > 128]
        assert partial, "no FP8 tensor with partial edge blocks"
        assert st.where["model.layers.1.mlp.gate.weight"][1] == "BF16"
        mtp = f"model.layers.{L}."
        for t in ("embed_tokens.weight", "enorm.weight", "hnorm.weight", "eh_proj.weight",
                  "shared_head.norm.weight", "shared_head.head.weight", "mlp.gate.e_score_correction_bias"):
            assert mtp + t in names
    else:
        assert dtypes <= {spec["_dtype"], "F32"}
    if spec["topk_method"] == "noaux_tc" and spec.get("_bias_dtype", "F32") == "F32":
        moe = [l for l in range(L) if R.is_moe_layer(cfg, l)]
        assert moe and all(st.where[f"model.layers.{l}.mlp.gate.e_score_correction_bias"][1] == "F32" for l in moe)


def test_generator_deterministic(tmp_path):
    a = G.write_checkpoint("v2", str(tmp_path / "a"), seed=3)
    b = G.write_checkpoint("v2", str(tmp_path / "b"), seed=3)
    c = G.write_checkpoint("v2", str(tmp_path / "c"), seed=4)
    read = lambda d: open(os.path.join(d, "model.safetensors"), "rb").read()  # noqa: E731
    assert read(a) == read(b) != read(c)


# ---------------------------------------------------------------- reference properties

@pytest.mark.parametrize("variant", sorted(G.VARIANTS))
def test_naive_equals_absorbed(checkpoint, variant):
    ref = R.load(checkpoint(variant))
    toks = prompt_ids(ref.cfg["vocab_size"])
    a = ref.forward(toks)
    b = ref.forward(toks, absorbed=True)
    assert np.abs(a - b).max() < 1e-9
    assert 1.0 < a.std() < 10.0  # logits O(1-10)


def routing_sets(ref, toks, **kw):
    rt = []
    ref.forward(toks, routing=rt, **kw)
    return [r[2] for r in rt]


@pytest.mark.parametrize("variant", ["v2", "v3", "v3fp8"])
def test_group_limit_changes_choices(checkpoint, variant):
    ref = R.load(checkpoint(variant))
    toks = prompt_ids(ref.cfg["vocab_size"])
    with_g = routing_sets(ref, toks)
    without = routing_sets(ref, toks, group_limit=False)
    frac = np.mean([a != b for a, b in zip(with_g, without)])
    assert frac > 0.3, f"group limit changes only {frac:.0%} of routing decisions"
    # every choice respects the limit: experts from at most topk_group groups
    per = ref.cfg["n_routed_experts"] // ref.cfg["n_group"]
    assert all(len({e // per for e in s}) <= ref.cfg["topk_group"] for s in with_g)
    assert any(len({e // per for e in s}) > ref.cfg["topk_group"] for s in without)


@pytest.mark.parametrize("variant", ["v3", "v3fp8", "k2rp", "moonlight"])
def test_bias_changes_choices(checkpoint, variant):
    ref = R.load(checkpoint(variant))
    toks = prompt_ids(ref.cfg["vocab_size"])
    frac = np.mean([a != b for a, b in zip(routing_sets(ref, toks), routing_sets(ref, toks, use_bias=False))])
    assert frac > 0.3, f"correction bias changes only {frac:.0%} of routing decisions"


def test_route_rules():
    """Hand-checked router cases (HF modeling_deepseek.py MoEGate)."""
    cfg = dict(n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2, topk_method="noaux_tc",
               scoring_func="sigmoid", norm_topk_prob=True, routed_scaling_factor=2.5)
    z = np.array([3.0, -3, 0, 0, 2.5, 2.5, 0, 0.1])
    b = np.array([0, 0, 0, 0, 0, 0, 0, 1.0])
    idx, w = R.route(cfg, z, b)
    # group sums of top-2 biased scores: g0 = s(3)+s(-3) ~ 1.0, g1 = 1.0, g2 = 1.85, g3 = 0.5+1.52 = 2.02
    # -> keep g3, g2; top-2 biased: expert 7 (1.52), then 4 (0.92)
    assert sorted(idx.tolist()) == [4, 7]
    s = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(sorted(w), sorted(2.5 * s[[4, 7]] / s[[4, 7]].sum()))
    cfg2 = dict(cfg, topk_method="group_limited_greedy", scoring_func="softmax", norm_topk_prob=False,
                routed_scaling_factor=16.0)
    idx, w = R.route(cfg2, z, None)
    p = np.exp(z) / np.exp(z).sum()
    # group max: g0 = p(3), g2 = p(2.5): keep groups 0, 2 -> experts 0, then 4 (tie 4/5: lowest index)
    assert idx.tolist() == [0, 4]
    np.testing.assert_allclose(w, 16 * p[[0, 4]])


def test_rope_matches_hf_deinterleaved_form():
    """HF permutes q_pe/k_pe to [x0, x2, ..., x1, x3, ...] and applies rotate_half with duplicated
    cos/sin (HF modeling_deepseek.py): the vectors differ by that permutation, every q.k product is identical."""
    rng = np.random.default_rng(1)
    dr, T = 16, 9
    theta, m = R.rope_frequencies({"theta": 1e4, "yarn": dict(YARN_DS, mscale=0.707, mscale_all_dim=0.707)}, dr)
    pos = np.arange(T, dtype=np.float64) * 7
    q, k = rng.standard_normal((T, dr)), rng.standard_normal((T, dr))

    def hf(x):
        x = np.concatenate([x[:, 0::2], x[:, 1::2]], axis=1)          # de-interleave
        ang = np.concatenate([pos[:, None] * theta] * 2, axis=1)
        half = np.concatenate([-x[:, dr // 2:], x[:, :dr // 2]], axis=1)  # rotate_half
        return x * np.cos(ang) * m + half * np.sin(ang) * m

    ours_q, ours_k = R.apply_rope(q, pos, theta, m), R.apply_rope(k, pos, theta, m)
    perm = np.r_[0:dr:2, 1:dr:2]
    np.testing.assert_allclose(hf(q), ours_q[:, perm], atol=1e-12)
    np.testing.assert_allclose(hf(q) @ hf(k).T, ours_q @ ours_k.T, atol=1e-12)
    neox = lambda x: np.concatenate([x[:, :dr // 2], x[:, dr // 2:]], 1)  # noqa: E731  (no permutation)
    ang = np.concatenate([pos[:, None] * theta] * 2, axis=1)
    wrong = lambda x: neox(x) * np.cos(ang) + np.concatenate([-x[:, dr // 2:], x[:, :dr // 2]], 1) * np.sin(ang)  # noqa: E731
    assert np.abs(wrong(q) @ wrong(k).T - ours_q @ ours_k.T).max() > 0.1  # NeoX on stored weights differs


def test_bias_shift_invariance(checkpoint):
    """v3fp8's biases are shifted by -1 (all biased scores negative): with -inf masking the
    choices equal those of the unshifted biases; a 0 mask would choose differently."""
    ref = R.load(checkpoint("v3fp8"))
    toks = prompt_ids(ref.cfg["vocab_size"])
    rt = []
    ref.forward(toks, routing=rt)
    w = ref.w
    x_by_layer = {}
    cfg = ref.cfg
    for l in range(cfg["num_hidden_layers"]):
        b = w.get(f"model.layers.{l}.mlp.gate.e_score_correction_bias")
        if b is not None:
            assert b.max() < -0.5
            x_by_layer[l] = b
    assert x_by_layer
    rng = np.random.default_rng(0)
    zero_mask_differs = 0
    for _ in range(200):
        z = rng.standard_normal(cfg["n_routed_experts"]) * 1.5
        b = next(iter(x_by_layer.values()))
        i1, w1 = R.route(cfg, z, b)
        i2, w2 = R.route(cfg, z, b + 1.0)
        assert sorted(i1) == sorted(i2)
        c = 1 / (1 + np.exp(-z)) + b                 # the 0-mask variant (native HF before #45441)
        per = cfg["n_routed_experts"] // cfg["n_group"]
        g = np.sort(c.reshape(cfg["n_group"], per), axis=1)[:, -2:].sum(axis=1)
        keep = np.argsort(-g, kind="stable")[:cfg["topk_group"]]
        masked = np.where(np.isin(np.arange(len(c)) // per, keep), c, 0.0)
        zero_mask_differs += sorted(np.argsort(-masked, kind="stable")[:cfg["num_experts_per_tok"]]) != sorted(i1)
    assert zero_mask_differs > 150


# ---------------------------------------------------------------- DeepSeek-V3.2's lightning indexer

def test_indexer_rope_halves_is_the_official_non_interleaved_form():
    """apply_rotary_emb(x, freqs_cis, interleaved=False) of the official V3.2 inference/model.py: view the last
    dim as (2, d/2), transpose to d/2 complex pairs (x[j], x[j + d/2]), multiply by e^{i p theta_j}, and write
    the real parts, then the imaginary parts. The halves rotation equals it; adjacent pairs do not."""
    rng = np.random.default_rng(0)
    d, T = 16, 5
    x = rng.standard_normal((T, 3, d))
    pos = np.arange(T, dtype=np.float64) + 7
    theta, _ = R.rope_frequencies({"theta": 1e4, "yarn": dict(YARN_DS, mscale=1.0, mscale_all_dim=1.0)}, d)
    pairs = x.reshape(T, 3, 2, d // 2).transpose(0, 1, 3, 2)             # (T, 3, d/2, 2)
    z = (pairs[..., 0] + 1j * pairs[..., 1]) * np.exp(1j * pos[:, None, None] * theta[None, None, :])
    official = np.concatenate([z.real, z.imag], axis=-1)
    np.testing.assert_allclose(R.apply_rope(x, pos, theta, 1.0, halves=True), official, atol=1e-12)
    assert np.abs(R.apply_rope(x, pos, theta, 1.0) - official).max() > 0.1


def test_hadamard_rotation_changes_no_selection(checkpoint):
    """The official indexer multiplies q and k by H/sqrt(d) (Sylvester); it is orthogonal, so skipping it on
    both sides changes no score beyond rounding and no selection."""
    h = R.hadamard(32)
    np.testing.assert_allclose(h @ h.T, np.eye(32), atol=1e-12)
    ref = R.load(checkpoint("v32"))
    toks = prompt_ids(ref.cfg["vocab_size"], 48)
    xn = R.rmsnorm(ref.w["model.embed_tokens.weight"][toks], ref.w["model.layers.0.input_layernorm.weight"], 1e-6)
    pos = np.arange(48, dtype=np.float64)
    keep = ref.indexer(0, xn, pos)
    assert np.array_equal(keep, ref.indexer(0, xn, pos, rotate=True))
    assert keep.sum(axis=1).max() == ref.cfg["index_topk"] and not np.array_equal(keep, np.tril(np.ones((48, 48), bool)))
    assert not np.array_equal(keep, ref.indexer(0, xn, pos, rope_halves=False))
