# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The folder of pinned Debian .deb files: $LAZYACCEPT_DEBS, else ../shared/debs beside the checkout when it
# exists (CI puts a copy there); empty means apt fetches the packages through the machine's own mirror.
DEBS ?= $(or $(LAZYACCEPT_DEBS),$(wildcard $(abspath ../shared/debs)))
DEBS_ENV := $(if $(DEBS),LAZYACCEPT_DEBS=$(DEBS))

.PHONY: demo test lint bench clean tools fuzz wheel-check

$(STAMP): pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

# Debian's mingw-w64 cross compiler builds the small EFI test application of option 3; Debian's qemu-system-x86
# boots the initramfs under the real kernels on a plain q35 VM (tests/guest/test_initramfs.py); Debian's chromium
# renders compare's report.html headless (tests/test_compare_report.py); zsh checks the generated completion;
# gdisk (sgdisk), dosfstools (mkfs.vfat) and mtools make the disk images `boot --disk` reads (tests/vmm/disk_images.py).
tools:
	@missing=""; \
	command -v x86_64-w64-mingw32-gcc >/dev/null || missing="$$missing gcc-mingw-w64-x86-64-win32"; \
	command -v qemu-system-x86_64 >/dev/null || missing="$$missing qemu-system-x86"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v zsh >/dev/null || missing="$$missing zsh"; \
	PATH="$$PATH:/usr/sbin:/sbin" command -v sgdisk >/dev/null || missing="$$missing gdisk"; \
	PATH="$$PATH:/usr/sbin:/sbin" command -v mkfs.vfat >/dev/null || missing="$$missing dosfstools"; \
	command -v mcopy >/dev/null || missing="$$missing mtools"; \
	[ -z "$$missing" ] || { \
	  echo "installing Debian's$$missing (test tools)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null || \
	  { $$SUDO apt-get update -q >/dev/null && \
	    $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null; }; }

demo: $(STAMP)
	$(DEBS_ENV) $(BIN)/lazyaccept demo

# The tests, then the wheel: built, installed with its dependencies into a fresh venv in a temporary
# directory, and run from there (tools/wheel_check.py).
test: $(STAMP) tools
	$(BIN)/ruff check src tests benchmarks fuzz tools
	$(BIN)/mypy
	$(DEBS_ENV) $(BIN)/python -m pytest -q
	$(BIN)/python tools/wheel_check.py $(if $(DEBS),--debs $(DEBS))

wheel-check: $(STAMP)
	$(BIN)/python tools/wheel_check.py $(if $(DEBS),--debs $(DEBS))

bench: $(STAMP)
	$(BIN)/python -m benchmarks

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks fuzz tools
	$(BIN)/mypy

# Coverage-guided fuzzing of every parser (not part of `make test`, which runs a short bounded pass of each).
FUZZ_SECONDS ?= 60
fuzz: $(STAMP)
	$(BIN)/python fuzz/run.py --seconds $(FUZZ_SECONDS)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .hypothesis
