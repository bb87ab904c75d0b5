/*
 * seek.c: inference for DeepSeek-V2/V3 Mixture-of-Experts models with
 * Multi-head Latent Attention, in one file of C11 (libc, libm, pthreads).
 *
 * Reads top to bottom like the papers: config, weights, matmul (the only code
 * that knows weight storage types), run state, the blocks (rmsnorm, rope,
 * mla_attention, moe), forward, tokenizer, sampler, generate/chat, benchmark,
 * main.
 *
 * The math follows the DeepSeek-V2 paper (MLA, DeepSeekMoE) and the V3 paper
 * (sigmoid router, auxiliary-loss-free bias); section numbers "spec §x" refer
 * to the project's model specification.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <stdarg.h>
#include <string.h>
#include <math.h>
#include <time.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>

// Every way a run can fail ends here: one line on stderr, exit status 1.
static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "error: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n, size);
    if (!p) die("out of memory (%zu x %zu bytes)", n, size);
    return p;
}

// ----------------------------------------------------------------------------
// Config and model file format
//
// File format v1 (shared contract with export.py): "SEEK", u32 version, u32
// n_config, n_config 4-byte words, u32 n_tensors, n_tensors 128-byte table
// entries, then 64-byte-aligned tensor data. All little-endian.

#define SEEK_VERSION 1
#define SEEK_N_CONFIG 40
#define TENSOR_ENTRY_BYTES 128
#define TENSOR_NAME_BYTES 96
#define TENSOR_ALIGN 64
// Upper bound for any single dimension; keeps every derived product (rows of
// q_b_proj, kv_b_proj, ...) far inside int range so shape math cannot overflow.
#define MAX_DIM (1 << 24)

enum { TYPE_F32 = 0, TYPE_BF16 = 1, TYPE_Q8 = 2, TYPE_Q4 = 3, TYPE_U8 = 16 };
enum { TOPK_GREEDY = 0, TOPK_GROUP_LIMITED_GREEDY = 1, TOPK_NOAUX_TC = 2 };
enum { SCORE_SOFTMAX = 0, SCORE_SIGMOID = 1 };
enum { ROPE_NONE = 0, ROPE_YARN = 1 };

typedef struct {
    int dim;                    // hidden_size D
    int n_layers;               // num_hidden_layers L
    int vocab_size;             // rows of embed_tokens / lm_head V
    int n_heads;                // H
    int q_lora_rank;            // rq, 0 = plain q_proj
    int kv_lora_rank;           // r, the latent size that gets cached
    int qk_nope_head_dim;       // dn
    int qk_rope_head_dim;       // dr
    int v_head_dim;             // dv
    int intermediate_size;      // I, dense MLP
    int moe_intermediate_size;  // Ie, per expert
    int n_routed_experts;       // E, 0 = no MoE
    int n_shared_experts;       // S
    int num_experts_per_tok;    // K
    int n_group;
    int topk_group;
    int topk_method;            // TOPK_*
    int scoring_func;           // SCORE_*
    int norm_topk_prob;
    float routed_scaling_factor;
    int first_k_dense_replace;
    int moe_layer_freq;
    float rope_theta;
    int rope_type;              // ROPE_*
    float rope_factor;          // YaRN s
    int rope_orig_max_pos;      // YaRN L0
    float rope_beta_fast;
    float rope_beta_slow;
    float rope_mscale;
    float rope_mscale_all_dim;
    float rms_norm_eps;
    int max_position_embeddings;
    int bos_token_id;           // -1 = none
    int eos_token_id;           // -1 = none
    int n_mtp_layers;
    int n_tokens;               // real tokenizer size; ids >= n_tokens are padding
    uint32_t tokenizer_hash_lo;
    uint32_t tokenizer_hash_hi;
} Config;

static int32_t word_i32(const uint8_t *p) { int32_t v; memcpy(&v, p, 4); return v; }
static uint32_t word_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t word_u64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static float word_f32(const uint8_t *p) { float v; memcpy(&v, p, 4); return v; }

static void read_config(Config *c, const uint8_t *w) {
    c->dim = word_i32(w + 4 * 0);
    c->n_layers = word_i32(w + 4 * 1);
    c->vocab_size = word_i32(w + 4 * 2);
    c->n_heads = word_i32(w + 4 * 3);
    c->q_lora_rank = word_i32(w + 4 * 4);
    c->kv_lora_rank = word_i32(w + 4 * 5);
    c->qk_nope_head_dim = word_i32(w + 4 * 6);
    c->qk_rope_head_dim = word_i32(w + 4 * 7);
    c->v_head_dim = word_i32(w + 4 * 8);
    c->intermediate_size = word_i32(w + 4 * 9);
    c->moe_intermediate_size = word_i32(w + 4 * 10);
    c->n_routed_experts = word_i32(w + 4 * 11);
    c->n_shared_experts = word_i32(w + 4 * 12);
    c->num_experts_per_tok = word_i32(w + 4 * 13);
    c->n_group = word_i32(w + 4 * 14);
    c->topk_group = word_i32(w + 4 * 15);
    c->topk_method = word_i32(w + 4 * 16);
    c->scoring_func = word_i32(w + 4 * 17);
    c->norm_topk_prob = word_i32(w + 4 * 18);
    c->routed_scaling_factor = word_f32(w + 4 * 19);
    c->first_k_dense_replace = word_i32(w + 4 * 20);
    c->moe_layer_freq = word_i32(w + 4 * 21);
    c->rope_theta = word_f32(w + 4 * 22);
    c->rope_type = word_i32(w + 4 * 23);
    c->rope_factor = word_f32(w + 4 * 24);
    c->rope_orig_max_pos = word_i32(w + 4 * 25);
    c->rope_beta_fast = word_f32(w + 4 * 26);
    c->rope_beta_slow = word_f32(w + 4 * 27);
    c->rope_mscale = word_f32(w + 4 * 28);
    c->rope_mscale_all_dim = word_f32(w + 4 * 29);
    c->rms_norm_eps = word_f32(w + 4 * 30);
    c->max_position_embeddings = word_i32(w + 4 * 31);
    c->bos_token_id = word_i32(w + 4 * 32);
    c->eos_token_id = word_i32(w + 4 * 33);
    c->n_mtp_layers = word_i32(w + 4 * 34);
    c->n_tokens = word_i32(w + 4 * 35);
    c->tokenizer_hash_lo = word_u32(w + 4 * 36);
    c->tokenizer_hash_hi = word_u32(w + 4 * 37);
}

static void check_range(const char *name, long long v, long long lo, long long hi) {
    if (v < lo || v > hi) die("model file: config %s = %lld, expected %lld..%lld", name, v, lo, hi);
}

static void check_float(const char *name, float v, float lo, float hi) {
    if (!isfinite(v) || v < lo || v > hi)
        die("model file: config %s = %g, expected a finite value in %g..%g", name, v, lo, hi);
}

// Layer l has a routed-expert FFN iff experts exist, it is past the leading
// dense layers and it is on the moe_layer_freq grid (spec §1.2, HF remote code).
static int is_moe_layer(const Config *c, int l) {
    return c->n_routed_experts > 0 && l >= c->first_k_dense_replace && l % c->moe_layer_freq == 0;
}

static void validate_config(const Config *c) {
    check_range("dim", c->dim, 1, MAX_DIM);
    check_range("n_layers", c->n_layers, 1, 1 << 16);
    check_range("vocab_size", c->vocab_size, 1, MAX_DIM);
    check_range("n_heads", c->n_heads, 1, 1 << 16);
    check_range("q_lora_rank", c->q_lora_rank, 0, MAX_DIM);
    check_range("kv_lora_rank", c->kv_lora_rank, 1, MAX_DIM);
    check_range("qk_nope_head_dim", c->qk_nope_head_dim, 1, 1 << 16);
    // RoPE rotates pairs, so the rope part must have an even width.
    check_range("qk_rope_head_dim", c->qk_rope_head_dim, 2, 1 << 16);
    if (c->qk_rope_head_dim % 2) die("model file: config qk_rope_head_dim = %d must be even", c->qk_rope_head_dim);
    check_range("v_head_dim", c->v_head_dim, 1, 1 << 16);
    check_range("n_routed_experts", c->n_routed_experts, 0, 1 << 16);
    check_range("first_k_dense_replace", c->first_k_dense_replace, 0, INT32_MAX);
    check_range("moe_layer_freq", c->moe_layer_freq, 1, INT32_MAX);
    int has_dense = 0, has_moe = 0;
    for (int l = 0; l < c->n_layers; l++) {
        if (is_moe_layer(c, l)) has_moe = 1; else has_dense = 1;
    }
    check_range("intermediate_size", c->intermediate_size, has_dense ? 1 : 0, MAX_DIM);
    // Checked even without MoE layers, because buffer sizes are derived from them.
    check_range("moe_intermediate_size", c->moe_intermediate_size, 0, MAX_DIM);
    check_range("n_shared_experts", c->n_shared_experts, 0, 1 << 10);
    check_range("num_experts_per_tok", c->num_experts_per_tok, 0, 1 << 16);
    check_range("n_group", c->n_group, 0, 1 << 16);
    if ((long long)c->n_shared_experts * c->moe_intermediate_size > MAX_DIM)
        die("model file: config n_shared_experts x moe_intermediate_size is too large");
    if (has_moe) {
        int E = c->n_routed_experts;
        check_range("moe_intermediate_size", c->moe_intermediate_size, 1, MAX_DIM);
        check_range("n_shared_experts", c->n_shared_experts, 0, 1 << 10);
        check_range("num_experts_per_tok", c->num_experts_per_tok, 1, E);
        check_range("n_group", c->n_group, 1, E);
        if (E % c->n_group) die("model file: config n_group = %d does not divide n_routed_experts = %d", c->n_group, E);
        check_range("topk_group", c->topk_group, 1, c->n_group);
        check_range("topk_method", c->topk_method, TOPK_GREEDY, TOPK_NOAUX_TC);
        check_range("scoring_func", c->scoring_func, SCORE_SOFTMAX, SCORE_SIGMOID);
        check_range("norm_topk_prob", c->norm_topk_prob, 0, 1);
        check_float("routed_scaling_factor", c->routed_scaling_factor, 0.0f, 1e6f);
        int group_size = E / c->n_group;
        // The kept groups must hold at least K experts, or top-K would have to
        // pick masked (-inf) experts.
        if (c->topk_method != TOPK_GREEDY && (long long)c->topk_group * group_size < c->num_experts_per_tok)
            die("model file: config topk_group %d x group size %d < num_experts_per_tok %d",
                c->topk_group, group_size, c->num_experts_per_tok);
        // noaux_tc scores a group by the sum of its two best experts.
        if (c->topk_method == TOPK_NOAUX_TC && c->n_group > 1 && group_size < 2)
            die("model file: config noaux_tc needs >= 2 experts per group (got %d)", group_size);
    }
    check_float("rope_theta", c->rope_theta, 1.0001f, 1e30f);
    check_range("rope_type", c->rope_type, ROPE_NONE, ROPE_YARN);
    if (c->rope_type == ROPE_YARN) {
        check_float("rope_factor", c->rope_factor, 1e-6f, 1e6f);
        check_range("rope_original_max_position_embeddings", c->rope_orig_max_pos, 1, INT32_MAX);
        check_float("rope_beta_fast", c->rope_beta_fast, 1e-6f, 1e6f);
        check_float("rope_beta_slow", c->rope_beta_slow, 1e-6f, 1e6f);
        check_float("rope_mscale", c->rope_mscale, -1e3f, 1e3f);
        check_float("rope_mscale_all_dim", c->rope_mscale_all_dim, -1e3f, 1e3f);
    }
    check_float("rms_norm_eps", c->rms_norm_eps, 1e-30f, 1.0f);
    check_range("max_position_embeddings", c->max_position_embeddings, 1, INT32_MAX);
    check_range("bos_token_id", c->bos_token_id, -1, c->vocab_size - 1);
    check_range("eos_token_id", c->eos_token_id, -1, c->vocab_size - 1);
    if (c->n_mtp_layers != 0) die("model file: config n_mtp_layers = %d; MTP layers are not supported yet", c->n_mtp_layers);
    check_range("n_tokens", c->n_tokens, 1, c->vocab_size);
    long long q_rows = (long long)c->n_heads * (c->qk_nope_head_dim + c->qk_rope_head_dim);
    long long kv_rows = (long long)c->n_heads * (c->qk_nope_head_dim + c->v_head_dim);
    long long o_cols = (long long)c->n_heads * c->v_head_dim;
    if (q_rows > MAX_DIM || kv_rows > MAX_DIM || o_cols > MAX_DIM || (long long)c->kv_lora_rank + c->qk_rope_head_dim > MAX_DIM)
        die("model file: config attention shapes are too large");
}

// ----------------------------------------------------------------------------
// Weights
//
// A Tensor is a typed view into the mapped file. Matrices are [rows, cols]
// row-major in PyTorch's nn.Linear layout: y = W x with W [out, in].

typedef struct {
    const void *data;
    int type;   // TYPE_*
    int rows;   // shape[0] (1-D: the length)
    int cols;   // shape[1] (1-D: 1)
} Tensor;

typedef struct {
    Tensor gate;   // (hidden, D)
    Tensor up;     // (hidden, D)
    Tensor down;   // (D, hidden)
} MLPWeights;

typedef struct {
    const float *input_norm;     // (D) pre-attention RMSNorm
    Tensor q_proj;               // (H*(dn+dr), D) when rq == 0
    Tensor q_a_proj;             // (rq, D) when rq > 0
    const float *q_a_norm;       // (rq)
    Tensor q_b_proj;             // (H*(dn+dr), rq)
    Tensor kv_a_proj;            // (r+dr, D): latent rows then the shared k_pe rows
    const float *kv_a_norm;      // (r)
    Tensor kv_b_proj;            // (H*(dn+dv), r): per head [W_UK (dn rows); W_UV (dv rows)]
    Tensor o_proj;               // (D, H*dv)
    const float *post_norm;      // (D) pre-FFN RMSNorm
    int is_moe;
    MLPWeights mlp;              // dense FFN, hidden = I
    Tensor router;               // (E, D), always F32
    const float *router_bias;    // (E) e_score_correction_bias, noaux_tc only
    MLPWeights *experts;         // (E) routed experts, hidden = Ie
    int has_shared;
    MLPWeights shared;           // fused shared experts, hidden = S*Ie
} LayerWeights;

typedef struct {
    Tensor embed;                // (V, D)
    LayerWeights *layers;        // (L)
    const float *final_norm;     // (D)
    Tensor lm_head;              // (V, D)
    const uint8_t *tokenizer;    // (tokenizer_bytes) embedded tokenizer blob, or NULL
    uint64_t tokenizer_bytes;
} Weights;

// Walks the tensor table in the canonical order of the format, checking each
// entry against what the config implies; no name lookup, so any mismatch is
// reported at the exact entry where it happens.
typedef struct {
    const uint8_t *file;
    uint64_t file_size;
    const uint8_t *table;        // (n_tensors, 128)
    uint32_t n_tensors;
    uint32_t next;               // index of the next entry to check
    uint64_t data_end;           // end of the previous tensor's data (or of the header)
} TableWalker;

// What an entry may hold: weight matrices take the export dtype (F32 or BF16,
// later Q8/Q4); norms, the router and its bias stay F32; the tokenizer is bytes.
enum { KIND_MATRIX, KIND_F32, KIND_U8 };

static int elem_bytes(int type) {
    switch (type) {
    case TYPE_F32: return 4;
    case TYPE_BF16: return 2;
    case TYPE_U8: return 1;
    default: return 0;
    }
}

static const char *type_name(uint32_t type) {
    switch (type) {
    case TYPE_F32: return "F32";
    case TYPE_BF16: return "BF16";
    case TYPE_Q8: return "Q8";
    case TYPE_Q4: return "Q4";
    case TYPE_U8: return "U8";
    default: return "unknown";
    }
}

// A tensor name from the file, made safe to print: it may be any bytes.
static const char *printable_name(char *buf, const uint8_t *name) {
    int i = 0;
    for (; i < TENSOR_NAME_BYTES - 1 && name[i]; i++) buf[i] = (name[i] >= 0x20 && name[i] < 0x7f) ? (char)name[i] : '?';
    buf[i] = 0;
    return buf;
}

// Checks one entry and returns a pointer to its data. rows x cols is the
// expected shape (cols = 0 for a 1-D tensor of length rows).
static const void *walk_entry(TableWalker *tw, const char *name, int kind, uint64_t rows, uint64_t cols,
                              uint32_t *type_out) {
    if (tw->next >= tw->n_tensors)
        die("model file: tensor table has %u entries, missing '%s'", tw->n_tensors, name);
    uint32_t idx = tw->next++;
    const uint8_t *e = tw->table + (uint64_t)idx * TENSOR_ENTRY_BYTES;
    if (!memchr(e, 0, TENSOR_NAME_BYTES)) die("model file: tensor %u: name is not NUL-terminated", idx);
    char shown[TENSOR_NAME_BYTES];
    if (strcmp((const char *)e, name) != 0)
        die("model file: tensor %u is '%s', expected '%s'", idx, printable_name(shown, e), name);
    uint32_t type = word_u32(e + 96), ndim = word_u32(e + 100);
    uint32_t r = word_u32(e + 104), c = word_u32(e + 108);
    uint64_t offset = word_u64(e + 112), nbytes = word_u64(e + 120);
    uint32_t want_ndim = cols ? 2 : 1;
    if (ndim != want_ndim) die("model file: tensor '%s' has ndim %u, expected %u", name, ndim, want_ndim);
    if (r != rows || c != (cols ? cols : 1))
        die("model file: tensor '%s' has shape [%u, %u], expected [%llu, %llu]", name, r, c,
            (unsigned long long)rows, (unsigned long long)(cols ? cols : 1));
    if (kind == KIND_U8) {
        if (type != TYPE_U8) die("model file: tensor '%s' has type %s, expected U8", name, type_name(type));
    } else if (kind == KIND_F32) {
        if (type != TYPE_F32) die("model file: tensor '%s' has type %s, expected F32", name, type_name(type));
    } else if (type != TYPE_F32 && type != TYPE_BF16) {
        if (type == TYPE_Q8 || type == TYPE_Q4)
            die("model file: tensor '%s' has type %s, which this build does not support yet", name, type_name(type));
        die("model file: tensor '%s' has type %s (%u), expected F32 or BF16", name, type_name(type), type);
    }
    // r and c are u32, so r*c < 2^64; check before multiplying by the element size.
    uint64_t elems = (uint64_t)r * (uint64_t)c;
    uint64_t esize = (uint64_t)elem_bytes((int)type);
    if (elems > UINT64_MAX / esize || elems * esize != nbytes)
        die("model file: tensor '%s' has nbytes %llu, expected %llu x %llu bytes", name,
            (unsigned long long)nbytes, (unsigned long long)elems, (unsigned long long)esize);
    if (offset % TENSOR_ALIGN) die("model file: tensor '%s' offset %llu is not %d-byte aligned", name,
                                   (unsigned long long)offset, TENSOR_ALIGN);
    if (offset < tw->data_end) die("model file: tensor '%s' overlaps the header or the previous tensor", name);
    if (offset > tw->file_size || nbytes > tw->file_size - offset)
        die("model file: tensor '%s' (offset %llu, %llu bytes) runs past the end of the file (%llu bytes)", name,
            (unsigned long long)offset, (unsigned long long)nbytes, (unsigned long long)tw->file_size);
    tw->data_end = offset + nbytes;
    *type_out = type;
    return tw->file + offset;
}

static Tensor walk_matrix(TableWalker *tw, const char *name, long long rows, long long cols) {
    uint32_t type;
    Tensor t;
    t.data = walk_entry(tw, name, KIND_MATRIX, (uint64_t)rows, (uint64_t)cols, &type);
    t.type = (int)type;
    t.rows = (int)rows;
    t.cols = (int)cols;
    return t;
}

static Tensor walk_f32_matrix(TableWalker *tw, const char *name, long long rows, long long cols) {
    uint32_t type;
    Tensor t;
    t.data = walk_entry(tw, name, KIND_F32, (uint64_t)rows, (uint64_t)cols, &type);
    t.type = TYPE_F32;
    t.rows = (int)rows;
    t.cols = (int)cols;
    return t;
}

static const float *walk_vector(TableWalker *tw, const char *name, long long len) {
    uint32_t type;
    return (const float *)walk_entry(tw, name, KIND_F32, (uint64_t)len, 0, &type);
}

static MLPWeights walk_mlp(TableWalker *tw, const char *prefix, long long hidden, long long dim) {
    char name[256];
    MLPWeights m;
    snprintf(name, sizeof name, "%sgate_proj.weight", prefix);
    m.gate = walk_matrix(tw, name, hidden, dim);
    snprintf(name, sizeof name, "%sup_proj.weight", prefix);
    m.up = walk_matrix(tw, name, hidden, dim);
    snprintf(name, sizeof name, "%sdown_proj.weight", prefix);
    m.down = walk_matrix(tw, name, dim, hidden);
    return m;
}

// FNV-1a, 64-bit: the checksum the format stores for the embedded tokenizer.
static uint64_t fnv1a64(const uint8_t *p, uint64_t n) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (uint64_t i = 0; i < n; i++) { h ^= p[i]; h *= 0x100000001b3ULL; }
    return h;
}

static const char *layer_name(char *buf, size_t size, const char *prefix, const char *suffix) {
    snprintf(buf, size, "%s%s", prefix, suffix);
    return buf;
}

static void walk_weights(Weights *w, const Config *c, TableWalker *tw) {
    long long D = c->dim, H = c->n_heads, r = c->kv_lora_rank, rq = c->q_lora_rank;
    long long dn = c->qk_nope_head_dim, dr = c->qk_rope_head_dim, dv = c->v_head_dim;
    long long E = c->n_routed_experts, Ie = c->moe_intermediate_size, S = c->n_shared_experts;
    char name[256], prefix[64];
    w->embed = walk_matrix(tw, "model.embed_tokens.weight", c->vocab_size, D);
    w->layers = xcalloc((size_t)c->n_layers, sizeof(LayerWeights));
    for (int l = 0; l < c->n_layers; l++) {
        LayerWeights *lw = &w->layers[l];
        snprintf(prefix, sizeof prefix, "model.layers.%d.", l);
        lw->input_norm = walk_vector(tw, layer_name(name, sizeof name, prefix, "input_layernorm.weight"), D);
        if (rq > 0) {
            lw->q_a_proj = walk_matrix(tw, layer_name(name, sizeof name, prefix, "self_attn.q_a_proj.weight"), rq, D);
            lw->q_a_norm = walk_vector(tw, layer_name(name, sizeof name, prefix, "self_attn.q_a_layernorm.weight"), rq);
            lw->q_b_proj = walk_matrix(tw, layer_name(name, sizeof name, prefix, "self_attn.q_b_proj.weight"), H * (dn + dr), rq);
        } else {
            lw->q_proj = walk_matrix(tw, layer_name(name, sizeof name, prefix, "self_attn.q_proj.weight"), H * (dn + dr), D);
        }
        lw->kv_a_proj = walk_matrix(tw, layer_name(name, sizeof name, prefix, "self_attn.kv_a_proj_with_mqa.weight"), r + dr, D);
        lw->kv_a_norm = walk_vector(tw, layer_name(name, sizeof name, prefix, "self_attn.kv_a_layernorm.weight"), r);
        lw->kv_b_proj = walk_matrix(tw, layer_name(name, sizeof name, prefix, "self_attn.kv_b_proj.weight"), H * (dn + dv), r);
        lw->o_proj = walk_matrix(tw, layer_name(name, sizeof name, prefix, "self_attn.o_proj.weight"), D, H * dv);
        lw->post_norm = walk_vector(tw, layer_name(name, sizeof name, prefix, "post_attention_layernorm.weight"), D);
        lw->is_moe = is_moe_layer(c, l);
        if (lw->is_moe) {
            lw->router = walk_f32_matrix(tw, layer_name(name, sizeof name, prefix, "mlp.gate.weight"), E, D);
            if (c->topk_method == TOPK_NOAUX_TC)
                lw->router_bias = walk_vector(tw, layer_name(name, sizeof name, prefix, "mlp.gate.e_score_correction_bias"), E);
            lw->experts = xcalloc((size_t)E, sizeof(MLPWeights));
            for (int e = 0; e < E; e++) {
                char eprefix[128];
                snprintf(eprefix, sizeof eprefix, "%smlp.experts.%d.", prefix, e);
                lw->experts[e] = walk_mlp(tw, eprefix, Ie, D);
            }
            if (S > 0) {
                lw->has_shared = 1;
                lw->shared = walk_mlp(tw, layer_name(name, sizeof name, prefix, "mlp.shared_experts."), S * Ie, D);
            }
        } else {
            lw->mlp = walk_mlp(tw, layer_name(name, sizeof name, prefix, "mlp."), c->intermediate_size, D);
        }
    }
    w->final_norm = walk_vector(tw, "model.norm.weight", D);
    w->lm_head = walk_matrix(tw, "lm_head.weight", c->vocab_size, D);
    uint64_t hash = ((uint64_t)c->tokenizer_hash_hi << 32) | c->tokenizer_hash_lo;
    if (hash != 0) {
        // The blob's length is only known from its own entry; read it first and
        // let walk_entry check it like any other 1-D tensor.
        if (tw->next >= tw->n_tensors) die("model file: tokenizer hash is set but the tokenizer tensor is missing");
        uint64_t len = word_u32(tw->table + (uint64_t)tw->next * TENSOR_ENTRY_BYTES + 104);
        uint32_t type;
        w->tokenizer = walk_entry(tw, "tokenizer", KIND_U8, len, 0, &type);
        w->tokenizer_bytes = len;
        if (fnv1a64(w->tokenizer, len) != hash) die("model file: embedded tokenizer does not match its hash");
    }
    if (tw->next != tw->n_tensors)
        die("model file: %u unexpected extra tensors in the table (the last expected one is '%s')",
            tw->n_tensors - tw->next, hash ? "tokenizer" : "lm_head.weight");
    if (tw->data_end != tw->file_size)
        die("model file: %llu trailing bytes after the last tensor", (unsigned long long)(tw->file_size - tw->data_end));
}

typedef struct {
    Config config;
    Weights weights;
    const uint8_t *file;   // (file_size) read-only mapping
    size_t file_size;
} Model;

static int host_is_little_endian(void) {
    uint16_t one = 1;
    uint8_t b;
    memcpy(&b, &one, 1);
    return b == 1;
}

static void load_model(Model *m, const char *path) {
    if (!host_is_little_endian()) die("this build assumes a little-endian host");
    int fd = open(path, O_RDONLY);
    if (fd < 0) die("cannot open model file %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) die("cannot stat %s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) die("%s is not a regular file", path);
    uint64_t size = (uint64_t)st.st_size;
    if (size < 16) die("%s is too small to be a model file (%llu bytes)", path, (unsigned long long)size);
    if (size > SIZE_MAX) die("%s is too large to map", path);
    void *map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) die("cannot mmap %s: %s", path, strerror(errno));
    close(fd);
    const uint8_t *f = map;
    m->file = f;
    m->file_size = (size_t)size;
    if (memcmp(f, "SEEK", 4) != 0) die("%s is not a seek.c model file (bad magic)", path);
    uint32_t version = word_u32(f + 4);
    if (version != SEEK_VERSION) die("%s has format version %u, this build reads version %d", path, version, SEEK_VERSION);
    uint32_t n_config = word_u32(f + 8);
    if (n_config != SEEK_N_CONFIG) die("model file: n_config = %u, version 1 has %d", n_config, SEEK_N_CONFIG);
    uint64_t table_at = 12 + 4ULL * n_config + 4;
    if (size < table_at) die("model file: truncated header");
    read_config(&m->config, f + 12);
    validate_config(&m->config);
    TableWalker tw;
    tw.file = f;
    tw.file_size = size;
    tw.n_tensors = word_u32(f + table_at - 4);
    tw.table = f + table_at;
    tw.next = 0;
    // n_tensors is u32, so this product cannot overflow a u64.
    tw.data_end = table_at + (uint64_t)tw.n_tensors * TENSOR_ENTRY_BYTES;
    if (tw.data_end > size) die("model file: tensor table (%u entries) runs past the end of the file", tw.n_tensors);
    walk_weights(&m->weights, &m->config, &tw);
}

static void free_model(Model *m) {
    for (int l = 0; l < m->config.n_layers; l++) free(m->weights.layers[l].experts);
    free(m->weights.layers);
    munmap((void *)m->file, m->file_size);
}

// ----------------------------------------------------------------------------
// Matmul
//
// Every weight-times-vector product goes through this family, which dispatches
// on the weight's element type so that the model code never sees storage
// formats. Inner loops keep 8 independent partial sums so gcc/clang vectorise
// them without -ffast-math (a single running sum would forbid reassociation).

static float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static float dot_f32(const float *w, const float *x, int n) {
    float acc[8] = {0};
    int j = 0;
    for (; j + 8 <= n; j += 8)
        for (int k = 0; k < 8; k++) acc[k] += w[j + k] * x[j + k];
    float s = 0.0f;
    for (; j < n; j++) s += w[j] * x[j];
    for (int k = 0; k < 8; k++) s += acc[k];
    return s;
}

static float dot_bf16(const uint16_t *w, const float *x, int n) {
    float acc[8] = {0};
    int j = 0;
    for (; j + 8 <= n; j += 8)
        for (int k = 0; k < 8; k++) acc[k] += bf16_to_f32(w[j + k]) * x[j + k];
    float s = 0.0f;
    for (; j < n; j++) s += bf16_to_f32(w[j]) * x[j];
    for (int k = 0; k < 8; k++) s += acc[k];
    return s;
}

// y (n) = W[row0 : row0+n, :] x, with x (W.cols)
static void matmul_rows(float *y, const Tensor *w, int row0, int n, const float *x) {
    size_t cols = (size_t)w->cols;
    if (w->type == TYPE_F32) {
        const float *base = (const float *)w->data + (size_t)row0 * cols;
        for (int i = 0; i < n; i++) y[i] = dot_f32(base + (size_t)i * cols, x, (int)cols);
    } else {
        const uint16_t *base = (const uint16_t *)w->data + (size_t)row0 * cols;
        for (int i = 0; i < n; i++) y[i] = dot_bf16(base + (size_t)i * cols, x, (int)cols);
    }
}

// y (W.rows) = W x
static void matmul(float *y, const Tensor *w, const float *x) {
    matmul_rows(y, w, 0, w->rows, x);
}

// y (W.cols) = W[row0 : row0+n, :]^T x, with x (n). Used to fold W_UK into the
// query (spec §3.7) without materialising a transposed copy.
static void matmul_t_rows(float *y, const Tensor *w, int row0, int n, const float *x) {
    int cols = w->cols;
    for (int j = 0; j < cols; j++) y[j] = 0.0f;
    if (w->type == TYPE_F32) {
        const float *base = (const float *)w->data + (size_t)row0 * cols;
        for (int i = 0; i < n; i++) {
            const float *row = base + (size_t)i * cols;
            float xi = x[i];
            for (int j = 0; j < cols; j++) y[j] += xi * row[j];
        }
    } else {
        const uint16_t *base = (const uint16_t *)w->data + (size_t)row0 * cols;
        for (int i = 0; i < n; i++) {
            const uint16_t *row = base + (size_t)i * cols;
            float xi = x[i];
            for (int j = 0; j < cols; j++) y[j] += xi * bf16_to_f32(row[j]);
        }
    }
}

// y (W.cols) = row `row` of W, as f32 (the embedding lookup).
static void tensor_row(float *y, const Tensor *w, int row) {
    size_t cols = (size_t)w->cols;
    if (w->type == TYPE_F32) {
        memcpy(y, (const float *)w->data + (size_t)row * cols, cols * sizeof(float));
    } else {
        const uint16_t *src = (const uint16_t *)w->data + (size_t)row * cols;
        for (size_t j = 0; j < cols; j++) y[j] = bf16_to_f32(src[j]);
    }
}

// ----------------------------------------------------------------------------
// Run state

typedef struct {
    int context;          // max positions held by the cache
    float *x;             // (D) residual stream
    float *xn;            // (D) normalised residual, input of a block
    float *block_out;     // (D) output of attention or FFN before the residual add
    float *q_latent;      // (rq) compressed query c_Q
    float *q;             // (H, dn+dr) per head [q_nope; q_pe]
    float *kv_a;          // (r+dr) [c_KV raw; k_pe]
    float *q_absorbed;    // (H, r) W_UK^T q_nope per head
    float *scores;        // (context) attention scores of one head
    float *u;             // (r) attention-weighted latent of one head
    float *o;             // (H, dv) per-head attention output, input of o_proj
    float *ffn_hidden;    // (max(I, Ie, S*Ie)) silu(gate) * up
    float *ffn_up;        // (max(I, Ie, S*Ie)) up projection
    float *expert_out;    // (D) output of one expert
    float *router_logits; // (E)
    float *router_scores; // (E) s: softmax or sigmoid of the logits
    float *router_choice; // (E) scores used to choose experts (s + bias), -inf once masked
    float *group_scores;  // (n_group)
    int *group_kept;      // (n_group) 1 if the group survives the group limit
    int *topk_idx;        // (K) chosen experts
    float *topk_w;        // (K) their weights
    float *rope_cos;      // (dr/2) cos(p θ_i) * YaRN cos/sin multiplier
    float *rope_sin;      // (dr/2)
    float *logits;        // (V)
    float *kv_cache;      // (L, context, r+dr) normalised latent c_t and rotated k_pe_t
} RunState;

static void alloc_run_state(RunState *s, const Config *c, int context) {
    int hidden = c->intermediate_size;
    if (c->moe_intermediate_size > hidden) hidden = c->moe_intermediate_size;
    if (c->n_shared_experts * c->moe_intermediate_size > hidden) hidden = c->n_shared_experts * c->moe_intermediate_size;
    int E = c->n_routed_experts > 0 ? c->n_routed_experts : 1;
    int K = c->num_experts_per_tok > 0 ? c->num_experts_per_tok : 1;
    int G = c->n_group > 0 ? c->n_group : 1;
    size_t cache_row = (size_t)c->kv_lora_rank + (size_t)c->qk_rope_head_dim;
    s->context = context;
    s->x = xcalloc((size_t)c->dim, sizeof(float));
    s->xn = xcalloc((size_t)c->dim, sizeof(float));
    s->block_out = xcalloc((size_t)c->dim, sizeof(float));
    s->q_latent = xcalloc((size_t)(c->q_lora_rank > 0 ? c->q_lora_rank : 1), sizeof(float));
    s->q = xcalloc((size_t)c->n_heads * (size_t)(c->qk_nope_head_dim + c->qk_rope_head_dim), sizeof(float));
    s->kv_a = xcalloc(cache_row, sizeof(float));
    s->q_absorbed = xcalloc((size_t)c->n_heads * (size_t)c->kv_lora_rank, sizeof(float));
    s->scores = xcalloc((size_t)context, sizeof(float));
    s->u = xcalloc((size_t)c->kv_lora_rank, sizeof(float));
    s->o = xcalloc((size_t)c->n_heads * (size_t)c->v_head_dim, sizeof(float));
    s->ffn_hidden = xcalloc((size_t)hidden, sizeof(float));
    s->ffn_up = xcalloc((size_t)hidden, sizeof(float));
    s->expert_out = xcalloc((size_t)c->dim, sizeof(float));
    s->router_logits = xcalloc((size_t)E, sizeof(float));
    s->router_scores = xcalloc((size_t)E, sizeof(float));
    s->router_choice = xcalloc((size_t)E, sizeof(float));
    s->group_scores = xcalloc((size_t)G, sizeof(float));
    s->group_kept = xcalloc((size_t)G, sizeof(int));
    s->topk_idx = xcalloc((size_t)K, sizeof(int));
    s->topk_w = xcalloc((size_t)K, sizeof(float));
    s->rope_cos = xcalloc((size_t)c->qk_rope_head_dim / 2, sizeof(float));
    s->rope_sin = xcalloc((size_t)c->qk_rope_head_dim / 2, sizeof(float));
    s->logits = xcalloc((size_t)c->vocab_size, sizeof(float));
    if ((double)c->n_layers * context * (double)cache_row * sizeof(float) > (double)SIZE_MAX / 2)
        die("the latent cache for %d positions does not fit in memory; lower -c", context);
    s->kv_cache = xcalloc((size_t)c->n_layers * (size_t)context * cache_row, sizeof(float));
}

static void free_run_state(RunState *s) {
    free(s->x); free(s->xn); free(s->block_out); free(s->q_latent); free(s->q); free(s->kv_a);
    free(s->q_absorbed); free(s->scores); free(s->u); free(s->o); free(s->ffn_hidden); free(s->ffn_up);
    free(s->expert_out); free(s->router_logits); free(s->router_scores); free(s->router_choice);
    free(s->group_scores); free(s->group_kept); free(s->topk_idx); free(s->topk_w); free(s->rope_cos); free(s->rope_sin);
    free(s->logits); free(s->kv_cache);
}

// ----------------------------------------------------------------------------
// Blocks: rmsnorm, rope, mla_attention, moe

// out = w ⊙ x / sqrt(mean(x²) + eps), all in fp32 (spec §3.1). out may alias x.
static void rmsnorm(float *out, const float *x, const float *w, int n, float eps) {
    float ss = 0.0f;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    float inv = 1.0f / sqrtf(ss / (float)n + eps);
    for (int i = 0; i < n; i++) out[i] = w[i] * (x[i] * inv);
}

static void softmax(float *x, int n) {
    float max = x[0];
    for (int i = 1; i < n; i++) if (x[i] > max) max = x[i];
    float sum = 0.0f;
    for (int i = 0; i < n; i++) { x[i] = expf(x[i] - max); sum += x[i]; }
    for (int i = 0; i < n; i++) x[i] /= sum;
}

static float silu(float z) { return z / (1.0f + expf(-z)); }

// YaRN's attention-temperature term: mscale(s, m) = 0.1 m ln s + 1 for s > 1.
static double yarn_mscale(double s, double m) {
    return s <= 1.0 ? 1.0 : 0.1 * m * log(s) + 1.0;
}

// The rotary tables that do not depend on position: the per-pair frequency
// θ_i (with the YaRN ramp, spec §3.5), the cos/sin multiplier and the softmax
// scale 1/sqrt(dn+dr) · mscale(s, mscale_all_dim)² (spec §3.6).
typedef struct {
    double *theta;        // (dr/2) rotation frequency of pair i
    float cs_mult;        // multiplier of cos and sin (1 for every DeepSeek config)
    float softmax_scale;
} Rope;

// Dimension index (in the d-wide rope vector) at which a frequency completes
// n_rot full turns over the original context L0 (YaRN, find_correction_dim).
static double yarn_correction_dim(double n_rot, int d, double base, double L0) {
    return (double)d * log(L0 / (n_rot * 2.0 * 3.14159265358979323846)) / (2.0 * log(base));
}

static void init_rope(Rope *rope, const Config *c) {
    int d = c->qk_rope_head_dim, half = d / 2;
    double base = c->rope_theta;
    rope->theta = xcalloc((size_t)half, sizeof(double));
    double scale = 1.0 / sqrt((double)(c->qk_nope_head_dim + c->qk_rope_head_dim));
    rope->cs_mult = 1.0f;
    for (int i = 0; i < half; i++) rope->theta[i] = pow(base, -2.0 * i / d);
    if (c->rope_type == ROPE_YARN) {
        double s = c->rope_factor, L0 = c->rope_orig_max_pos;
        double low = floor(yarn_correction_dim(c->rope_beta_fast, d, base, L0));
        double high = ceil(yarn_correction_dim(c->rope_beta_slow, d, base, L0));
        if (low < 0) low = 0;
        if (high > d - 1) high = d - 1;
        if (low == high) high += 0.001;  // avoid a zero-width ramp
        for (int i = 0; i < half; i++) {
            // ramp 0: pair keeps its frequency (extrapolation); ramp 1: divided by s (interpolation).
            double ramp = ((double)i - low) / (high - low);
            if (ramp < 0) ramp = 0;
            if (ramp > 1) ramp = 1;
            double f = rope->theta[i];
            rope->theta[i] = (f / s) * ramp + f * (1.0 - ramp);
        }
        rope->cs_mult = (float)(yarn_mscale(s, c->rope_mscale) / yarn_mscale(s, c->rope_mscale_all_dim));
        double m = yarn_mscale(s, c->rope_mscale_all_dim);
        scale *= m * m;
    }
    rope->softmax_scale = (float)scale;
}

static void rope_tables(RunState *s, const Rope *rope, int half, int pos) {
    for (int i = 0; i < half; i++) {
        double angle = (double)pos * rope->theta[i];
        s->rope_cos[i] = (float)cos(angle) * rope->cs_mult;
        s->rope_sin[i] = (float)sin(angle) * rope->cs_mult;
    }
}

// Rotates adjacent pairs (2i, 2i+1) of x (dr) in place: the complex product
// (x[2i] + i x[2i+1]) e^{i p θ_i} on the stored weights, no permutation (spec §3.4).
static void rope_rotate(float *x, const float *cos_t, const float *sin_t, int half) {
    for (int i = 0; i < half; i++) {
        float a = x[2 * i], b = x[2 * i + 1];
        x[2 * i] = a * cos_t[i] - b * sin_t[i];
        x[2 * i + 1] = a * sin_t[i] + b * cos_t[i];
    }
}

static float dot(const float *a, const float *b, int n) { return dot_f32(a, b, n); }

// Multi-head Latent Attention for one token at position pos (spec §3.3, §3.7).
// Input s->xn (D), output s->block_out (D). Only the normalised latent c (r)
// and the rotated shared k_pe (dr) are cached; keys and values are never
// expanded per position. Instead W_UK is folded into the query and W_UV is
// applied once to the attention-weighted latent.
static void mla_attention(const Config *c, const LayerWeights *lw, const Rope *rope, RunState *s,
                          int layer, int pos) {
    int H = c->n_heads, r = c->kv_lora_rank, dn = c->qk_nope_head_dim, dr = c->qk_rope_head_dim;
    int dv = c->v_head_dim, qk = dn + dr, half = dr / 2;
    size_t row = (size_t)r + (size_t)dr;
    float *layer_cache = s->kv_cache + (size_t)layer * (size_t)s->context * row;  // (context, r+dr)

    // Query: plain projection, or low-rank c_Q -> RMSNorm -> up-projection.
    if (c->q_lora_rank > 0) {
        matmul(s->q_latent, &lw->q_a_proj, s->xn);
        rmsnorm(s->q_latent, s->q_latent, lw->q_a_norm, c->q_lora_rank, 1e-6f);  // HF builds this norm with eps 1e-6
        matmul(s->q, &lw->q_b_proj, s->q_latent);
    } else {
        matmul(s->q, &lw->q_proj, s->xn);
    }

    // Key/value latent: [c_raw (r); k_pe (dr)]; only c is normalised, only k_pe rotated.
    matmul(s->kv_a, &lw->kv_a_proj, s->xn);
    float *slot = layer_cache + (size_t)pos * row;  // (r+dr)
    rmsnorm(slot, s->kv_a, lw->kv_a_norm, r, 1e-6f);
    memcpy(slot + r, s->kv_a + r, (size_t)dr * sizeof(float));
    rope_rotate(slot + r, s->rope_cos, s->rope_sin, half);

    for (int h = 0; h < H; h++) {
        float *q_nope = s->q + (size_t)h * qk;      // (dn)
        float *q_pe = q_nope + dn;                  // (dr)
        float *q_abs = s->q_absorbed + (size_t)h * r;  // (r)
        rope_rotate(q_pe, s->rope_cos, s->rope_sin, half);
        // q_nope · (W_UK c_t) = (W_UK^T q_nope) · c_t
        matmul_t_rows(q_abs, &lw->kv_b_proj, h * (dn + dv), dn, q_nope);

        for (int t = 0; t <= pos; t++) {
            const float *ct = layer_cache + (size_t)t * row;
            s->scores[t] = rope->softmax_scale * (dot(q_abs, ct, r) + dot(q_pe, ct + r, dr));
        }
        softmax(s->scores, pos + 1);

        // Σ_t p_t (W_UV c_t) = W_UV (Σ_t p_t c_t)
        for (int i = 0; i < r; i++) s->u[i] = 0.0f;
        for (int t = 0; t <= pos; t++) {
            const float *ct = layer_cache + (size_t)t * row;
            float p = s->scores[t];
            for (int i = 0; i < r; i++) s->u[i] += p * ct[i];
        }
        matmul_rows(s->o + (size_t)h * dv, &lw->kv_b_proj, h * (dn + dv) + dn, dv, s->u);
    }
    matmul(s->block_out, &lw->o_proj, s->o);
}

// SwiGLU MLP (spec §4.1): out (D) = W_down (silu(W_gate x) ⊙ W_up x).
static void mlp(float *out, const MLPWeights *m, const float *x, RunState *s) {
    int hidden = m->gate.rows;
    matmul(s->ffn_hidden, &m->gate, x);
    matmul(s->ffn_up, &m->up, x);
    for (int i = 0; i < hidden; i++) s->ffn_hidden[i] = silu(s->ffn_hidden[i]) * s->ffn_up[i];
    matmul(out, &m->down, s->ffn_hidden);
}

// Index of the largest of x[0..n), lowest index on ties; -1 if all are -inf.
static int argmax_finite(const float *x, int n) {
    int best = -1;
    for (int i = 0; i < n; i++)
        if (x[i] != -INFINITY && (best < 0 || x[i] > x[best])) best = i;
    return best;
}

// Score of one expert group: max (group_limited_greedy, DeepSeek-V2) or the sum
// of the two largest biased scores (noaux_tc, DeepSeek-V3; spec §8.8).
static float group_score(const float *choice, int size, int method) {
    if (method == TOPK_GROUP_LIMITED_GREEDY) {
        float m = choice[0];
        for (int i = 1; i < size; i++) if (choice[i] > m) m = choice[i];
        return m;
    }
    float a = -INFINITY, b = -INFINITY;  // a >= b: the two largest
    for (int i = 0; i < size; i++) {
        if (choice[i] > a) { b = a; a = choice[i]; }
        else if (choice[i] > b) b = choice[i];
    }
    return a + b;
}

// Router (spec §4.2): fills s->topk_idx / s->topk_w (K) from the normalised
// input s->xn. The router runs in fp32. Scores s come from softmax or
// sigmoid; experts are chosen from s (+ bias for noaux_tc) inside the
// best topk_group groups, but weighted by the unbiased s.
static void route(const Config *c, const LayerWeights *lw, RunState *s) {
    int E = c->n_routed_experts, K = c->num_experts_per_tok, G = c->n_group;
    float *scores = s->router_scores, *choice = s->router_choice;  // (E), (E)
    matmul(s->router_logits, &lw->router, s->xn);
    for (int e = 0; e < E; e++) scores[e] = s->router_logits[e];
    if (c->scoring_func == SCORE_SOFTMAX) softmax(scores, E);
    else for (int e = 0; e < E; e++) scores[e] = 1.0f / (1.0f + expf(-scores[e]));

    for (int e = 0; e < E; e++) choice[e] = scores[e];
    if (c->topk_method == TOPK_NOAUX_TC)  // the bias only selects (V3 auxiliary-loss-free balancing)
        for (int e = 0; e < E; e++) choice[e] += lw->router_bias[e];

    if (c->topk_method != TOPK_GREEDY && G > 1) {
        int size = E / G;
        for (int g = 0; g < G; g++) s->group_scores[g] = group_score(choice + g * size, size, c->topk_method);
        // Keep the topk_group best groups; experts of the others become -inf
        // (not 0: a kept candidate may be negative; spec §8.9).
        for (int g = 0; g < G; g++) s->group_kept[g] = 0;
        for (int k = 0; k < c->topk_group; k++) {
            int best = argmax_finite(s->group_scores, G);
            if (best < 0) break;
            s->group_kept[best] = 1;
            s->group_scores[best] = -INFINITY;
        }
        for (int g = 0; g < G; g++)
            if (!s->group_kept[g])
                for (int i = 0; i < size; i++) choice[g * size + i] = -INFINITY;
    }

    float sum = 0.0f;
    for (int k = 0; k < K; k++) {
        int e = argmax_finite(choice, E);
        if (e < 0) die("router: fewer than %d selectable experts (non-finite router scores)", K);
        choice[e] = -INFINITY;
        s->topk_idx[k] = e;
        s->topk_w[k] = scores[e];
        sum += scores[e];
    }
    for (int k = 0; k < K; k++) {
        if (c->norm_topk_prob && K > 1) s->topk_w[k] /= sum + 1e-20f;
        s->topk_w[k] *= c->routed_scaling_factor;
    }
}

// DeepSeekMoE layer: weighted routed experts plus the always-on shared
// experts, which routed_scaling_factor does not touch. Input s->xn (D),
// output s->block_out (D).
static void moe(const Config *c, const LayerWeights *lw, RunState *s) {
    int D = c->dim;
    route(c, lw, s);
    for (int i = 0; i < D; i++) s->block_out[i] = 0.0f;
    for (int k = 0; k < c->num_experts_per_tok; k++) {
        mlp(s->expert_out, &lw->experts[s->topk_idx[k]], s->xn, s);
        float w = s->topk_w[k];
        for (int i = 0; i < D; i++) s->block_out[i] += w * s->expert_out[i];
    }
    if (lw->has_shared) {
        mlp(s->expert_out, &lw->shared, s->xn, s);
        for (int i = 0; i < D; i++) s->block_out[i] += s->expert_out[i];
    }
}

// ----------------------------------------------------------------------------
// Forward

// Runs one token at position pos through the model, appending its latent to
// the cache, and returns the logits (V) over the whole vocab_size.
static float *forward(const Model *m, const Rope *rope, RunState *s, int token, int pos) {
    const Config *c = &m->config;
    const Weights *w = &m->weights;
    int D = c->dim;
    tensor_row(s->x, &w->embed, token);
    rope_tables(s, rope, c->qk_rope_head_dim / 2, pos);
    for (int l = 0; l < c->n_layers; l++) {
        const LayerWeights *lw = &w->layers[l];
        rmsnorm(s->xn, s->x, lw->input_norm, D, c->rms_norm_eps);
        mla_attention(c, lw, rope, s, l, pos);
        for (int i = 0; i < D; i++) s->x[i] += s->block_out[i];
        rmsnorm(s->xn, s->x, lw->post_norm, D, c->rms_norm_eps);
        if (lw->is_moe) moe(c, lw, s);
        else mlp(s->block_out, &lw->mlp, s->xn, s);
        for (int i = 0; i < D; i++) s->x[i] += s->block_out[i];
    }
    rmsnorm(s->x, s->x, w->final_norm, D, c->rms_norm_eps);
    matmul(s->logits, &w->lm_head, s->x);
    return s->logits;
}

// ----------------------------------------------------------------------------
// Tokenizer

// ----------------------------------------------------------------------------
// Sampler

typedef struct {
    float prob;
    int index;
} ProbIndex;

typedef struct {
    int n;                  // only ids < n (the tokenizer size) are ever sampled; the rest is padding
    float temperature;      // 0 = greedy
    float topp;             // nucleus mass; <= 0 or >= 1 disables it
    int topk;               // 0 disables it
    uint64_t rng_state;
    ProbIndex *candidates;  // (n)
} Sampler;

static void init_sampler(Sampler *sp, int n, float temperature, float topp, int topk, uint64_t seed) {
    sp->n = n;
    sp->temperature = temperature;
    sp->topp = topp;
    sp->topk = topk;
    sp->rng_state = seed ? seed : 0x9e3779b97f4a7c15ULL;
    sp->candidates = xcalloc((size_t)n, sizeof(ProbIndex));
}

// xorshift64*: small, fast and reproducible for a given seed.
static uint32_t random_u32(uint64_t *state) {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return (uint32_t)((*state * 0x2545F4914F6CDD1DULL) >> 32);
}

static float random_f32(uint64_t *state) {  // in [0, 1)
    return (float)(random_u32(state) >> 8) / 16777216.0f;
}

static int sample_argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++) if (x[i] > x[best]) best = i;
    return best;
}

static int compare_prob_desc(const void *a, const void *b) {
    const ProbIndex *x = a, *y = b;
    if (x->prob != y->prob) return x->prob > y->prob ? -1 : 1;
    return x->index - y->index;
}

// Draws an id from probs (n) after keeping only the top-k ids and then the
// smallest prefix whose mass reaches top-p.
static int sample_filtered(Sampler *sp, const float *probs, float coin) {
    int n = sp->n, kept = 0;
    for (int i = 0; i < n; i++) {
        sp->candidates[kept].prob = probs[i];
        sp->candidates[kept].index = i;
        kept++;
    }
    qsort(sp->candidates, (size_t)kept, sizeof(ProbIndex), compare_prob_desc);
    if (sp->topk > 0 && sp->topk < kept) kept = sp->topk;
    float mass = 0.0f;
    for (int i = 0; i < kept; i++) mass += sp->candidates[i].prob;
    if (sp->topp > 0.0f && sp->topp < 1.0f) {
        float cum = 0.0f;
        for (int i = 0; i < kept; i++) {
            cum += sp->candidates[i].prob;
            if (cum >= sp->topp * mass) { kept = i + 1; break; }
        }
        mass = cum;
    }
    float r = coin * mass, cum = 0.0f;
    for (int i = 0; i < kept; i++) {
        cum += sp->candidates[i].prob;
        if (r < cum) return sp->candidates[i].index;
    }
    return sp->candidates[kept - 1].index;  // rounding
}

static int sample(Sampler *sp, float *logits) {
    int n = sp->n;
    if (sp->temperature == 0.0f) return sample_argmax(logits, n);
    for (int i = 0; i < n; i++) logits[i] /= sp->temperature;
    softmax(logits, n);
    float coin = random_f32(&sp->rng_state);
    if (sp->topk > 0 || (sp->topp > 0.0f && sp->topp < 1.0f)) return sample_filtered(sp, logits, coin);
    float cum = 0.0f;
    for (int i = 0; i < n; i++) {
        cum += logits[i];
        if (coin < cum) return i;
    }
    return n - 1;  // rounding
}

// ----------------------------------------------------------------------------
// Generate and chat

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

// Teacher forcing: feeds every token and writes the logits after each one,
// (T, V) float32 little-endian; the interface the tests compare against.
static void dump_logits(const Model *m, const Rope *rope, RunState *s, const int *tokens, int n, const char *path) {
    FILE *f = fopen(path, "wb");
    if (!f) die("cannot open %s for writing: %s", path, strerror(errno));
    for (int t = 0; t < n; t++) {
        float *logits = forward(m, rope, s, tokens[t], t);
        if (fwrite(logits, sizeof(float), (size_t)m->config.vocab_size, f) != (size_t)m->config.vocab_size)
            die("write to %s failed: %s", path, strerror(errno));
    }
    if (fclose(f) != 0) die("write to %s failed: %s", path, strerror(errno));
}

// Feeds the prompt, then samples up to `steps` new tokens, streaming each id
// to stdout as soon as it exists. Stops early at the end-of-sequence token
// (printed as the last id, so callers can tell why generation ended) or when
// the cache is full.
static void generate(const Model *m, const Rope *rope, RunState *s, Sampler *sp, const int *prompt, int n_prompt,
                     int steps) {
    const Config *c = &m->config;
    int pos = 0, generated = 0, decoded = 0;  // decoded: forward passes on sampled tokens
    double t0 = now_seconds();
    float *logits = NULL;
    for (; pos < n_prompt; pos++) logits = forward(m, rope, s, prompt[pos], pos);
    double t1 = now_seconds();
    while (generated < steps) {
        int token = sample(sp, logits);
        printf(generated ? " %d" : "%d", token);
        fflush(stdout);
        generated++;
        if (token == c->eos_token_id || generated == steps) break;
        if (pos >= s->context) {
            fprintf(stderr, "\nreached the context limit of %d tokens; stopping\n", s->context);
            break;
        }
        logits = forward(m, rope, s, token, pos);
        pos++;
        decoded++;
    }
    printf("\n");
    fflush(stdout);
    double t2 = now_seconds();
    fprintf(stderr, "prompt: %d tokens, %.2f tok/s; generated: %d tokens, %.2f tok/s\n", n_prompt,
            n_prompt / (t1 - t0 > 0 ? t1 - t0 : 1e-9), generated, decoded / (t2 - t1 > 0 ? t2 - t1 : 1e-9));
}

// ----------------------------------------------------------------------------
// Benchmark

// ----------------------------------------------------------------------------
// main

static void usage(void) {
    fprintf(stderr,
            "usage: run model.bin [options]\n"
            "  -i <string>        text prompt (needs the tokenizer)\n"
            "  --tokens <a,b,c>   prompt as token ids (no BOS is added)\n"
            "  -n <int>           number of tokens to generate (default 256)\n"
            "  -t <float>         temperature, 0 = greedy (default 1.0)\n"
            "  -p <float>         top-p in [0,1], 0 or 1 disables (default 0.9)\n"
            "  -k <int>           top-k, 0 disables (default 0)\n"
            "  -s <int>           random seed, 0 = time-based (default 0)\n"
            "  -c <int>           context length cap (default 4096; also capped by the model)\n"
            "  --print-ids        print generated ids (the default until the tokenizer lands)\n"
            "  --dump-logits <f>  teacher-force --tokens and write (T, vocab) float32 logits to f\n");
    exit(1);
}

static long long parse_int(const char *flag, const char *v) {
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end) die("%s expects an integer, got '%s'", flag, v);
    return x;
}

static float parse_float(const char *flag, const char *v) {
    char *end;
    errno = 0;
    float x = strtof(v, &end);
    if (errno || end == v || *end || !isfinite(x)) die("%s expects a number, got '%s'", flag, v);
    return x;
}

// "5,17,3" -> ids; each must be a row of the embedding.
static int *parse_tokens(const char *v, int vocab_size, int *n_out) {
    int cap = 1;
    for (const char *p = v; *p; p++) if (*p == ',') cap++;
    int *ids = xcalloc((size_t)cap, sizeof(int));
    int n = 0;
    const char *p = v;
    while (1) {
        char *end;
        errno = 0;
        long long x = strtoll(p, &end, 10);
        if (errno || end == p || (*end && *end != ',')) die("--tokens expects comma-separated integers, got '%s'", v);
        if (x < 0 || x >= vocab_size) die("--tokens: id %lld is outside the vocabulary (0..%d)", x, vocab_size - 1);
        ids[n++] = (int)x;
        if (!*end) break;
        p = end + 1;
    }
    *n_out = n;
    return ids;
}

int main(int argc, char **argv) {
    const char *model_path = NULL, *prompt = NULL, *tokens_arg = NULL, *dump_path = NULL;
    long long steps = 256, topk = 0, seed = 0, context = 4096;
    float temperature = 1.0f, topp = 0.9f;
    int print_ids = 0;
    int i = 1;
    if (argc < 2) usage();
    if (argv[1][0] != '-') model_path = argv[i++];
    for (; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) usage();
        if (!strcmp(a, "--print-ids")) { print_ids = 1; continue; }
        int takes_value = !strcmp(a, "-n") || !strcmp(a, "-t") || !strcmp(a, "-p") || !strcmp(a, "-k") ||
                          !strcmp(a, "-s") || !strcmp(a, "-c") || !strcmp(a, "-i") || !strcmp(a, "--tokens") ||
                          !strcmp(a, "--dump-logits") || !strcmp(a, "--context");
        if (!takes_value) die("unknown option '%s' (run with -h for usage)", a);
        if (i + 1 >= argc) die("option %s needs a value", a);
        const char *v = argv[++i];
        if (!strcmp(a, "-n")) steps = parse_int(a, v);
        else if (!strcmp(a, "-t")) temperature = parse_float(a, v);
        else if (!strcmp(a, "-p")) topp = parse_float(a, v);
        else if (!strcmp(a, "-k")) topk = parse_int(a, v);
        else if (!strcmp(a, "-s")) seed = parse_int(a, v);
        else if (!strcmp(a, "-c") || !strcmp(a, "--context")) context = parse_int(a, v);
        else if (!strcmp(a, "-i")) prompt = v;
        else if (!strcmp(a, "--tokens")) tokens_arg = v;
        else if (!strcmp(a, "--dump-logits")) dump_path = v;
    }
    if (!model_path) die("no model file given (usage: run model.bin [options])");
    if (steps < 0 || steps > INT32_MAX) die("-n must be in 0..%d, got %lld", INT32_MAX, steps);
    if (temperature < 0.0f) die("-t must be >= 0, got %g", temperature);
    if (topp < 0.0f || topp > 1.0f) die("-p must be in [0, 1], got %g", topp);
    if (topk < 0 || topk > INT32_MAX) die("-k must be in 0..%d, got %lld", INT32_MAX, topk);
    if (seed < 0) die("-s must be >= 0, got %lld", seed);
    if (context < 1 || context > INT32_MAX) die("-c must be in 1..%d, got %lld", INT32_MAX, context);
    if (prompt && tokens_arg) die("give either -i or --tokens, not both");
    if (prompt) die("text prompts (-i) need the tokenizer, which is not built in yet; pass ids with --tokens");
    if (dump_path && !tokens_arg) die("--dump-logits needs --tokens");
    (void)print_ids;  // ids are the only output format until the tokenizer lands

    Model model;
    load_model(&model, model_path);
    const Config *c = &model.config;
    if (context > c->max_position_embeddings) context = c->max_position_embeddings;

    int n_prompt = 0;
    int *prompt_ids = NULL;
    if (tokens_arg) {
        prompt_ids = parse_tokens(tokens_arg, c->vocab_size, &n_prompt);
    } else {
        if (c->bos_token_id < 0) die("no prompt given and the model has no BOS token; pass --tokens");
        prompt_ids = xcalloc(1, sizeof(int));
        prompt_ids[0] = c->bos_token_id;
        n_prompt = 1;
    }
    if (n_prompt > context)
        die("prompt has %d tokens but the context holds only %lld (raise -c up to %d)", n_prompt, context,
            c->max_position_embeddings);

    Rope rope;
    init_rope(&rope, c);
    RunState state;
    alloc_run_state(&state, c, (int)context);
    if (dump_path) {
        dump_logits(&model, &rope, &state, prompt_ids, n_prompt, dump_path);
    } else {
        uint64_t s = (uint64_t)seed;
        if (s == 0) s = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(now_seconds() * 1e9);
        Sampler sampler;
        init_sampler(&sampler, c->n_tokens, temperature, topp, (int)topk, s);
        generate(&model, &rope, &state, &sampler, prompt_ids, n_prompt, (int)steps);
        free(sampler.candidates);
    }
    free(prompt_ids);
    free(rope.theta);
    free_run_state(&state);
    free_model(&model);
    return 0;
}
