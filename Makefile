# The two commands of the README's quickstart, and a few more.
.PHONY: demo test test-unit lint docs setup clean bench bench-quick faults faults-quick coldstart tracing

setup:
	@bash scripts/setup.sh

## Run the quickstart notebook on a local Ray cluster with the offline demo model, then stop it.
demo: setup
	.venv/bin/nbserve demo

## Install everything and run the whole test suite (CI runs exactly this).
test: setup
	bash scripts/install_test_tools.sh
	.venv/bin/ruff check nbserve tests scripts benchmarks
	.venv/bin/ruff format --check nbserve tests scripts benchmarks
	.venv/bin/mypy nbserve
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict -d artifacts/site
	.venv/bin/python -m pytest

## The fast tests only: no Ray cluster, no engine.
test-unit: setup
	.venv/bin/python -m pytest -m "not integration"

## Raw vLLM, Ray Serve LLM defaults, nbserve (also requiring keys) and a Transformers baseline,
## one after another, loaded by `vllm bench serve` and `nbserve bench`; writes
## docs/results/BENCHMARKS.md (15 min, and 5 to 7 more for the keyed path).
bench: setup
	.venv/bin/python -m benchmarks

## The same with a few prompts and no sweep (a smoke run); writes artifacts/BENCHMARKS-quick.md.
bench-quick: setup
	.venv/bin/python -m benchmarks --quick

## Faults under load on the local cluster (engine updates, scale-down, a killed replica,
## overload, listeners and a secret): writes docs/results/RELIABILITY.md (20 min on 2 cores).
faults: setup
	.venv/bin/python -m benchmarks.faults

## The mix with no fault, the dropped session and the search (6 min); writes artifacts/RELIABILITY-quick.md.
faults-quick: setup
	.venv/bin/python -m benchmarks.faults --quick

## Cold starts from zero replicas to the first token, phase by phase, with and without the
## model-download task nbserve skips for local paths: writes docs/results/COLDSTART.md (15 min).
coldstart: setup
	.venv/bin/python -m benchmarks.coldstart

## Raw vLLM at its best here beside nbserve, each plain and traced: the targets, what tracing
## costs and each request's phases side by side; writes docs/results/TRACING.md (10 min).
tracing: setup
	.venv/bin/python -m benchmarks.tracing

## The documentation site (docs/, mkdocs.yml) in strict mode: any warning fails; artifacts/site.
docs: setup
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict -d artifacts/site

lint: setup
	.venv/bin/ruff check nbserve tests scripts benchmarks
	.venv/bin/ruff format --check nbserve tests scripts benchmarks
	.venv/bin/mypy nbserve

clean:
	-.venv/bin/nbserve down
	rm -rf artifacts .pytest_cache .mypy_cache .ruff_cache
