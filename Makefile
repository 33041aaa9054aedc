# hbmon: the two commands a user needs are `make demo` and `make test`; both run `make setup`.
#
# Targets (see `make help`):
#   setup                 Debian packages (apt, only when something is missing), .venv, P4Runtime stubs, BPF objects
#   demo [TARGET=bmv2]    kernel target (default) or bmv2 + 16 peers + controller + dashboard
#        [BFD=1]          ... plus FRR bfdd peers as BFD sessions (hbmon demo --bfd)
#   test                  the whole pytest suite (fails when a test fails or when no test ran)
#   p4-build              regenerate p4src/build/ with p4c (PATH or $P4C)
#   ptf TARGET=kernel|bmv2  the PTF data-plane suite against one target
#   bench                 benchmarks in bench/
#   fuzz                  1,000,000 fuzz frames through the kernel target's XDP program (FUZZ_FRAMES, FUZZ_SEED)
#   soak                  the replica failover test (kill -9 of the leader) 20 times (SOAK_ROUNDS)
#   lint                  ruff + mypy
#   clean / distclean     build outputs / also the virtual environment

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
VENV ?= $(ROOT)/.venv
PY := $(VENV)/bin/python
TARGET ?= kernel
PYTEST_ARGS ?=

# Debian 12 packages the project needs: BPF toolchain (kernel target), network tools (labs),
# mininet (Mininet topologies), chromium (dashboard test), postgresql (store tests), frr (bfdd:
# the BFD interop lab, demo --bfd).
APT_PACKAGES := clang llvm libbpf-dev bpftool linux-libc-dev libelf-dev zlib1g-dev pkg-config \
	iproute2 iputils-ping bridge-utils ethtool tcpdump procps mininet chromium postgresql python3-venv python3-dev gcc make \
	git ca-certificates frr
# Ubuntu (the Vagrant lab) names two of them differently.
OS_ID := $(shell . /etc/os-release 2>/dev/null; echo $$ID)
ifeq ($(OS_ID),ubuntu)
APT_PACKAGES := $(filter-out bpftool chromium,$(APT_PACKAGES)) \
	linux-tools-common linux-tools-$(shell uname -r) chromium-browser
endif
APT_GET := DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -y -q

VENV_STAMP := $(VENV)/.hbmon-installed
STUBS_STAMP := $(VENV)/.hbmon-p4runtime-stubs

.PHONY: help setup setup-apt setup-venv setup-bpf demo test p4-build ptf bench fuzz soak lint clean distclean

help:
	@sed -n '1,14p' $(ROOT)/Makefile | sed 's/^# \{0,1\}//'

setup: setup-apt setup-venv setup-bpf
	@echo "setup: done (venv $(VENV))"

# Quick when everything is installed: dpkg-query decides whether apt runs at all.
setup-apt:
	@missing=""; \
	for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' "$$p" 2>/dev/null | grep -q '^install ok installed$$' \
			|| missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then \
		echo "setup: Debian packages present"; \
	else \
		if [ "$$(id -u)" != 0 ]; then \
			echo "setup: missing Debian packages:$$missing" >&2; \
			echo "setup: run 'make setup' as root (or sudo apt-get install$$missing)" >&2; \
			exit 1; \
		fi; \
		echo "setup: installing$$missing"; \
		$(APT_GET) update; \
		$(APT_GET) install --no-install-recommends $$missing; \
	fi

$(VENV)/bin/python:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip

# the C extension (hbmon._cells) is built by this install: a changed source rebuilds it.
# hbmon requires the hbmon-responder distribution (responder/): named in the same install so
# pip takes the checkout's, never an index's.
$(VENV_STAMP): $(ROOT)/pyproject.toml $(ROOT)/responder/pyproject.toml $(ROOT)/controller/hbmon/_cells.c | $(VENV)/bin/python
	$(VENV)/bin/pip install -q -e '$(ROOT)/responder' -e '$(ROOT)[dev]'
	@touch $@

