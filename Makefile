# localguard: `make test` and `make demo` work on a fresh machine (Linux or macOS).
# pip's wheel cache is kept, so only the first build of llama-cpp-python takes minutes.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test test-slow demo lint sysdeps clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@bash scripts/install_system_deps.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --progress-bar off -e '.[test]'
	$(VENV)/bin/localguard fetch smollm2:135m
	@touch $@

sysdeps:
	@bash scripts/install_system_deps.sh

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

# the efficacy and guard results on the demo starter world (builds it, nine fine-tunes, the
# guard's attack: about 20 minutes on 2 cores), then recipes/smollm2-135m.toml's three acts on
# the real model against its targets (about 90 minutes)
test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 LOCALGUARD_SLOW_TESTS=1 $(PY) -m pytest -q tests/test_efficacy.py \
		tests/test_guard_efficacy.py tests/test_smollm2_recipe.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# the whole story offline: starter model, probe, plain and localguard fine-tunes, head, GGUF
# export, evaluation of base / plain SFT / localguard / localguard + guard (about 13 minutes
# on 2 cores; a second run reuses every finished stage). Results: runs/demo/eval/report.md
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/localguard run recipes/demo.toml

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
