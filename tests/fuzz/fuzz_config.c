// libFuzzer harness for config values: the input's first 160 bytes are the 40 config words, one byte
// picks the matrix type, and the rest fills the weights. The harness writes a model file whose tensor
// table is exactly what the config implies (the canonical order of the format), so that, unlike random
// mutations of whole files (fuzz_model.c), every combination of config values that passes
// validate_config() reaches the tensor walk, the run-state allocation and the forward pass: a config
// check that is missing shows up as a crash or a sanitizer report. Configs whose file would exceed
// 4 MB are skipped (their checks are tested by fuzz_model.c and tests/test_bad_input.py).
#define LLVMFuzzerTestOneInput fuzz_model_file
#include "fuzz_model.c"
#undef LLVMFuzzerTestOneInput

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { MAX_FILE = 4 << 20, MAX_TENSORS = 4096, V1_N_CONFIG = 40 };  // the harness writes format v1 files

typedef struct {
    char name[TENSOR_NAME_BYTES];
    uint32_t type, ndim, rows, cols;
    uint64_t offset, nbytes;
} Entry;

static Entry entries[MAX_TENSORS];

static uint64_t type_bytes(uint32_t type) { return type == TYPE_BF16 ? 2 : 4; }  // the F32 or BF16 this writes

static int n_entries;
static uint64_t data_end;

// Appends an entry; returns 0 once the file would be too big.
static int add(const char *name, uint32_t type, uint64_t rows, uint64_t cols) {
    if (n_entries == MAX_TENSORS || rows > MAX_FILE || cols > MAX_FILE) return 0;
    uint64_t nbytes = rows * (cols ? cols : 1) * type_bytes(type);
    Entry *e = &entries[n_entries++];
    snprintf(e->name, sizeof e->name, "%s", name);
    e->type = type;
    e->ndim = cols ? 2 : 1;
    e->rows = (uint32_t)rows;
    e->cols = cols ? (uint32_t)cols : 1;
    e->offset = (data_end + TENSOR_ALIGN - 1) / TENSOR_ALIGN * TENSOR_ALIGN;
    e->nbytes = nbytes;
    data_end = e->offset + nbytes;
    return data_end <= MAX_FILE;
}

static int add_mlp(const char *prefix, uint32_t type, uint64_t hidden, uint64_t dim) {
    char name[256];
    snprintf(name, sizeof name, "%sgate_proj.weight", prefix);
    if (!add(name, type, hidden, dim)) return 0;
    snprintf(name, sizeof name, "%sup_proj.weight", prefix);
    if (!add(name, type, hidden, dim)) return 0;
    snprintf(name, sizeof name, "%sdown_proj.weight", prefix);
    return add(name, type, dim, hidden);
}

