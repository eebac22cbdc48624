# Everything a newcomer needs: `make demo` and `make test`, on a machine with only Python and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Two: the machine's cores. conftest's scheduler groups the tests (a file whole; the embedded stacks one after
# another, first); --no-loadscope-reorder keeps that order instead of xdist's largest group first.
TEST_WORKERS ?= 2

.PHONY: demo dev test lint bench bench-routing bench-cost bench-faults simulate clean

# pip installs only uv; uv installs the rest, several times faster than pip.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/python -m uv pip install --quiet --python $(BIN)/python -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)  ## run the whole system on this machine and push a few room photos through it
	$(BIN)/spillway demo

dev: $(STAMP)  ## start the embedded stack and keep it up (prints the API URL)
	$(BIN)/spillway dev

test: $(STAMP)  ## the test suite, including the embedded stack end to end; TEST_WORKERS=0 runs it in one process
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

lint: $(STAMP)
	$(BIN)/ruff check functions infra sim tests bench
	$(BIN)/cfn-lint template.yaml

bench: $(STAMP)  ## load benchmark on fresh embedded stacks (prints figures, asserts nothing); BENCH_ARGS=--quick
	$(BIN)/python bench/load.py $(BENCH_ARGS)

bench-routing: $(STAMP)  ## mixed workload with outages: where work went, what it cost (prints); BENCH_ARGS=--quick
	$(BIN)/python bench/routing.py $(BENCH_ARGS)

bench-cost: $(STAMP)  ## what a job costs on AWS by path ($ per 1M jobs) and the idle fleet per month (prints)
	$(BIN)/python bench/cost.py $(BENCH_ARGS)

bench-faults: $(STAMP)  ## each GPU fault on one stack: time to detect and to move on, medians of 3 runs (prints)
	$(BIN)/python bench/faults.py $(BENCH_ARGS)

simulate: $(STAMP)  ## one simulated day of the default scenario through every policy: table, plots in sim-output/; SIM_ARGS=--sweep cloud_gpus=0,1,2,3
	$(BIN)/spillway simulate $(SIM_ARGS)

clean:
	rm -rf $(VENV) .spillway .pytest_cache sim-output
