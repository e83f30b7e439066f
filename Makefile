# Two commands set everything up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
LOCAL := .local
SIM_PORT ?= 8000
export LLM4RERANK_LLM_BASE_URL ?= http://127.0.0.1:$(SIM_PORT)/v1
export LLM4RERANK_LLM_MODEL ?= sim-llm-simulated

.PHONY: install up down demo demo-stop test test-fast check lint lock bench eval-demo schemas clean

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,eval]'
	touch $(STAMP)

SYSTEM_FLAGS ?=

install: $(STAMP)
	bash scripts/install_system.sh $(SYSTEM_FLAGS)
	bash infra/kafka/kafka.sh install

up: install
	bash infra/up.sh
	$(BIN)/llm4rerank db upgrade

down:
	-bash scripts/demo.sh stop
	bash infra/down.sh

demo: up
	bash scripts/demo.sh run

demo-stop:
	bash scripts/demo.sh stop

test: SYSTEM_FLAGS = --browser
test: install
	bash infra/up.sh
	$(BIN)/llm4rerank db upgrade
	$(BIN)/pytest -q -p no:cacheprovider

# The fast lane: every test that needs no service (no Kafka, PostgreSQL, sim-llm, browser, llama.cpp).
# One process per core (pytest-xdist), whole files per process; bytecode is cached even where PYTHONDONTWRITEBYTECODE is set.
test-fast: $(STAMP)
	PYTHONDONTWRITEBYTECODE= $(BIN)/pytest -q -p no:cacheprovider -m "not integration" -n auto --dist loadfile --hypothesis-profile=dev

# requirements.lock: the image's exact versions (runtime and the eval extra), compiled from pyproject.toml.
lock: $(STAMP)
	$(PY) -m pip install -q uv
	$(BIN)/uv pip compile pyproject.toml --extra eval --python-version 3.11 \
		--python-platform x86_64-unknown-linux-gnu --no-header --annotation-style line -o requirements.lock

check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy worker

lint: check

schemas: $(STAMP)
	$(BIN)/llm4rerank schemas --out schemas

bench: up
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) benchmarks/engine_bench.py
	$(PY) benchmarks/worker_bench.py
	$(PY) benchmarks/chat_bench.py
	$(PY) benchmarks/store_bench.py
	if [ -n "$(AUDIT_SESSIONS)" ]; then $(PY) benchmarks/audit_bench.py --sessions $(AUDIT_SESSIONS); fi

eval-demo: install
	bash scripts/eval_demo.sh

clean: down
	rm -rf $(LOCAL) $(VENV)
