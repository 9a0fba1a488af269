# Chargeyard: `make run` starts one node, `make test` runs the whole suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install run test test-pure bench bench-codec bench-store cluster clean generate

$(STAMP): pyproject.toml setup.py core/_codec.pyx worker/_listener.pyx store/_walsync.pyx store/_logrows.pyx worker/_meter.pyx worker/_slots.pxi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test,cluster,bench]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(VENV)/bin/chargeyard run

cluster: install
	$(VENV)/bin/chargeyard cluster --workers 3

# The suite runs with the compiled modules (required), then the parts that
# exercise them again with their pure-Python twins.
test: install
	CHARGEYARD_REQUIRE_EXT=1 $(PY) -m pytest -q -p no:cacheprovider
	CHARGEYARD_PURE=1 $(PY) -m pytest -q -p no:cacheprovider tests/core tests/worker tests/e2e tests/store/test_sample_log.py

bench-codec: install
	taskset -c 1 $(PY) -m chargeyard.bench.codec

bench-store: install
	taskset -c 1 $(PY) -m chargeyard.bench.store_commit

bench: install
	$(VENV)/bin/chargeyard bench compare

generate: install
	$(PY) core/codegen.py

clean:
	rm -rf $(VENV) build *.egg-info core/_codec.c core/_codec*.so worker/_listener.c worker/_listener*.so
