# The two set-up commands of README.md: `make demo` and `make test`. Each creates the virtual
# environment first if it is missing.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.vo_node-installed

.PHONY: venv demo test bench clean

venv: $(STAMP)

$(STAMP): requirements.txt setup.py scripts/setup_venv.sh
	bash scripts/setup_venv.sh $(VENV)
	touch $(STAMP)

# The demo starts DDS (the node and the bag player), so it runs in a private network namespace.
# `make demo ARGS=--offline` tracks without ROS 2.
demo: $(STAMP)
	bash scripts/netns_run.sh $(PYTHON) -m vo_node.demo $(ARGS)

test: $(STAMP)
	bash scripts/netns_run.sh $(PYTHON) -m pytest -q tests $(ARGS)

bench: $(STAMP)
	$(PYTHON) -m vo_node.bench $(ARGS)

clean:
	rm -rf $(VENV) build outputs
