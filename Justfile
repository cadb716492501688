# Recipes for working on alarminati. Run them through ./dev, which creates the
# virtualenv first: ./dev demo, ./dev test.

python := ".venv/bin/python"

# List the recipes.
default:
    @just --list

# Run 3 agents on loopback, kill one, and show the one alarm and its resolution.
demo:
    {{python}} -m mesh.cli demo

# Install the system packages the tests need (when missing).
test-deps:
    sh scripts/install-test-deps

# Run the whole test suite (unit, property and real-process tests).
test *args: test-deps
    {{python}} -m pytest {{args}}

# Run only the quick tests, without real processes.
test-quick *args:
    {{python}} -m pytest -m "not slow" {{args}}

# Measure durable outbox enqueue throughput.
bench-outbox:
    {{python}} bench/bench_outbox.py
