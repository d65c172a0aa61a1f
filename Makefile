# Messenger platform: services, operator and their tests.
# `make test` is the one test command; see README.md.

SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/messenger-target

# Benchmarks measure speed (numbers in docs/benchmarks.md); tests never time anything.
.PHONY: help run build up down compose-env build-crates test test-deps sqlx-prepare fmt lint bench bench-operator-memory run-auth run-users run-friends run-chat run-gateway

# docker compose v2, else docker-compose (v1, also what drives podman's Docker API:
# DOCKER_HOST=unix:///run/podman/podman.sock make up).
COMPOSE ?= $(shell if docker compose version >/dev/null 2>&1; then echo "docker compose"; else echo docker-compose; fi)

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-22s %s\n", $$1, $$2}'

build: compose-env ## build the images of the compose stack (docker-compose.yml) from source
	DOCKER_BUILDKIT=1 COMPOSE_DOCKER_CLI_BUILD=1 $(COMPOSE) build

up: compose-env ## start the compose stack: dependencies + five services; gateway on http://localhost:8080
	$(COMPOSE) up -d
	@echo "up: REST API on http://localhost:8080/v1/ (gRPC: auth 8001, chat 8002, friends 8003, users 8004); make down stops it"

# Every service needs the same INTERNAL_AUTH_KEY; compose reads it from .env (gitignored).
compose-env:
	@grep -qs '^INTERNAL_AUTH_KEY=' .env || { \
	  echo "INTERNAL_AUTH_KEY=$$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" >>.env; \
	  echo "compose: wrote a random INTERNAL_AUTH_KEY to .env"; }

down: compose-env ## stop and remove the compose stack's containers (data volumes stay; docker compose down -v drops them)
	$(COMPOSE) down

build-crates: ## build every crate
	cargo build --workspace --locked

test: ## start/install PostgreSQL, Redis, tansu, DocumentDB and kube-apiserver, then fmt, clippy and all tests
	scripts/test.sh

test-deps: ## only start/install the components the tests need
	scripts/test-deps.sh /dev/null

sqlx-prepare: ## regenerate .sqlx/ (compile-time SQL checks) after changing a query or migration
	scripts/test-deps.sh /dev/null
	scripts/sqlx-prepare.sh

fmt: ## format the workspace
	cargo fmt --all

lint: ## clippy with warnings as errors
	cargo clippy --workspace --all-targets --locked -- -D warnings

bench: ## run the benchmarks whose numbers are in docs/benchmarks.md (starts PostgreSQL, Redis, tansu, DocumentDB, and a kube-apiserver of its own)
	env_file=$$(mktemp) && scripts/test-deps.sh "$$env_file" && source "$$env_file" && rm -f "$$env_file" && \
	cargo bench --locked -p messenger-operator --bench reconcile && \
	scripts/bench-operator-memory.sh && \
	cargo bench --locked -p messenger-auth --bench rpc && \
	cargo bench --locked -p messenger-common --features testing --bench outbox && \
	cargo bench --locked -p messenger-chat --bench rpc && \
	cargo bench --locked -p messenger-gateway --bench http

bench-operator-memory: ## the operator's RSS idle and with 1000 MessengerApps, against a kube-apiserver of its own (OPERATOR_MEMORY_APPS=N)
	scripts/bench-operator-memory.sh

run: ## the whole messenger in one process, in memory: `messenger dev` (release build; ARGS="--seed-demo" etc.)
	cargo run --release --locked -p messenger-cli --bin messenger -- dev $(ARGS)

run-auth: ## run the auth service against local PostgreSQL/Redis/Kafka
	cargo run --locked -p messenger-auth

run-users: ## run the users service against local PostgreSQL/Redis/Kafka
	cargo run --locked -p messenger-users

run-friends: ## run the friends service against local PostgreSQL/Redis/Kafka
	cargo run --locked -p messenger-friends

run-chat: ## run the chat service on process memory (set MONGODB_URI and CHAT_STORE=mongodb for MongoDB)
	CHAT_STORE=$${CHAT_STORE:-memory} cargo run --locked -p messenger-chat

run-gateway: ## run the REST gateway on :8080 in front of the four services (run-auth ... run-chat)
	cargo run --locked -p messenger-gateway

-include mk/k8s.mk
