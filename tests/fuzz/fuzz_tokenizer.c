// libFuzzer harness for the tokenizer: load, encode, decode.
//
// Input: u16 little-endian text length n, n bytes of text, then a whole tokenizer file (at the end,
// so that reading past the file is reading past libFuzzer's exact-size buffer, which ASan catches).
// init_tokenizer() must reject any inconsistent file. For a file it accepts:
//   - encode(text) must give ids that decode to exactly the text with ill-formed UTF-8 replaced by
//     U+FFFD, after GLM's opening [gMASK]<sop> (the round trip holds for every valid tokenizer file, so a
//     failure is a bug: abort);
//   - the text is also given to --decode's id parser and, if it parses, decoded;
//   - the text is rendered as a chat turn and encoded.
//
// run.c is compiled in with SEEK_FUZZ: die() then longjmps back here instead of exiting. Error
// paths leave memory behind (the CLI exits right away), so run with -detect_leaks=0.
#define main seek_main
#include "../../run.c"
#undef main

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

// The error paths' garbage is not a finding (see above), also not at exit.
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "detect_leaks=0"; }

static void decode_ids(const Tokenizer *t, const IdList *ids, int skip_bos, FILE *f) {
    Decoder d = {0};
    for (int i = skip_bos; i < ids->n; i++) decode_piece(t, &d, ids->ids[i], f);
    flush_decoder(&d, f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    size_t n = (size_t)data[0] | (size_t)data[1] << 8;
    if (n > size - 2) n = size - 2;
    const uint8_t *text = data + 2, *file = data + 2 + n;
    size_t file_size = size - 2 - n;
    // static: locals changed after setjmp are indeterminate once longjmp returns
    static Tokenizer t;
    static IdList ids, parsed, turn_ids;
    static char *out, *turn, *user;
    static uint8_t *lossy, *id_text;
    static FILE *mem;
    jmp_buf on_error;
    memset(&t, 0, sizeof t);
    ids = parsed = turn_ids = (IdList){0};
    out = turn = user = NULL;
    lossy = id_text = NULL;
    mem = NULL;
    fuzz_on_error = &on_error;
    if (setjmp(on_error) == 0) {
        init_tokenizer(&t, file, file_size, "fuzz input");
        size_t n_bad, out_len, lossy_len;
        ids = encode(&t, text, n, 1, &n_bad);
        int has_bos = t.add_bos;
        if (has_bos && (ids.n == 0 || ids.ids[0] != t.bos_id)) abort();
        for (int i = 0; i < ids.n; i++) if (ids.ids[i] < 0 || ids.ids[i] >= t.n_vocab || !t.flags[ids.ids[i]]) abort();
        mem = open_memstream(&out, &out_len);
        if (!mem) abort();
        decode_ids(&t, &ids, has_bos, mem);
        fclose(mem);
        mem = NULL;
        lossy = utf8_lossy(text, n, &lossy_len, &n_bad);
        size_t o = t.chat_family == CHAT_GLM4 ? 12 : 0;  // GLM has no BOS: encode opens with [gMASK]<sop>
        if (out_len != o + lossy_len || memcmp(out, "[gMASK]<sop>", o) || memcmp(out + o, lossy, lossy_len))
            abort();  // round trip broken

        id_text = malloc(n + 1);  // --decode reads NUL-terminated text
        memcpy(id_text, text, n);
        id_text[n] = 0;
        user = strndup((const char *)text, n);
        turn = render_turn(&t, 1, "system", user, 1);
        turn_ids = encode(&t, (const uint8_t *)turn, strlen(turn), 0, &n_bad);
        parsed = parse_ids(&t, id_text, n, t.n_vocab, "--decode");
        mem = fopen("/dev/null", "wb");
        decode_ids(&t, &parsed, 0, mem);
        fclose(mem);
        mem = NULL;
    }
    fuzz_on_error = NULL;
    if (mem) fclose(mem);
    free(ids.ids); free(parsed.ids); free(turn_ids.ids);
    free(out); free(turn); free(user); free(lossy); free(id_text);
    free_tokenizer(&t);
    return 0;
}
