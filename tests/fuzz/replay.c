// Runs a fuzz harness once on each file named on the command line, without libFuzzer, so that the
// regression corpora replay with any compiler that has AddressSanitizer (make fuzz-replay). Link it
// with one harness: cc -fsanitize=address,undefined -DSEEK_FUZZ replay.c fuzz_model.c -lm
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        FILE *f = fopen(argv[i], "rb");
        if (!f) { perror(argv[i]); return 2; }
        fseek(f, 0, SEEK_END);
        long n = ftell(f);
        fseek(f, 0, SEEK_SET);
        uint8_t *data = malloc(n > 0 ? (size_t)n : 1);  // exact size: overreads hit ASan's redzone
        if (!data || fread(data, 1, (size_t)n, f) != (size_t)n) { perror(argv[i]); return 2; }
        fclose(f);
        LLVMFuzzerTestOneInput(data, (size_t)n);
        free(data);
    }
    printf("replayed %d inputs\n", argc - 1);
    return 0;
}
