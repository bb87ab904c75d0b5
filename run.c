/*
 * seek.c: inference for DeepSeek-V2/V3 Mixture-of-Experts models with
 * Multi-head Latent Attention, in one file of C11 (libc, libm, pthreads).
 *
 * Reads top to bottom like the papers: config, weights, run state, the blocks
 * (rmsnorm, rope, mla_attention, moe), forward, tokenizer, sampler,
 * generate/chat, benchmark, main.
 */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <math.h>

// ----------------------------------------------------------------------------
// Config and model file format

// ----------------------------------------------------------------------------
// Weights

// ----------------------------------------------------------------------------
// Run state

// ----------------------------------------------------------------------------
// Blocks: rmsnorm, rope, mla_attention, moe

// ----------------------------------------------------------------------------
// Forward

// ----------------------------------------------------------------------------
// Tokenizer

// ----------------------------------------------------------------------------
// Sampler

// ----------------------------------------------------------------------------
// Generate and chat

// ----------------------------------------------------------------------------
// Benchmark

// ----------------------------------------------------------------------------
// main

int main(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "seek.c: not implemented yet\n");
    return 1;
}
