# `make demo` and `make test` set everything up on a fresh machine first (idempotently).

.PHONY: setup demo test dev
setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/tao-dagster demo

test: setup
	.venv/bin/python -m pytest -q

dev: setup
	.venv/bin/tao-dagster dev
