# Kairos developer tasks.
#
# Targets that need NATS (JetStream) and PostgreSQL first run
# `scripts/services.sh up`, which uses servers that already answer on
# $KAIROS_NATS_URL / $KAIROS_DATABASE_URL (defaults: 127.0.0.1:4222 and
# 127.0.0.1:5432) or starts private ones under .kairos/, then writes
# .kairos/env. Each recipe sources that file in the same shell line.

CARGO    ?= cargo
SERVICES := scripts/services.sh
ENV      := . ./.kairos/env

.DEFAULT_GOAL := help
.PHONY: help run test bench lint fmt services services-down schemathesis image

IMAGE ?= kairos:local

help:
	@echo "make run            services up, then kairos serve --demo"
	@echo "make test           services up, chromium, node, then the workspace tests (nextest if installed)"
	@echo "make bench          services up, then kairos bench (release build)"
	@echo "make schemathesis   schemathesis against a live Kairos, authenticated as admin"
	@echo "make lint           rustfmt --check and clippy -D warnings"
	@echo "make fmt            cargo fmt --all"
	@echo "make services       start / check NATS and PostgreSQL, write .kairos/env"
	@echo "make services-down  stop the private NATS / PostgreSQL started by services"
	@echo "make image          docker build -t \$$IMAGE (kairos:local) from the Dockerfile"

services:
	$(SERVICES) up

services-down:
	$(SERVICES) down

run:
	$(SERVICES) up && $(ENV) && $(CARGO) run -p kairos -- serve --demo

test:
	$(SERVICES) up && $(SERVICES) browser && $(SERVICES) node && $(ENV) && \
	KAIROS_PROMTOOL=$$(scripts/promtool.sh) && export KAIROS_PROMTOOL && \
	KAIROS_HELM=$$(scripts/helm.sh) && export KAIROS_HELM && \
	KAIROS_PYTHON=$$(scripts/pyenv.sh) && export KAIROS_PYTHON && \
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi

schemathesis:
	scripts/schemathesis.sh

bench:
	$(SERVICES) up && $(ENV) && $(CARGO) run --release -p kairos -- bench

# clippy also gets the services environment: sqlx's query! macros (if used)
# check SQL against DATABASE_URL at compile time.
lint:
	$(CARGO) fmt --all -- --check
	$(SERVICES) up >/dev/null && $(ENV) && $(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

image:
	docker build -t $(IMAGE) .
