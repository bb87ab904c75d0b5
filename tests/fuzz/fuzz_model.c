// libFuzzer harness for the model-file loader: the input is a whole model file.
//
// parse_model() validates the header, the config and every tensor-table entry. An input it accepts
// must then be safe to run: one short teacher-forced pass (and the MTP module, if any) and a sampled token, and the embedded
// tokenizer (if any) is loaded, all under ASan/UBSan, so a check the loader misses shows up as a
// bad read here. The input buffer is libFuzzer's own (exact size), so reading one byte past the
// "file" is caught, unlike with an mmap rounded up to a page.
//
// run.c is compiled in with SEEK_FUZZ: die() then longjmps back here instead of exiting. Memory
// that the error paths never free (as the CLI exits right away) would look like leaks, so the
// harness runs with -detect_leaks=0; valgrind checks leaks on the normal paths (tests/test_bad_input.py).
//
// Build and run: make fuzz-smoke (or see tests/fuzz/README.md).
#define main seek_main
#include "../../run.c"
#undef main

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

// The error paths' garbage is not a finding (see above), also not at exit.
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "detect_leaks=0"; }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    // static: locals changed after setjmp are indeterminate once longjmp returns
    static Model m;
    static RunState s;
    static Sampler sp;
    static Tokenizer tok;
    jmp_buf on_error;
    memset(&m, 0, sizeof m);
    memset(&s, 0, sizeof s);
    memset(&sp, 0, sizeof sp);
    memset(&tok, 0, sizeof tok);
    fuzz_on_error = &on_error;
    if (setjmp(on_error) == 0) {
        parse_model(&m, data, size, "fuzz input");
        const Config *c = &m.config;
        int context = c->max_position_embeddings < 3 ? c->max_position_embeddings : 3;
        alloc_run_state(&s, c, context, 1, (int)(size & 1));  // either latent cache type
        sp = (Sampler){c->n_tokens, 1.0f, 0.9f, 0.05f, 3, 1.3f, 64, 42, xcalloc((size_t)c->n_tokens, sizeof(ProbIndex)),
                       xcalloc((size_t)c->n_tokens, sizeof(float))};
        float *logits = NULL;
        int fed[3];  // context <= 3
        for (int pos = 0; pos < context; pos++) logits = forward(&m, &s, fed[pos] = (pos * 7) % c->vocab_size, pos);
        if (c->n_mtp_layers) logits = mtp_forward(&m, &s, fed, 1, context - 1, 0);  // the MTP block on the last state
        int id = sample(&sp, logits, fed, context);
        if (id < 0 || id >= c->n_tokens) abort();  // sampled outside the real vocabulary
        if (m.weights.tokenizer) model_tokenizer(&tok, &m, NULL);
    }
    fuzz_on_error = NULL;
    free_tokenizer(&tok);
    free(sp.candidates);
    free(sp.probs);
    free_run_state(&s);
    free(m.rope.theta);
    if (m.weights.layers)
        for (int l = 0; l < m.config.n_layers + m.config.n_mtp_layers; l++) free(m.weights.layers[l].experts);
    free(m.weights.layers);
    return 0;
}
