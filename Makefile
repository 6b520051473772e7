# The two commands of the README: `make run` and `make test`. Both install what
# they need first (scripts/setup.sh).

export PATH := $(HOME)/.cargo/bin:$(PATH)
# In CI (CI=true) the network-namespace tests must run, not skip.
export VOICELINK_REQUIRE_NETNS ?= $(if $(filter true 1,$(CI)),1,0)

VOICED_ARGS ?=

.PHONY: run test setup lint build

## Install what is needed, build, and run voiced in the foreground (Ctrl-C stops it).
run:
	scripts/setup.sh
	cargo build --release --workspace
	target/release/voiced $(VOICED_ARGS)

## Install what is needed and run every check and test.
test:
	scripts/setup.sh --test
	$(MAKE) lint
	cargo build --workspace --all-targets
	cargo nextest run --workspace --no-fail-fast

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

build:
	cargo build --release --workspace
