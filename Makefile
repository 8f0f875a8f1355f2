# Every target is safe to run repeatedly. See README.md for what each one is for.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
# Build artefacts live outside the work tree so that every clone on this machine (and CI's fresh
# clone) reuses one warm cache: a cold wasmtime build takes minutes on two cores.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/campaign-push/target
STACK := $(ROOT)/stack/stack.sh

.PHONY: help up down status reset test

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

up: ## install what is missing and start the local Kafka + PostgreSQL stack (idempotent)
	@$(STACK) up

down: ## stop what `make up` started
	@$(STACK) down

status: ## show what runs where: addresses, topics, CA and env file
	@$(STACK) status

reset: ## stop the stack and wipe its local data
	@$(STACK) reset

test: up ## start the stack and run every test
	cargo test --release --workspace
