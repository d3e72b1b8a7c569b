# Developer shortcuts. `make check` = lint + the test suite, as CI runs it.
.PHONY: check lint format test
check: lint test
lint:
	ruff check .
	ruff format --check .
format:
	ruff format .
	ruff check --fix .
test:
	python -m pytest -q