// The table of the format's canonical tensor order for config c (walk_weights in run.c).
static int plan(const Config *c, uint32_t mt) {
    // Only sizes that validate_config() would accept can be planned; others go to parse_model as is.
    uint64_t D = (uint32_t)c->dim, H = (uint32_t)c->n_heads, r = (uint32_t)c->kv_lora_rank;
    uint64_t rq = (uint32_t)c->q_lora_rank, dn = (uint32_t)c->qk_nope_head_dim, dr = (uint32_t)c->qk_rope_head_dim;
    uint64_t dv = (uint32_t)c->v_head_dim, E = (uint32_t)c->n_routed_experts, Ie = (uint32_t)c->moe_intermediate_size;
    uint64_t S = (uint32_t)c->n_shared_experts, I = (uint32_t)c->intermediate_size, V = (uint32_t)c->vocab_size;
    if (c->n_layers < 0 || c->n_layers > 64 || E > 256 || S > 64 || H > 4096) return 0;
    if (D > 4096 || r > 4096 || rq > 4096 || dn > 4096 || dr > 4096 || dv > 4096 || Ie > 4096 || I > 4096 || V > 1 << 16)
        return 0;
    char name[256];
    if (!add("model.embed_tokens.weight", mt, V, D)) return 0;
    for (int l = 0; l < c->n_layers; l++) {
        char p[64];
        snprintf(p, sizeof p, "model.layers.%d.", l);
#define NAME(suffix) (snprintf(name, sizeof name, "%s%s", p, suffix), name)
        if (!add(NAME("input_layernorm.weight"), TYPE_F32, D, 0)) return 0;
        if (rq > 0) {
            if (!add(NAME("self_attn.q_a_proj.weight"), mt, rq, D) ||
                !add(NAME("self_attn.q_a_layernorm.weight"), TYPE_F32, rq, 0) ||
                !add(NAME("self_attn.q_b_proj.weight"), mt, H * (dn + dr), rq)) return 0;
        } else if (!add(NAME("self_attn.q_proj.weight"), mt, H * (dn + dr), D)) return 0;
        if (!add(NAME("self_attn.kv_a_proj_with_mqa.weight"), mt, r + dr, D) ||
            !add(NAME("self_attn.kv_a_layernorm.weight"), TYPE_F32, r, 0) ||
            !add(NAME("self_attn.kv_b_proj.weight"), mt, H * (dn + dv), r) ||
            !add(NAME("self_attn.o_proj.weight"), mt, D, H * dv) ||
            !add(NAME("post_attention_layernorm.weight"), TYPE_F32, D, 0)) return 0;
        if (c->moe_layer_freq > 0 && is_moe_layer(c, l)) {
            if (!add(NAME("mlp.gate.weight"), TYPE_F32, E, D)) return 0;
            if (c->topk_method == TOPK_NOAUX_TC && !add(NAME("mlp.gate.e_score_correction_bias"), TYPE_F32, E, 0)) return 0;
            for (uint64_t e = 0; e < E; e++) {
                char ep[128];
                snprintf(ep, sizeof ep, "%smlp.experts.%llu.", p, (unsigned long long)e);
                if (!add_mlp(ep, mt, Ie, D)) return 0;
            }
            if (S > 0 && !add_mlp(NAME("mlp.shared_experts."), mt, S * Ie, D)) return 0;
        } else if (!add_mlp(NAME("mlp."), mt, I, D)) return 0;
#undef NAME
    }
    return add("model.norm.weight", TYPE_F32, D, 0) && add("lm_head.weight", mt, V, D);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 4 * V1_N_CONFIG + 1) return 0;
    uint8_t words[4 * V1_N_CONFIG];
    memcpy(words, data, sizeof words);
    memset(words + 4 * 36, 0, 8);  // no embedded tokenizer (its hash is fuzz_model.c's business)
    Config c;
    read_config(&c, words, 1);
    uint32_t mt = data[4 * V1_N_CONFIG] & 1 ? TYPE_BF16 : TYPE_F32;
    const uint8_t *pool = data + 4 * V1_N_CONFIG + 1;
    size_t pool_n = size - 4 * V1_N_CONFIG - 1;
    n_entries = 0;
    data_end = 0;
    if (!plan(&c, mt)) return 0;
    uint64_t header = 12 + 4 * V1_N_CONFIG + 4 + (uint64_t)n_entries * TENSOR_ENTRY_BYTES;
    uint64_t base = (header + TENSOR_ALIGN - 1) / TENSOR_ALIGN * TENSOR_ALIGN;
    uint64_t file_size = base + data_end;
    if (file_size > MAX_FILE) return 0;
    uint8_t *f = calloc(1, (size_t)file_size);
    memcpy(f, "SEEK", 4);
    uint32_t u = 1, n = V1_N_CONFIG, nt = (uint32_t)n_entries;
    memcpy(f + 4, &u, 4);
    memcpy(f + 8, &n, 4);
    memcpy(f + 12, words, sizeof words);
    memcpy(f + 12 + 4 * V1_N_CONFIG, &nt, 4);
    size_t k = 0;
    for (int i = 0; i < n_entries; i++) {
        Entry *e = &entries[i];
        uint8_t *t = f + 12 + 4 * V1_N_CONFIG + 4 + (size_t)i * TENSOR_ENTRY_BYTES;
        uint64_t off = base + e->offset;
        memcpy(t, e->name, TENSOR_NAME_BYTES);
        memcpy(t + 96, &e->type, 4);
        memcpy(t + 100, &e->ndim, 4);
        memcpy(t + 104, &e->rows, 4);
        memcpy(t + 108, &e->cols, 4);
        memcpy(t + 112, &off, 8);
        memcpy(t + 120, &e->nbytes, 8);
        // Weights in [-2, 2) from the pool, so that accepted configs run to the end.
        for (uint64_t j = 0; j < e->nbytes / type_bytes(e->type); j++) {
            float v = pool_n ? ((float)pool[k++ % pool_n] - 128.0f) / 64.0f : 0.25f;
            if (e->type == TYPE_BF16) {
                uint32_t bits;
                memcpy(&bits, &v, 4);
                uint16_t h = (uint16_t)(bits >> 16);
                memcpy(f + off + 2 * j, &h, 2);
            } else {
                memcpy(f + off + 4 * j, &v, 4);
            }
        }
    }
    fuzz_model_file(f, (size_t)file_size);
    free(f);
    return 0;
}
