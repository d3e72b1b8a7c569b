# Developer shortcuts. `make check` = lint + the test suite, as CI runs it.
.PHONY: check lint format test test-fast test-gpu
check: lint test
lint:
	ruff check .
	ruff format --check .
format:
	ruff format .
	ruff check --fix .
test:
	python -m pytest -q
# Without the slow tests (the browser, multi-process training): about a minute less.
test-fast:
	python -m pytest -q -m "not slow"
# The CUDA tests only; they fail (not skip) when there is no GPU.
test-gpu:
	python -m pytest -q -m gpu
