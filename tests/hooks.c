// Test hooks: run.c compiled in (as the fuzz harnesses do), so that tests/test_cli.py can call the
// sampler and the R1 history rewrite directly, on inputs it chose, without a model.
//
//   hooks sample < case     case: "n temperature top_p min_p top_k penalty last_n draws seed"
//                                 "logits..." (n or more values; ids >= n are padding, never drawn)
//                                 "history..." (token ids, possibly none)
//                           prints how often each id < n was drawn, on one line
//   hooks speculate < case  case: "n temperature top_p min_p top_k draws seed", then two lines of n logits: the
//                           target's (p) and the draft's (q). Per draw: d from the sampler's q, then speculate();
//                           prints how often each id came out, then how often d was kept
//   hooks r1 tokenizer.bin  stdin: the bytes of a reply; prints the ids r1_history gives for the reply
//                           after "<think>\n" (the ids of its text after the last </think>), then the
//                           number of ids it moves the reply's start back by (those of "<think>\n")
#define main seek_main
#include "../run.c"
#undef main

static int sample_case(void) {
    int n, top_k, last_n, draws, n_logits = 0, n_hist = 0;
    float temperature, top_p, min_p, penalty;
    unsigned long long seed;
    if (scanf("%d %f %f %f %d %f %d %d %llu", &n, &temperature, &top_p, &min_p, &top_k, &penalty, &last_n, &draws,
              &seed) != 9 || n < 1) die("hooks sample: bad parameter line");
    float logits[1024], work[1024];
    int history[1024];
    char line[65536];
    if (!fgets(line, sizeof line, stdin) || !fgets(line, sizeof line, stdin)) die("hooks sample: no logits line");
    for (char *p = line, *end; n_logits < 1024; p = end) {
        logits[n_logits] = strtof(p, &end);
        if (end == p) break;
        n_logits++;
    }
    if (fgets(line, sizeof line, stdin))
        for (char *p = line, *end; n_hist < 1024; p = end) {
            history[n_hist] = (int)strtol(p, &end, 10);
            if (end == p) break;
            n_hist++;
        }
    if (n_logits < n) die("hooks sample: %d logits for n = %d", n_logits, n);
    Sampler sp = {n, temperature, top_p, min_p, top_k, penalty, last_n, seed * 0x9E3779B97F4A7C15ULL,
                  xcalloc((size_t)n, sizeof(ProbIndex)), xcalloc((size_t)n, sizeof(float))};
    long long *count = xcalloc((size_t)n, sizeof(long long));
    for (int d = 0; d < draws; d++) {
        memcpy(work, logits, sizeof(float) * (size_t)n_logits);  // sample() penalises the logits in place
        count[sample(&sp, work, history, n_hist)]++;
    }
    for (int i = 0; i < n; i++) printf(i ? " %lld" : "%lld", count[i]);
    printf("\n");
    free(count);
    free(sp.candidates);
    free(sp.probs);
    return 0;
}

static void read_floats(float *x, int n, const char *what) {
    for (int i = 0; i < n; i++) if (scanf("%f", &x[i]) != 1) die("hooks speculate: %d %s logits expected", n, what);
}

static int speculate_case(void) {
    int n, top_k, draws;
    float temperature, top_p, min_p;
    unsigned long long seed;
    if (scanf("%d %f %f %f %d %d %llu", &n, &temperature, &top_p, &min_p, &top_k, &draws, &seed) != 7 || n < 1 || n > 1024)
        die("hooks speculate: bad parameter line");
    float p_logits[1024], q_logits[1024], p[1024], q[1024], residual[1024];
    read_floats(p_logits, n, "target");
    read_floats(q_logits, n, "draft");
    Sampler sp = {n, temperature, top_p, min_p, top_k, 1.0f, 0, seed * 0x9E3779B97F4A7C15ULL,
                  xcalloc((size_t)n, sizeof(ProbIndex)), NULL};
    sampler_probs(&sp, p_logits, NULL, 0, p);
    sampler_probs(&sp, q_logits, NULL, 0, q);
    long long *count = xcalloc((size_t)n, sizeof(long long)), kept = 0;
    for (int i = 0; i < draws; i++) {
        int d = draw(q, n, 1.0f, &sp.rng_state), t = speculate(p, q, d, n, &sp.rng_state, residual);
        count[t]++;
        kept += t == d;
    }
    for (int i = 0; i < n; i++) printf(i ? " %lld" : "%lld", count[i]);
    printf("\n%lld\n", kept);
    free(count);
    free(sp.candidates);
    return 0;
}

static int r1_case(const char *tokenizer_path) {
    Tokenizer tok;
    model_tokenizer(&tok, NULL, tokenizer_path);
    size_t n, n_bad;
    uint8_t *reply = read_file("-", &n, "reply");
    IdList ids = encode(&tok, reply, n, 0, &n_bad);  // the reply, as if the model had sampled these tokens
    int start = 100 + ids.n, *tokens = xcalloc((size_t)start, sizeof(int));
    memcpy(tokens + 100, ids.ids, (size_t)ids.n * sizeof(int));  // positions 0..99: the turns before it
    IdList kept = r1_history(&tok, tokens, 100, &start);
    for (int i = 0; i < kept.n; i++) printf(i ? " %d" : "%d", kept.ids[i]);
    printf("\n%d\n", 100 - start);
    free(kept.ids);
    free(ids.ids);
    free(tokens);
    free(reply);
    free_tokenizer(&tok);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 2 && !strcmp(argv[1], "sample")) return sample_case();
    if (argc == 2 && !strcmp(argv[1], "speculate")) return speculate_case();
    if (argc == 3 && !strcmp(argv[1], "r1")) return r1_case(argv[2]);
    fprintf(stderr, "usage: hooks sample < case | hooks speculate < case | hooks r1 tokenizer.bin < reply\n");
    return 1;
}
