# Every target is safe to run repeatedly. See README.md for what each one is for.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
# Each clone builds into its own target/: test binaries bake in paths of the clone that built them
# (its .stack/local.env among them), so a shared build directory would run one clone's tests
# against another's stack.
export CARGO_TARGET_DIR := $(ROOT)/target
STACK := $(ROOT)/stack/stack.sh
# A profile of its own (see Cargo.toml): LTO and panic=abort suit the guest but not the host.
export GUEST_WASM := $(CARGO_TARGET_DIR)/wasm32-wasip2/release-guest/guest_transform.wasm
HOST_BIN := $(CARGO_TARGET_DIR)/release/campaign-push
# The test guests (tests/guests): a workspace of their own, built by tests/reload.rs into a
# target directory of their own (see tests/support/guests.rs).
TEST_GUESTS := --manifest-path $(ROOT)/tests/guests/Cargo.toml
# Tests run the release build with the test-only crash points of host/src/failpoint.rs.
TEST_FEATURES := --release --workspace --features campaign-push/failpoints
# The running host's public endpoint and admin API (http.listen and admin.listen defaults), and
# the admin token `make run` generates for it (git-ignored, readable by its owner only).
PUBLIC := http://127.0.0.1:9464
ADMIN := http://127.0.0.1:9465
ADMIN_TOKEN := $(ROOT)/.stack/admin-token

.PHONY: help up down status reset guest build lint test test-guests bench-guest dist run chaos bench-pipeline bench-reload reload rollback

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# The local stack's ports, overridable from the environment or the command line, e.g.
# `make up STACK_PG_PORT=25432`: STACK_KAFKA_PORT (19092, PLAINTEXT), STACK_KAFKA_SASL_PORT
# (19093, SASL_SSL), STACK_KAFKA_CONTROLLER_PORT (19094), STACK_PG_PORT (15432).
up: ## install what is missing and start the local Kafka + PostgreSQL stack (idempotent)
	@$(STACK) up

down: ## stop what `make up` started
	@$(STACK) down

status: ## show what runs where: addresses, topics, CA and env file
	@$(STACK) status

reset: ## stop the stack and wipe its local data
	@$(STACK) reset

guest: ## build the transform component (wasm32-wasip2) and report its size
	@rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
	cargo build -p guest-transform --target wasm32-wasip2 --profile release-guest
	@echo "guest: $(GUEST_WASM) ($$(stat -c %s $(GUEST_WASM)) bytes, sha256 $$(sha256sum $(GUEST_WASM) | cut -d' ' -f1))"

build: guest ## build the host binary (release)
	cargo build --release -p campaign-push

lint: ## formatting and clippy, warnings are errors
	cargo fmt --all -- --check
	cargo fmt $(TEST_GUESTS) --all -- --check
	cargo clippy $(TEST_FEATURES) --all-targets -- -D warnings
	cargo clippy -p guest-transform --target wasm32-wasip2 --profile release-guest -- -D warnings
	CARGO_TARGET_DIR=$(CARGO_TARGET_DIR)/test-guests \
	  cargo clippy $(TEST_GUESTS) --workspace --target wasm32-wasip2 --release -- -D warnings

test: up guest test-guests lint ## start the stack, build, lint, and run every test (unit, golden, integration)
	cargo test $(TEST_FEATURES) --no-run
	@# Write the build out to disk before the tests start: on a small VM, its writeback stalled
	@# Kafka's metadata log for up to 26 s, long enough to fence the broker under a running test.
	sync
	cargo test $(TEST_FEATURES)

# tests/reload.rs builds them too (the same command, so then it finds them fresh); building them
# here keeps that heavy build from running beside the stack while tests use it.
test-guests: ## build the guest variants and evil guests of tests/guests
	CARGO_TARGET_DIR=$(CARGO_TARGET_DIR)/test-guests \
	  cargo build $(TEST_GUESTS) --release --target wasm32-wasip2

