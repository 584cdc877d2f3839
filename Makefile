# Two commands a new user needs: `make demo` and `make test`. Each creates or refreshes the
# virtual environment at .venv/ when it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
AFFECTFLOW := $(VENV)/bin/affectflow
DEMO_DATA := artifacts/demo-data

.PHONY: demo test bench venv clean-demo config-reference

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(AFFECTFLOW) demo-data $(DEMO_DATA)
	$(AFFECTFLOW) demo-models $(DEMO_DATA)
	$(AFFECTFLOW) run pretrain --config configs/demo.yaml --run-id demo
	$(AFFECTFLOW) run pretrain --config configs/demo_emotic.yaml --run-id demo-emotic
	$(AFFECTFLOW) run cternet --config configs/cternet_demo.yaml

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/python -m bench --quick

# configs/README.md's key reference, generated from the stages' params models (a test checks it)
config-reference: $(STAMP)
	$(AFFECTFLOW) config reference --write

clean-demo:
	rm -rf $(DEMO_DATA) artifacts/runs
