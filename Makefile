# seek.c build. `make` builds ./run; `make test` builds and runs every test; `make run` talks.
CC ?= cc
CFLAGS ?= -O3 -march=native
CFLAGS += -std=c11 -Wall -Wextra -D_POSIX_C_SOURCE=200809L
LDLIBS = -lm -lpthread

# A Python that can import numpy (Debian's /usr/bin/python3 first; a pyenv python3 may lack it).
PYTHON ?= $(shell for p in /usr/bin/python3 python3 python; do $$p -c 'import numpy' >/dev/null 2>&1 && { echo $$p; break; }; done)

MODEL ?= models/shakespeare.bin

.PHONY: all run test clean bench
all: run

run: run.c
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

test: run
	@test -n "$(PYTHON)" || { echo "make test: no python3 with numpy found (apt-get install python3-numpy python3-pytest)"; exit 1; }
	$(PYTHON) -m pytest -q tests

# DeepSeek-V2-Lite-shaped random models (q8 16.7 GB, q4 8.9 GB) in $(BENCH_MODEL_DIR), default bench/models/.
bench: run bench/bandwidth
	$(PYTHON) bench/bench.py

bench/bandwidth: bench/bandwidth.c
	$(CC) $(CFLAGS) -o $@ $< -lpthread

clean:
	rm -f run bench/bandwidth