dist: guest ## the release tarball: binary, guest + SHA-256, example config, systemd unit, INSTALL.md
	cargo build --release -p campaign-push
	@tarball=$$($(ROOT)/packaging/package.sh $(HOST_BIN) $(GUEST_WASM) $(CARGO_TARGET_DIR)/dist); \
	  echo "dist: $$tarball"; cat "$$tarball.sha256"; \
	  echo "guest sha256 (for guest.allowed_sha256): $$(sha256sum $(GUEST_WASM) | cut -d' ' -f1)"

run: up build ## start the stack, build, and run the service against it (Ctrl-C stops it)
	@[ -s "$(ADMIN_TOKEN)" ] || (umask 077; head -c 32 /dev/urandom | base64 | tr -d '=+/\n' > "$(ADMIN_TOKEN)")
	@set -a; . "$(ROOT)/.stack/local.env"; set +a; \
	export CAMPAIGN_PUSH__KAFKA__SECURITY__PASSWORD="$$KAFKA_SASL_PASSWORD" \
	       CAMPAIGN_PUSH__KAFKA__SECURITY__CA_FILE="$$KAFKA_CA_FILE" \
	       CAMPAIGN_PUSH__POSTGRES__PASSWORD="$$PGPASSWORD" \
	       CAMPAIGN_PUSH__POSTGRES__TLS__CA_FILE="$$PGSSLROOTCERT" \
	       CAMPAIGN_PUSH__GUEST__PATH="$(GUEST_WASM)" \
	       CAMPAIGN_PUSH__ADMIN__TOKEN_FILE="$(ADMIN_TOKEN)"; \
	exec "$(HOST_BIN)" run --config "$(ROOT)/config/local.toml"

# Runs $(1) against the host started by `make run`, and prints the guest in service before and
# after.
define with_guest_versions
	@old=$$(curl -fsS $(PUBLIC)/metrics | grep '^campaign_push_guest{') \
	  || { echo "no host answers on $(PUBLIC): start it with 'make run'"; exit 1; }; \
	$(1); echo; \
	echo "before: $$old"; \
	echo "now:    $$(curl -fsS $(PUBLIC)/metrics | grep '^campaign_push_guest{')"
endef

# POSTs to the admin API with the token as a header read from a file descriptor, so that it never
# appears on a command line.
admin_post = curl -sS -X POST -H @<(printf 'Authorization: Bearer %s\n' "$$(cat $(ADMIN_TOKEN))") $(ADMIN)$(1)

reload: ## rebuild the guest; the host started by `make run` swaps to it without a restart
	$(call with_guest_versions,$(MAKE) --no-print-directory guest; $(call admin_post,/admin/reload))

rollback: ## put the previous guest back in the host started by `make run`
	$(call with_guest_versions,$(call admin_post,/admin/rollback))

chaos: up guest ## the crash test with many more SIGKILL/restart cycles (CHAOS_CYCLES, default 50)
	CHAOS_CYCLES=$${CHAOS_CYCLES:-50} cargo test $(TEST_FEATURES) --test crash -- --nocapture

bench-pipeline: up guest ## rough end-to-end throughput on the local stack (rows/s)
	cargo bench -p campaign-push --bench pipeline

bench-reload: up guest ## swap the guest repeatedly under load: time to first new output, batch latency
	cargo bench -p campaign-push --bench reload

# Built on its own (not with -p campaign-push): cargo unifies features over the packages of one
# build, so building the two together could recompile the host.
.PHONY: bench
bench: up build ## throughput, latency, cache and cost against the machine's limits; report in target/bench-report/ (BENCH_QUICK=1: smoke run)
	cargo build --release -p campaign-bench
	$(CARGO_TARGET_DIR)/release/campaign-bench

bench-guest: guest ## benchmark the transform natively and through Wasm at fan-outs 10, 100, 10000
	cargo bench -p campaign-push --bench transform
