# seek.c build. `make` builds ./run; `make test` builds and runs every test; `make run` talks.
CC ?= cc
# -march=native where the compiler knows it (older Apple clang on arm64 does not).
NATIVE := $(shell $(CC) -march=native -E -x c /dev/null >/dev/null 2>&1 && echo -march=native)
CFLAGS ?= -O3 $(NATIVE)
# -fno-trapping-math lets gcc vectorise the clamped exp of softmax and SiLU (clang does without it); it changes no
# result, as -std=c11 keeps fused multiply-adds off and nothing reads the floating-point exception flags.
CFLAGS += -std=c11 -fno-trapping-math -Wall -Wextra -D_POSIX_C_SOURCE=200809L
LDLIBS = -lm -lpthread

# A Python that can import numpy (Debian's /usr/bin/python3 first; a pyenv python3 may lack it).
PYTHON ?= $(shell for p in /usr/bin/python3 python3 python; do $$p -c 'import numpy' >/dev/null 2>&1 && { echo $$p; break; }; done)

MODEL ?= models/shakespeare.bin
PROMPT ?= ROMEO:
CHAT ?= ROMEO: What light through yonder window breaks?

# Sanitized builds (make test runs the C-facing tests and the fuzz corpora under them).
SANFLAGS = -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined \
           -std=c11 -D_POSIX_C_SOURCE=200809L
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 20
FUZZ = tests/fuzz
HARNESSES = model config tokenizer

# arm64 check: cross-compile (Debian gcc-aarch64-linux-gnu) and run the logits tests under qemu-user.
ARM64_CC ?= aarch64-linux-gnu-gcc
QEMU_ARM64 ?= qemu-aarch64
HAVE_ARM64 := $(shell command -v $(ARM64_CC) >/dev/null 2>&1 && command -v $(QEMU_ARM64) >/dev/null 2>&1 && echo yes)

.PHONY: all test test-asan test-arm64 fuzz-replay fuzz-smoke fuzz-export clean bench
all: run

# As a prerequisite, `run` is the binary. As the goal (`make run`, the README's first command)
# it is always rebuilt, then the shipped model writes about 200 tokens and answers one chat turn.
ifneq ($(filter run,$(MAKECMDGOALS)),)
.PHONY: run
endif
run: run.c
	$(CC) $(CFLAGS) -o $@ run.c $(LDLIBS)
	@if [ -n "$(filter run,$(MAKECMDGOALS))" ]; then ./run $(MODEL) -n 200 -t 0.8 -i "$(PROMPT)" && \
	  echo "--- one chat exchange (-m chat), the user's turn: $(CHAT)" && echo "$(CHAT)" | ./run $(MODEL) -m chat -n 100 -t 0.8; fi

# ./run with AddressSanitizer + UBSan; any report aborts the process. Built with clang where it is installed,
# whose LeakSanitizer reports memory left unreachable at every exit, also after an error (test-asan turns it on).
SAN_CC ?= $(shell command -v clang >/dev/null 2>&1 && echo clang)
run-asan: run.c
	@test -n "$(SAN_CC)" || echo "run-asan: clang not found, using $(CC) (apt-get install clang for LeakSanitizer)"
	$(or $(SAN_CC),$(CC)) $(SANFLAGS) -o $@ $< $(LDLIBS)

# The same with this CPU's SIMD kernels (AVX2/AVX-512/VNNI paths), which run-asan's portable build skips.
run-asan-simd: run.c
	$(or $(SAN_CC),$(CC)) $(SANFLAGS) $(NATIVE) -o $@ $< $(LDLIBS)

# The whole suite; the full pytest run comes last so that its summary is the closing line.
test: run run-asan
	@test -n "$(PYTHON)" || { echo "make test: no python3 with numpy found (apt-get install python3-numpy python3-pytest)"; exit 1; }
ifeq ($(HAVE_ARM64),yes)
	$(MAKE) -s test-arm64
else
	@echo "make test: $(ARM64_CC) or $(QEMU_ARM64) not found; skipping the arm64 tests"
endif
	$(MAKE) --no-print-directory test-asan fuzz-replay fuzz-smoke fuzz-export
	$(PYTHON) -m pytest -q tests

