# `make demo` and `make test` set everything up on a fresh machine first (idempotently).

.PHONY: setup system demo test dev bench
setup:
	bash scripts/setup.sh

system:  # PostgreSQL and Chromium for the server and browser tests
	bash scripts/system-packages.sh

demo: setup
	.venv/bin/tao-dagster demo

test: setup system
	.venv/bin/python -m pytest -q

dev: setup
	.venv/bin/tao-dagster dev

bench: setup  # generation, training, one demo round: tables on stdout, JSON in bench/results/ (about 50 minutes)
	.venv/bin/python bench/generation.py && .venv/bin/python bench/training.py && .venv/bin/python bench/round.py
