# Chargeyard: `make run` starts one node, `make test` runs the whole suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

# The folders pyproject.toml maps to chargeyard.* (bench is its own command, not the product).
SRC_DIRS := app core worker router store bench nginx
# Every Cython source, wherever an extension is added or moved to.
EXT_SRC  := $(shell find $(wildcard $(SRC_DIRS)) -name '*.pyx' -o -name '*.pxi' -o -name '*.pxd')

# One stamp per thing installed, so each target installs only what it needs and nothing
# twice: `base` is the package itself (runtime dependencies, compiled modules); the
# `extra-*` stamps add an optional-dependency group without rebuilding the package.
BASE  := $(VENV)/.stamp-base
EXTRA := $(VENV)/.stamp-extra

# The suites whose code picks a compiled module or its twin: run again with the twins.
PURE_SUITES := tests/core tests/worker tests/store tests/e2e
PYTEST := $(PY) -m pytest -q -p no:cacheprovider

.PHONY: install run test bench bench-codec bench-store cluster clean generate

$(BASE): pyproject.toml setup.py $(EXT_SRC)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

# `make $(EXTRA)-test` etc.: the group's requirements as pyproject.toml lists them
# (order-only on the base: rebuilding the package after a .pyx edit leaves them be).
$(EXTRA)-%: pyproject.toml | $(BASE)
	$(PY) -c 'import sys, tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"][sys.argv[1]]))' $* > $@.txt
	$(PIP) install -q -r $@.txt
	rm -f $@.txt
	touch $@

# Everything, for development (what `make test` needs).
install: $(BASE) $(EXTRA)-test $(EXTRA)-cluster $(EXTRA)-bench $(EXTRA)-scylla

run: $(BASE)
	$(VENV)/bin/chargeyard run

cluster: $(BASE) $(EXTRA)-cluster
	$(VENV)/bin/chargeyard cluster --workers 3

# The whole suite with the compiled modules (required), then the suites that exercise
# them again with their pure-Python twins (tests/conftest.py turns "no tests collected"
# into a failure, so neither run can pass by running nothing).
test: install
	CHARGEYARD_REQUIRE_EXT=1 $(PYTEST)
	CHARGEYARD_PURE=1 $(PYTEST) $(PURE_SUITES)

bench-codec: $(BASE) $(EXTRA)-bench
	taskset -c 1 $(PY) -m chargeyard.bench.codec

# The commit path alone, then the throughput check that used to be a test (a time
# budget needs a quiet machine, not `make test`).
bench-store: $(BASE) $(EXTRA)-bench
	taskset -c 1 $(PY) -m chargeyard.bench.store_commit
	taskset -c 1 $(PY) -m chargeyard.bench.store_throughput

# BENCH_ARGS: extra flags, e.g. `make bench BENCH_ARGS="--store scylla"` (SQLite and the
# ScyllaDB store in the same run, on a local Cassandra: needs the scylla extra and Java 17).
# With Java on the PATH the worker is also measured publishing to a local Kafka broker
# (`--kafka`, issue 20: CPU/msg with Kafka on <= 1.15x off, in the same run); BENCH_KAFKA=
# (empty) leaves it out.
BENCH_KAFKA ?= $(if $(shell command -v java),--kafka)
bench: $(BASE) $(EXTRA)-bench $(EXTRA)-kafka
	$(VENV)/bin/chargeyard-bench compare $(BENCH_KAFKA) $(BENCH_ARGS)

generate: $(BASE)
	$(PY) core/codegen.py

# Every extension's outputs: the C generated beside each .pyx and the built modules.
clean:
	rm -rf $(VENV) build *.egg-info
	for f in $(shell find $(wildcard $(SRC_DIRS)) -name '*.pyx'); do rm -f "$${f%.pyx}.c" "$${f%.pyx}.cpp"; done
	find $(wildcard $(SRC_DIRS)) \( -name '*.so' -o -name '*.pyd' \) -delete