# The tests that drive the C binary, again against ./run-asan; the kernel tests also against ./run-asan-simd.
# Skipped under both: no C run (export layout, controls, bf16 top-1 on the bf16 test's run) or nothing new (same shapes).
ASAN_SKIP = export_header or export_tensors or export_blocks or bf16_top1 or control_without or other_seeds or \
            blocked_attention_bit_identical[q8 or shakespeare_quant_accuracy
# The SIMD pass: the tests that run the matmul and attention kernels.
ASAN_SIMD_TESTS = f32_logits_match_reference or greedy_continuation or bf16_logits_match or bf16_cache_logits or \
            long_sequence or single_token or quant_logits_match or quant_error or batched_prefill or threads_agree or \
            blocked_attention or kernel_paths
test-asan: run-asan run-asan-simd
# Portable build: all but ASAN_SKIP; the kernel-path test and most single-token q8/q4 variants only in the SIMD pass.
	ASAN_OPTIONS=detect_leaks=1 SEEK_RUN=$(CURDIR)/run-asan $(PYTHON) -m pytest -q -p no:cacheprovider tests/test_bad_input.py tests/test_engine.py tests/test_tokenizer.py tests/test_ppl.py \
		tests/test_quant.py tests/test_shakespeare.py::test_engine_greedy_matches_pytorch tests/test_cli.py \
		tests/test_mtp.py::test_mtp_logits_match_pytorch tests/test_mtp.py::test_greedy_acceptance_matches_the_fixture \
		tests/test_mtp.py::test_mtp_stops_where_plain_generation_stops tests/test_mtp.py::test_missing_or_corrupt_mtp_section_is_one_error \
		-k "not ($(ASAN_SKIP) or kernel_paths or (quant_logits_match and not ([glm or [v3fp8 or [v32-)))"
# SIMD build: only ASAN_SIMD_TESTS; the rest run the same kernels on the same shapes, or none.
	ASAN_OPTIONS=detect_leaks=1 SEEK_RUN=$(CURDIR)/run-asan-simd $(PYTHON) -m pytest -q -p no:cacheprovider tests/test_quant.py tests/test_engine.py \
		-k "($(ASAN_SIMD_TESTS)) and not ($(ASAN_SKIP))"

# Replays the seed corpora and every past crasher (tests/fuzz/regressions) through the harnesses,
# built with $(CC)'s sanitizers and a plain driver, so no libFuzzer is needed.
build/replay-%: $(FUZZ)/fuzz_%.c $(FUZZ)/replay.c run.c
	@mkdir -p build
	$(CC) $(SANFLAGS) -DSEEK_FUZZ -o $@ $(FUZZ)/replay.c $< $(LDLIBS)

fuzz-replay: $(foreach h,$(HARNESSES),build/replay-$(h))
	@for h in $(HARNESSES); do \
	  out=$$(./build/replay-$$h $$(find $(FUZZ)/corpus-$$h $(FUZZ)/regressions/$$h -type f 2>/dev/null)) || exit 1; \
	  echo "fuzz-replay $$h: $$out"; done

# A short libFuzzer run per harness (FUZZ_SECONDS each, on a scratch copy of the corpus), when
# clang's fuzzer runtime is installed (Debian: clang libclang-rt-14-dev); else it says it is skipped.
build/fuzz-%: $(FUZZ)/fuzz_%.c run.c
	@mkdir -p build
	$(FUZZ_CC) $(SANFLAGS) -fsanitize=fuzzer -DSEEK_FUZZ -o $@ $< $(LDLIBS)

fuzz-smoke:
	@if echo 'int LLVMFuzzerTestOneInput(const char *d, long n) { return 0; }' | \
	    $(FUZZ_CC) -fsanitize=fuzzer -x c - -o /dev/null >/dev/null 2>&1; then \
	  for h in $(HARNESSES); do \
	    $(MAKE) --no-print-directory build/fuzz-$$h || exit 1; \
	    work=$$(mktemp -d) && cp $$(find $(FUZZ)/corpus-$$h $(FUZZ)/regressions/$$h -type f 2>/dev/null) $$work/ && \
	    ./build/fuzz-$$h -max_total_time=$(FUZZ_SECONDS) -timeout=10 -artifact_prefix=build/ $$work > $$work.log 2>&1; \
	    rc=$$?; tail -n 1 $$work.log | sed "s/^/fuzz-smoke $$h: /"; \
	    if [ $$rc -ne 0 ]; then tail -n 60 $$work.log; rm -rf $$work $$work.log; exit 1; fi; \
	    rm -rf $$work $$work.log; done; \
	else echo "fuzz-smoke: skipped ($(FUZZ_CC) with libFuzzer not found; apt-get install clang libclang-rt-14-dev)"; fi

# export.py on mutated configs, safetensors headers, tokenizer files and paths (tests/fuzz/fuzz_export.py);
# the files it accepts must load in ./run. FUZZ_EXPORT_SECONDS=600 for a longer run, FUZZ_EXPORT_SEED=n.
FUZZ_EXPORT_SECONDS ?= 40
FUZZ_EXPORT_SEED ?= 0
fuzz-export: run
	$(PYTHON) $(FUZZ)/fuzz_export.py --seconds $(FUZZ_EXPORT_SECONDS) --seed $(FUZZ_EXPORT_SEED) --run ./run

# The portable (non-AVX2) kernels, as an arm64 laptop runs them: f32/bf16 logits and greedy decode of every variant, the
# bf16-cache, q8/q4 (exact on 3 variants, bit for bit vs x86 on 3 others), batched, threads and blocked-attention tests.
ARM64_TESTS = f32_logits_match_reference or greedy_continuation or bf16_logits_match or bf16_cache_logits[k2rp] or \
              bf16_cache_logits[v32] or quant_logits_match_emulating_reference[glm or \
              quant_logits_match_emulating_reference[v3fp8 or quant_logits_match_emulating_reference[v32- or \
              quant_error or batched_prefill or threads_agree or blocked_attention_bit_identical[f32 or \
              blocked_attention_bit_identical[q4 or kernel_paths
test-arm64:
	@mkdir -p build
	$(ARM64_CC) -O3 -std=c11 -Wall -Wextra -D_POSIX_C_SOURCE=200809L -static -o build/run-arm64 run.c -lm -lpthread
	printf '#!/bin/sh\nexec $(QEMU_ARM64) "$(CURDIR)/build/run-arm64" "$$@"\n' > build/run-arm64.sh
	chmod +x build/run-arm64.sh
	SEEK_RUN="$(CURDIR)/build/run-arm64.sh" $(PYTHON) -m pytest -q tests/test_engine.py tests/test_quant.py \
		-k "$(ARM64_TESTS)"

# DeepSeek-V2-Lite-shaped random models (q8 16.7 GB, q4 8.9 GB) in $(BENCH_MODEL_DIR), default bench/models/.
bench: run bench/bandwidth
	$(PYTHON) bench/bench.py

bench/bandwidth: bench/bandwidth.c
	$(CC) $(CFLAGS) -o $@ $< -lpthread

clean:
	rm -rf run run-asan run-asan-simd bench/bandwidth build
