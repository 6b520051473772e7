# The two commands of the README: `make run` and `make test`. Both install what
# they need first (scripts/setup.sh).

export PATH := $(HOME)/.cargo/bin:$(PATH)
# In CI (CI=true) the network-namespace tests must run, not skip, and the
# packages are built, installed and removed again.
IN_CI := $(if $(filter true 1,$(CI)),1,)
export VOICELINK_REQUIRE_NETNS ?= $(if $(IN_CI),1,0)
# Likewise the tray's desktop test (Xvfb, xfce4-panel, dunst): it must run in CI.
export VOICELINK_REQUIRE_DESKTOP ?= $(if $(IN_CI),1,0)
# A fresh clone builds once: incremental caches would only double the disk it needs.
ifeq ($(IN_CI),1)
export CARGO_INCREMENTAL ?= 0
endif

VOICED_ARGS ?=

.PHONY: run test lint build package package-test fuzz bench

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
ifeq ($(IN_CI),1)
	$(MAKE) package-test
else
	@echo "(package install test skipped: it installs and removes a .deb; run 'make package-test' as root, CI does)"
endif
	cargo nextest run --workspace --no-fail-fast

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

build:
	cargo build --release --workspace

## Build the .deb, .rpm, source archive, Homebrew formula and PKGBUILD into dist/.
package: build
	scripts/setup.sh --package
	packaging/build.sh

## Install the .deb on this machine, check it, remove it (needs root).
package-test: package
	packaging/test-install.sh

## Fuzz the signaling decoder and the jitter buffer for a while each
## (cargo-fuzz on the stable toolchain, which it needs RUSTC_BOOTSTRAP for).
FUZZ_SECONDS ?= 60
fuzz:
	scripts/setup.sh --fuzz
	cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run wire_decode -- -max_total_time=$(FUZZ_SECONDS)
	cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run jitter_buffer -- -max_total_time=$(FUZZ_SECONDS)

## Measure calls over impaired links (needs root: network namespaces): one measured
## call per profile between two daemons, BENCH_QUALITY_CALLS - 1 more scored for
## the median, then BENCH_SETUP_CALLS short calls per profile to count failed
## setups; written to BENCHMARKS.md and bench/results/.
## BENCH_ARGS passes options, e.g. BENCH_ARGS="--profiles clean,loss5 --keep".
BENCH_SETUP_CALLS ?= 20
## Calls per profile whose sound is scored, for a median PESQ and mouth-to-ear:
## one lossy call's score varies by ±0.3 with where the losses fall.
BENCH_QUALITY_CALLS ?= 9
## Calls per outage profile, for the spread of audio back after the link returns.
BENCH_OUTAGE_CALLS ?= 3
BENCH_ARGS ?=
bench:
	scripts/setup.sh --bench
	cargo build --release --workspace
	target/release/voicelink-bench --voiced target/release/voiced --out bench/results --markdown BENCHMARKS.md --setup-calls $(BENCH_SETUP_CALLS) --quality-calls $(BENCH_QUALITY_CALLS) --outage-calls $(BENCH_OUTAGE_CALLS) $(BENCH_ARGS)
