# rctl: the two commands users need are `make demo` and `make test` (README "Quick start").
# Run as root on Debian 12. Every target is idempotent.

SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO ?= cargo
# The static test server gets its own target dir: RUSTFLAGS differ, and sharing the main
# dir would make every build after it recompile the workspace.
STATIC_DIR := /var/cache/rctl/static
TESTSERVER := $(STATIC_DIR)/x86_64-unknown-linux-gnu/release/rctl-testserver
CLUSTER := deploy/local/cluster
# Debian packages the build, the local cluster and the tests need (gcc and libc6-dev build
# the agent tests' static syscall probe, agent/tests/common/probe.c).
DEB_PKGS := etcd-server etcd-client docker-registry busybox-static iproute2 iptables \
	protobuf-compiler curl jq util-linux haproxy nginx wrk umoci skopeo \
	gcc libc6-dev tmux

# The peers the benchmarks compare with (only `make bench` installs them).
BENCH_PKGS := docker.io podman runc time valgrind

.PHONY: help deps build testserver demo down test bench lint

help:
	@echo "make demo   install what is missing, build, start a local 3-host cluster, deploy web=3"
	@echo "make down   remove the local cluster (processes, namespaces, bridge, cgroups, state)"
	@echo "make test   everything CI runs (.ci/run): deps, build, lint, cargo nextest run --workspace"
	@echo "make build  cargo build --workspace --bins, plus the static test server"
	@echo "make deps   apt-get install the Debian packages that are missing; cargo-nextest"
	@echo "make lint   cargo fmt --check and clippy -D warnings"
	@echo "make bench  run bench/all (every side-by-side benchmark)"

deps:
	@[[ $$(id -u) == 0 ]] || { echo "error: run as root (apt-get, namespaces and cgroups need it)" >&2; exit 1; }
	@missing=""; for p in $(DEB_PKGS); do \
		dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [[ -n "$$missing" ]]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@command -v $(CARGO) >/dev/null || { echo "error: cargo not found; install Rust >= 1.85 (rustup)" >&2; exit 1; }
	@command -v cargo-nextest >/dev/null || $(CARGO) install cargo-nextest --locked

build:
	$(CARGO) build --workspace --bins
	@$(MAKE) --no-print-directory testserver

testserver:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release -p rctl-testserver \
		--target x86_64-unknown-linux-gnu --target-dir $(STATIC_DIR)

demo: deps build
	deploy/local/demo/run

down:
	$(CLUSTER) down

test: deps build lint
	@if command -v cargo-nextest >/dev/null; then \
		echo "cargo nextest run --workspace"; $(CARGO) nextest run --workspace; \
	else \
		echo "cargo-nextest missing; falling back to cargo test"; $(CARGO) test --workspace; \
	fi

bench:
	@$(MAKE) --no-print-directory deps DEB_PKGS="$(DEB_PKGS) $(BENCH_PKGS)"
	bench/all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
