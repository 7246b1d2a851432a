# `make demo` and `make test` set everything up on a fresh machine first (idempotently).

.PHONY: setup system demo test test-fast dev bench
setup:
	bash scripts/setup.sh

system:  # PostgreSQL and Chromium for the server and browser tests
	bash scripts/system-packages.sh

# `make demo DOMAIN=hwu64`: the demo domain in assets/hwu64/ on its own logs, in its own home (.tao_home/hwu64
# unless TAO_HOME is set), so two domains' prompts, checkpoints and runs never share a warehouse or an instance.
DEMO_DOMAIN = $(if $(DOMAIN),TAO_DOMAIN=$(CURDIR)/assets/$(DOMAIN)/domain.yaml TAO_HOME=$${TAO_HOME:-$(CURDIR)/.tao_home/$(DOMAIN)})
demo: setup
	$(DEMO_DOMAIN) .venv/bin/tao-dagster demo

test: setup system
	.venv/bin/python -m pytest -q

# The inner loop, under two minutes on 2 cores: no real servers, browser, embedded-model runs or slow tests.
test-fast: setup
	.venv/bin/python -m pytest -q -m "not e2e and not browser and not servers and not slow"

dev: setup
	.venv/bin/tao-dagster dev

# Each benchmark runs natively, then with oneDNN and ATen limited to AVX2 (a CPU without AVX-512, where bf16 is
# slow); tables on stdout, JSON in bench/results/ (<name>.json and <name>-avx2.json). About 80 minutes on 2 cores.
AVX2 = ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2
bench: setup
	for dispatch in "" "$(AVX2)"; do \
		env $$dispatch .venv/bin/python bench/precision.py && env $$dispatch .venv/bin/python bench/generation.py && \
		env $$dispatch .venv/bin/python bench/training.py && \
		env $$dispatch .venv/bin/python bench/round.py || exit 1; \
	done
