# The two commands a new machine needs: `make demo` and `make test`. Both set up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DB := .prelabel/demo.db

WORDNET := $(VENV)/share/nltk_data/corpora/wordnet/lexnames
WORDNET_DEBS := wordnet-base wordnet-sense-index

.PHONY: setup demo test bench clean
setup: $(VENV)/.installed $(WORDNET)

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $@

# WordNet for synonym augmentation, offline: Debian's packages (installed here when missing and run
# as root) turned into an NLTK corpus inside the venv, where NLTK looks by default. Without them, a
# warning: every other augmentation still runs.
$(WORDNET): | $(VENV)/.installed
	@if [ ! -f /usr/share/wordnet/index.sense ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q --no-install-recommends $(WORDNET_DEBS) >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $(WORDNET_DEBS) >/dev/null; } || true; \
	fi
	@if [ -f /usr/share/wordnet/index.sense ]; then $(BIN)/python -m augment install-wordnet; else \
		echo "warning: WordNet is not installed, so synonym augmentation cannot run." \
			"As root: apt-get install $(WORDNET_DEBS), then make setup." >&2; fi

# With no endpoint configured the demo answers with the built-in simulator: a stand-in, not a model.
demo: setup
	$(BIN)/prelabel run jobs/examples/sentiment.yaml --db $(DEMO_DB) \
		$(if $(or $(OPENAI_BASE_URL),$(OPENAI_API_KEY)),,--simulate)

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/augment_rate.py

clean:
	rm -rf $(VENV) .prelabel jobs/examples/out