# The stubs are regenerated for the installed protobuf (never `pip install p4runtime` here).
$(STUBS_STAMP): $(VENV_STAMP) $(ROOT)/tools/gen_p4runtime_stubs.py
	$(PY) $(ROOT)/tools/gen_p4runtime_stubs.py
	@touch $@

setup-venv: $(VENV_STAMP) $(STUBS_STAMP)
	@$(PY) -c 'from p4.v1 import p4runtime_pb2, p4runtime_pb2_grpc' \
		|| { rm -f $(STUBS_STAMP); echo "setup: P4Runtime stubs do not import" >&2; exit 1; }

setup-bpf:
	@if [ -f $(ROOT)/kernel/bpf/Makefile ]; then \
		$(MAKE) --no-print-directory -C $(ROOT)/kernel/bpf; \
	else \
		echo "setup: kernel/bpf/Makefile not there yet: no BPF objects built"; \
	fi

# BFD=1 adds --bfd (FRR peers as BFD sessions) to the demo's arguments
demo: setup
	$(VENV)/bin/hbmon demo --target $(TARGET) $(if $(filter 1 yes true,$(BFD)),--bfd) $(DEMO_ARGS)

# pytest's exit 5 means no test was collected: that is a failure here, said out loud.
test: setup
	@cd $(ROOT); rc=0; \
	$(PY) -m pytest -ra -p no:cacheprovider tests/ $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: FAILED: no test ran" >&2; \
	elif [ $$rc -ne 0 ]; then echo "make test: FAILED (pytest exit $$rc)" >&2; \
	else echo "make test: OK"; fi; \
	exit $$rc

# p4-build and ptf belong to the data-plane engineers; these recipes defer to their tools.
p4-build: setup-venv
	@if [ -f $(ROOT)/p4src/Makefile ]; then $(MAKE) --no-print-directory -C $(ROOT)/p4src; \
	else echo "p4-build: p4src/Makefile not there yet" >&2; exit 1; fi

ptf: setup
	$(PY) $(ROOT)/tools/ptf_run.py --target $(TARGET) $(PTF_ARGS)

# every bench/bench_*.py one at a time, then a summary with ratios (BENCH_ARGS: see --help)
bench: setup
	cd $(ROOT) && $(PY) bench/run_all.py $(BENCH_ARGS)

# the CI fuzz test (tests/kernel/test_fuzz_xdp.py) at ten times its CI volume; -s prints the
# frames per class and what the data plane made of them
FUZZ_FRAMES ?= 1000000
FUZZ_VETH_FRAMES ?= 200000
FUZZ_SEED ?= 20261205
SOAK_ROUNDS ?= 20
soak: setup
	cd $(ROOT) && HBMON_FAILOVER_ROUNDS=$(SOAK_ROUNDS) \
		$(PY) -m pytest -s -p no:cacheprovider -o timeout=0 tests/integration/test_failover.py $(PYTEST_ARGS)

fuzz: setup
	cd $(ROOT) && HBMON_FUZZ_FRAMES=$(FUZZ_FRAMES) HBMON_FUZZ_VETH_FRAMES=$(FUZZ_VETH_FRAMES) \
		HBMON_FUZZ_SEED=$(FUZZ_SEED) \
		$(PY) -m pytest -s -p no:cacheprovider tests/kernel/test_fuzz_xdp.py $(PYTEST_ARGS)

lint: setup-venv
	cd $(ROOT) && $(VENV)/bin/ruff check controller responder kernel topo tests tools bench ptf_tests
	cd $(ROOT) && $(VENV)/bin/mypy

clean:
	@if [ -f $(ROOT)/kernel/bpf/Makefile ]; then $(MAKE) --no-print-directory -C $(ROOT)/kernel/bpf clean; fi
	rm -rf $(ROOT)/build $(ROOT)/.pytest_cache $(ROOT)/.mypy_cache $(ROOT)/.ruff_cache
	find $(ROOT) -name __pycache__ -type d -not -path '$(VENV)/*' -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
