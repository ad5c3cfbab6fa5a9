# The two commands of the quick start. Each creates .venv when missing and installs into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench chromium registry-tools netlab-tools clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/damselfly demo --data-dir .demo

# The console's browser test drives Debian's chromium (never a downloaded browser).
chromium:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

# The registry mirror's tests: Debian's docker-registry, skopeo and containerd.
registry-tools:
	command -v docker-registry >/dev/null && command -v skopeo >/dev/null && command -v containerd >/dev/null || (apt-get update -qq && apt-get install -y -qq docker-registry skopeo containerd >/dev/null)

# Kernel-shaped test networks (the shaped swarm's test and benchmark): ip and tc from
# iproute2, curl to reach a namespace's HTTP servers from outside it.
netlab-tools:
	command -v ip >/dev/null && command -v tc >/dev/null && command -v curl >/dev/null || (apt-get update -qq && apt-get install -y -qq iproute2 curl >/dev/null)

# The gates: lint and types (the source mypy --strict, tests and benchmarks non-strict, as
# pyproject.toml says) and the architecture's import contracts. Seconds; run before the suite.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/mypy tests bench
	$(BIN)/lint-imports

test: lint chromium registry-tools netlab-tools
	$(BIN)/python -m pytest -q tests

# The swarm benchmark runs every host in its own network namespace (root) and compares
# against BitTorrent (Debian's aria2c, mktorrent, opentracker) and plain curl clients
# (GNU time reads a client process's peak RSS);
# matplotlib (the bench extra) draws its plots.
bench: $(STAMP) netlab-tools
	command -v aria2c >/dev/null && command -v mktorrent >/dev/null && command -v opentracker >/dev/null && command -v curl >/dev/null && test -x /usr/bin/time || (apt-get update -qq && apt-get install -y -qq aria2 mktorrent opentracker curl time >/dev/null)
	$(BIN)/python -c 'import matplotlib' 2>/dev/null || $(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .demo .data bench/results
