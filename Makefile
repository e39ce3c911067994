# ThreadEmbed: `make run` materializes the pipeline offline on SOURCE; `make test` runs the test suite.
SOURCE ?= ubuntu_irc
PRESET ?= cpu
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export THREADEMBED_DATA_DIR ?= data
export THREADEMBED_MODELS_DIR ?= models

.PHONY: run test eval ui lint install search serve docs

# The local Dagster instance (telemetry off, see dagster.yaml), so the first screens are the product's own.
INSTANCE := $(DAGSTER_HOME)/dagster.yaml
$(INSTANCE): dagster.yaml
	@mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

install: $(VENV)/.installed

# Where pip takes torch 2.13.0 from. Unset: pip's own configuration decides (a machine whose pip finds local CPU
# wheels gets the CPU build). On a plain Linux machine PyPI's torch is the CUDA build (gigabytes of GPU libraries):
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu for CPU wheels, .../whl/cu126 for a GPU.
TORCH_INDEX_URL ?=

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0 $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

# TQDM_DISABLE: progress comes as one log line per stage and step interval, not as interleaved progress bars.
run: install $(INSTANCE)
	TQDM_DISABLE=1 $(BIN)/python -m threadembed_assets.run --source $(SOURCE) --preset $(PRESET) $(if $(WRITE),--write $(WRITE))

# The quality yardstick: every published model, the base model and the baselines on held-out IRC and Slack chat
# (../shared beside the checkout; skipped, saying why, without it). EVAL_ARGS="--stages thread_model" passes options.
eval: install
	$(BIN)/python bench/quality.py $(EVAL_ARGS)

test: install $(INSTANCE)
	$(BIN)/python -m pytest -q

# The manual (docs/, mkdocs-material) as a static site in site/; any warning fails the build.
docs: install
	$(BIN)/mkdocs build --strict

# The whole tree, the README's Python blocks included.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Search the source's conversation index (built by `make run`): make search Q="grub broke after a kernel update"
search: install
	@test -n "$(Q)" || { echo 'usage: make search Q="what to look for" [SOURCE=...]'; exit 2; }
	$(BIN)/python -m threadembed_assets.search "$(Q)" --source $(SOURCE)

# The search HTTP API on 127.0.0.1:$(PORT) (OpenAPI at /docs).
PORT ?= 8000
serve: install
	$(BIN)/python -m threadembed_assets.search.http --source $(SOURCE) --port $(PORT)

ui: install $(INSTANCE)
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000 -w workspace.yaml
