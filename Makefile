# The one entry point for building, checking and testing (style.md §4.14).
# `make ci` is the test command of the README and the only thing .ci/run calls.

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: ci services toolchain fmt fmt-check lint test e2e plugins conformance fuzz-smoke bench clean-test-dbs

ci: toolchain services fmt-check lint test

toolchain:
	scripts/toolchain.sh

services:
	scripts/services.sh

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

clean-test-dbs:
	scripts/drop-test-dbs.sh

# Unit, store, end-to-end and CLI tests; the database tests need `make services`.
test: clean-test-dbs
	$(CARGO) test --workspace --locked

e2e: services clean-test-dbs
	$(CARGO) test -p tests-e2e --locked

# Targets that later issues fill in: plugins (issue 6), conformance with the Caracal 1.0
# Python clients (issue 3 onwards), fuzz smoke runs and benchmarks (bench/README.md).
plugins conformance fuzz-smoke bench:
	@echo "make $@: nothing to run yet; see docs/ARCHITECTURE.md (crate index) for the issue that adds it"
