"""What the tests and benchmarks share and the package does not ship: servers started as child processes,
a tiny model config, the worker tests/test_crash_resume.py kills."""
