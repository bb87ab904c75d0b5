// Memory read bandwidth, the limit of token generation: each thread streams its
// share of a buffer much larger than the caches with STREAMS independent
// sequential read streams (one stream alone leaves bandwidth unused). Prints
// "bandwidth threads=<n> gbps=<GB/s> median=<GB/s>": the best of several passes, and
// their median (on a shared host the passes of one run can differ by a third).
//     cc -O3 -march=native -o bench/bandwidth bench/bandwidth.c -lpthread
//     bench/bandwidth [threads] [MiB]
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define STREAMS 8
#define PASSES 7

typedef struct {
    const uint64_t *p;
    size_t n;  // u64 words in this thread's share
    uint64_t sink;
    pthread_barrier_t *start, *end;
} Share;

static uint64_t read_share(const uint64_t *p, size_t n) {
    size_t per = n / STREAMS / 8 * 8;
    uint64_t acc[STREAMS][8] = {{0}};
    for (size_t i = 0; i < per; i += 8)
        for (int s = 0; s < STREAMS; s++)
            for (int k = 0; k < 8; k++) acc[s][k] += p[(size_t)s * per + i + k];
    uint64_t x = 0;
    for (int s = 0; s < STREAMS; s++)
        for (int k = 0; k < 8; k++) x ^= acc[s][k];
    return x;
}

static void *worker(void *arg) {
    Share *sh = arg;
    for (int pass = 0; pass < PASSES; pass++) {
        pthread_barrier_wait(sh->start);
        sh->sink += read_share(sh->p, sh->n);
        pthread_barrier_wait(sh->end);
    }
    return NULL;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    size_t mib = argc > 2 ? (size_t)atol(argv[2]) : 1024;
    if (threads < 1 || threads > 256 || mib < 64) { fprintf(stderr, "usage: bandwidth [threads] [MiB >= 64]\n"); return 1; }
    size_t words = mib << 17;
    uint64_t *buf = malloc(words * sizeof(uint64_t));
    if (!buf) { fprintf(stderr, "bandwidth: out of memory\n"); return 1; }
    for (size_t i = 0; i < words; i++) buf[i] = i * 0x9e3779b97f4a7c15ULL;
    pthread_barrier_t start, end;
    pthread_barrier_init(&start, NULL, (unsigned)threads + 1);
    pthread_barrier_init(&end, NULL, (unsigned)threads + 1);
    Share *sh = calloc((size_t)threads, sizeof(Share));
    pthread_t *tid = calloc((size_t)threads, sizeof(pthread_t));
    size_t per = words / (size_t)threads;
    for (int t = 0; t < threads; t++) {
        sh[t] = (Share){buf + (size_t)t * per, per, 0, &start, &end};
        pthread_create(&tid[t], NULL, worker, &sh[t]);
    }
    double dt[PASSES];  // seconds per pass, sorted below
    for (int pass = 0; pass < PASSES; pass++) {
        pthread_barrier_wait(&start);
        double t0 = now();
        pthread_barrier_wait(&end);
        dt[pass] = now() - t0;
        for (int i = pass; i > 0 && dt[i] < dt[i - 1]; i--) { double x = dt[i]; dt[i] = dt[i - 1]; dt[i - 1] = x; }
    }
    uint64_t sink = 0;
    for (int t = 0; t < threads; t++) { pthread_join(tid[t], NULL); sink ^= sh[t].sink; }
    size_t bytes = (per / STREAMS / 8 * 8) * STREAMS * (size_t)threads * sizeof(uint64_t);
    printf("bandwidth threads=%d gbps=%.2f median=%.2f (%zu MiB, %d streams per thread, check %llu)\n", threads,
           (double)bytes / dt[0] / 1e9, (double)bytes / dt[PASSES / 2] / 1e9, mib, STREAMS, (unsigned long long)(sink & 0xff));
    free(buf); free(sh); free(tid);
    return 0;
}
