# The one entry point for building, checking and testing (style.md §4.14).
# `make ci` is the test command of the README and the only thing .ci/run calls.

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: ci services toolchain fmt fmt-check lint test e2e conformance plugins fuzz-smoke bench clean-test-dbs openapi up down

ci: toolchain services fmt-check plugins lint test conformance

toolchain:
	scripts/toolchain.sh

# The whole stack on this machine, then a governed request to try; `make down PURGE=1` also
# drops its database and keys (README, Quick start).
up:
	scripts/stack.sh up

down:
	scripts/stack.sh down $(if $(PURGE),--purge)

services:
	scripts/services.sh

fmt:
	$(CARGO) fmt --all
	$(CARGO) fmt --manifest-path plugins/Cargo.toml --all

fmt-check:
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path plugins/Cargo.toml --all -- --check

lint:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

clean-test-dbs:
	scripts/drop-test-dbs.sh

# Unit, store, end-to-end and CLI tests; the database tests need `make services`.
test: clean-test-dbs
	# The S3-compatible server of the audit export tests (moto, pinned Python 3.12 venv).
	scripts/conformance-venv.sh tests/s3
	$(CARGO) test --workspace --locked -- --skip conformance_
	# The audit ledger's fault run, short form (own Postgres and Redis on free ports).
	scripts/audit-fault-run.sh --short
	# deploy/: metric names, variables, YAML/JSON, alert rules (promtool when present).
	scripts/check-deploy.sh
	# The one-command stack end to end (debug binary, ports +20000, Redis database 2).
	tests/stack/run.sh

e2e: services clean-test-dbs
	scripts/conformance-venv.sh tests/s3
	$(CARGO) test -p tests-e2e --locked

# Rewrites docs/openapi.json from the route tables (a test fails while it is stale).
openapi:
	UPDATE_OPENAPI=1 $(CARGO) test -p control-api --lib --locked -- openapi_document_is_committed

# The real Caracal 1.0 Python clients (Python 3.12 venv) against our servers, and
# schemathesis against the admin API's OpenAPI document.
conformance: services clean-test-dbs
	scripts/conformance-venv.sh
	scripts/conformance-venv.sh tests/api-fuzz
	$(CARGO) test -p tests-e2e --test conformance --locked -- --nocapture
	$(CARGO) test -p tests-e2e --test schemathesis --locked -- --nocapture

# Short coverage-guided runs of every fuzz target (nightly toolchain, cargo-fuzz from
# crates.io). FUZZ_SECONDS per target, default 20.
FUZZ_SECONDS ?= 20
fuzz-smoke:
	scripts/fuzz-smoke.sh $(FUZZ_SECONDS)

# STS mint load benchmark (release build, pinned with taskset; see bench/README.md).
bench:
	bench/load/sts_mints.sh

# The WebAssembly plugins: plugins/ is its own workspace, built for wasm32-wasip2 into
# components (plugins/target/wasm32-wasip2/release/*.wasm), with native unit tests and clippy
# on both targets. Before `lint` and `test` in `ci`: tests-fixtures builds these components.
PLUGINS_MANIFEST := --manifest-path plugins/Cargo.toml
plugins:
	rustup target list --installed | grep -q wasm32-wasip2 || rustup target add wasm32-wasip2
	$(CARGO) build $(PLUGINS_MANIFEST) --workspace --target wasm32-wasip2 --release --locked
	$(CARGO) test $(PLUGINS_MANIFEST) --workspace --locked
	$(CARGO) clippy $(PLUGINS_MANIFEST) --workspace --all-targets --locked -- -D warnings
	$(CARGO) clippy $(PLUGINS_MANIFEST) --workspace --target wasm32-wasip2 --locked -- -D warnings
