# seek.c build. `make` builds ./run; `make test` builds and runs every test; `make run` talks.
CC ?= cc
# -march=native where the compiler knows it (older Apple clang on arm64 does not).
NATIVE := $(shell $(CC) -march=native -E -x c /dev/null >/dev/null 2>&1 && echo -march=native)
CFLAGS ?= -O3 $(NATIVE)
CFLAGS += -std=c11 -Wall -Wextra -D_POSIX_C_SOURCE=200809L
LDLIBS = -lm -lpthread

# A Python that can import numpy (Debian's /usr/bin/python3 first; a pyenv python3 may lack it).
PYTHON ?= $(shell for p in /usr/bin/python3 python3 python; do $$p -c 'import numpy' >/dev/null 2>&1 && { echo $$p; break; }; done)

MODEL ?= models/shakespeare.bin
PROMPT ?= ROMEO:

# arm64 check: cross-compile (Debian gcc-aarch64-linux-gnu) and run the logits tests under qemu-user.
ARM64_CC ?= aarch64-linux-gnu-gcc
QEMU_ARM64 ?= qemu-aarch64
HAVE_ARM64 := $(shell command -v $(ARM64_CC) >/dev/null 2>&1 && command -v $(QEMU_ARM64) >/dev/null 2>&1 && echo yes)

.PHONY: all test test-arm64 clean bench
all: run

# As a prerequisite, `run` is the binary. As the goal (`make run`, the README's first command)
# it is always rebuilt and then lets the shipped model write about 200 tokens.
ifneq ($(filter run,$(MAKECMDGOALS)),)
.PHONY: run
endif
run: run.c
	$(CC) $(CFLAGS) -o $@ run.c $(LDLIBS)
	@if [ -n "$(filter run,$(MAKECMDGOALS))" ]; then ./run $(MODEL) -n 200 -t 0.8 -i "$(PROMPT)"; fi

test: run
	@test -n "$(PYTHON)" || { echo "make test: no python3 with numpy found (apt-get install python3-numpy python3-pytest)"; exit 1; }
	$(PYTHON) -m pytest -q tests
ifeq ($(HAVE_ARM64),yes)
	$(MAKE) -s test-arm64
else
	@echo "make test: $(ARM64_CC) or $(QEMU_ARM64) not found; skipping the arm64 tests"
endif

# The portable (non-AVX2) kernels, as an arm64 laptop runs them: engine logits, quantized and batched paths.
test-arm64:
	@mkdir -p build
	$(ARM64_CC) -O3 -std=c11 -Wall -Wextra -D_POSIX_C_SOURCE=200809L -static -o build/run-arm64 run.c -lm -lpthread
	printf '#!/bin/sh\nexec $(QEMU_ARM64) "$(CURDIR)/build/run-arm64" "$$@"\n' > build/run-arm64.sh
	chmod +x build/run-arm64.sh
	SEEK_RUN="$(CURDIR)/build/run-arm64.sh" $(PYTHON) -m pytest -q tests/test_engine.py tests/test_quant.py \
		-k "logits or greedy or quant or batched or threads"

# DeepSeek-V2-Lite-shaped random models (q8 16.7 GB, q4 8.9 GB) in $(BENCH_MODEL_DIR), default bench/models/.
bench: run bench/bandwidth
	$(PYTHON) bench/bench.py

bench/bandwidth: bench/bandwidth.c
	$(CC) $(CFLAGS) -o $@ $< -lpthread

clean:
	rm -rf run bench/bandwidth build
