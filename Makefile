# The two commands a new machine needs: `make demo` and `make test`. Both set up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DB := .prelabel/demo.db

.PHONY: setup demo test bench clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $@

# With no endpoint configured the demo answers with the built-in simulator: a stand-in, not a model.
demo: setup
	$(BIN)/prelabel run jobs/examples/sentiment.yaml --db $(DEMO_DB) \
		$(if $(or $(OPENAI_BASE_URL),$(OPENAI_API_KEY)),,--simulate)

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/memory.py

clean:
	rm -rf $(VENV) .prelabel jobs/examples/out
