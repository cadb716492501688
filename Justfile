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
test-quick *args: test-deps
    {{python}} -m pytest -m "not slow" {{args}}

# Measure durable outbox enqueue throughput.
bench-outbox:
    {{python}} bench/bench_outbox.py

# Measure one-hour and one-day archive queries over 100,000 alarms, folder and S3.
bench-archive *args:
    {{python}} bench/bench_archive.py {{args}}

# Compare deduplicated notification with Alertmanager in HA mode (4 to 5 minutes;
# installs Debian's prometheus-alertmanager when missing).
bench-dedup *args:
    {{python}} bench/bench_dedup.py {{args}}

# Compare failure detection, idle traffic and footprint of real agents with
# Serf for N = 5, 20 and 50, and count false positives of a lossy Serf mesh
# (about 40 minutes; needs root for network namespaces; installs Debian's serf
# and iptables when missing).
bench-detect *args:
    command -v serf >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq serf)
    command -v iptables >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables)
    {{python}} bench/detect.py {{args}}

# Simulate 100 lossy members with starved ones (three seeds) and 1,000 members,
# each for 10 simulated minutes, and check the simulator's targets.
bench-sim *args:
    {{python}} bench/sim.py {{args}}

# Run randomized incident scenarios (clean, reporter crash, partition) on virtual time.
bench-incidents count="200":
    {{python}} bench/incident_scenarios.py {{count}}
