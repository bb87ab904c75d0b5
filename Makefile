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

.PHONY: all test clean
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

clean:
	rm -f run
