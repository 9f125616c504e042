# The two quick-start commands: `make demo` and `make test`. Each builds what it needs.
VENV   ?= .venv
PY     := $(VENV)/bin/python
WHEELS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

.PHONY: demo test lint bench clean-venv

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q $(WHEELS) torch==2.13.0
	$(PY) -m pip install -q $(WHEELS) -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/neuromorph demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check neuromorph tests benchmarks

clean-venv:
	rm -rf $(VENV)
