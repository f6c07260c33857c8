# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean tools fuzz

$(STAMP): pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

# Debian's mingw-w64 cross compiler builds the small EFI test application of option 3.
tools:
	@command -v x86_64-w64-mingw32-gcc >/dev/null || { \
	  echo "installing Debian's gcc-mingw-w64-x86-64-win32 (EFI test application)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q gcc-mingw-w64-x86-64-win32 >/dev/null || \
	  { $$SUDO apt-get update -q >/dev/null && \
	    $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q gcc-mingw-w64-x86-64-win32 >/dev/null; }; }

demo: $(STAMP)
	$(BIN)/lazyaccept demo

test: $(STAMP) tools
	$(BIN)/ruff check src tests benchmarks fuzz
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m benchmarks

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks fuzz

# Coverage-guided fuzzing of every parser (not part of `make test`, which runs a short bounded pass of each).
FUZZ_SECONDS ?= 60
fuzz: $(STAMP)
	$(BIN)/python fuzz/run.py --seconds $(FUZZ_SECONDS)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .hypothesis
