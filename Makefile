# The two quick-start commands: `make demo` and `make test`. Each builds what it needs.
VENV   ?= .venv
PY     := $(VENV)/bin/python
WHEELS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

.PHONY: demo test lint bench clean-venv spice-deps

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q $(WHEELS) torch==2.13.0
	$(PY) -m pip install -q $(WHEELS) -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/neuromorph demo

test: $(VENV)/.installed spice-deps
	$(PY) -m pytest -q

# ngspice (program + shared library) for the SPICE tests (tests/test_spice.py); installed when missing and root.
spice-deps:
	@if command -v ngspice >/dev/null 2>&1 && ldconfig -p | grep -q "libngspice\.so "; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ngspice libngspice0 libngspice0-dev; \
	else echo "ngspice missing: apt-get install ngspice libngspice0 libngspice0-dev (the SPICE tests skip, or fail with CI=true)"; fi

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check neuromorph tests benchmarks

clean-venv:
	rm -rf $(VENV)
