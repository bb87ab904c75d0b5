# seek.c build. `make` builds ./run; `make test` builds and runs every test; `make run` talks.
CC ?= cc
CFLAGS ?= -O3 -march=native
CFLAGS += -std=c11 -Wall -Wextra -D_POSIX_C_SOURCE=200809L
LDLIBS = -lm -lpthread

# A Python that can import numpy (Debian's /usr/bin/python3 first; a pyenv python3 may lack it).
PYTHON ?= $(shell for p in /usr/bin/python3 python3 python; do $$p -c 'import numpy' >/dev/null 2>&1 && { echo $$p; break; }; done)

MODEL ?= models/shakespeare.bin

.PHONY: all run test clean
all: run

run: run.c
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

test: run
	@test -n "$(PYTHON)" || { echo "make test: no python3 with numpy found (apt-get install python3-numpy python3-pytest)"; exit 1; }
	$(PYTHON) -m pytest -q tests

clean:
	rm -f run
