# evsed developer entry points. `make demo` and `make test` are the README's two commands.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup system-deps demo test test-vm deb lint typecheck bench clean

# Debian packages the tests use: journald, busctl and systemd-analyze (systemd), dbus-daemon,
# gdbus (libglib2.0-bin), runuser (util-linux), ip (iproute2); the firmware installers rauc and
# swupdate with openssl, cpio and squashfs-tools to build signed bundles and .swu images.
# The .deb test: dpkg-dev, debhelper, dh-virtualenv, lintian, debootstrap (and a compiler for
# wheels without binaries).
SYSTEM_PACKAGES := systemd dbus-daemon libglib2.0-bin util-linux iproute2 \
	dpkg-dev debhelper dh-virtualenv fakeroot build-essential python3.11-venv lintian debootstrap \
	rauc swupdate openssl cpio squashfs-tools
system-deps:
	@if ! command -v busctl >/dev/null || [ ! -x /lib/systemd/systemd-journald ] \
		|| ! command -v dbus-daemon >/dev/null || ! command -v gdbus >/dev/null \
		|| ! command -v ip >/dev/null || ! command -v dh_virtualenv >/dev/null \
		|| ! command -v lintian >/dev/null || ! command -v debootstrap >/dev/null \
		|| ! command -v rauc >/dev/null || ! command -v swupdate >/dev/null \
		|| ! command -v cpio >/dev/null || ! command -v openssl >/dev/null \
		|| ! command -v mksquashfs >/dev/null; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $(SYSTEM_PACKAGES); fi

# The .deb, as packaging/README.md describes (output in build/deb/).
deb:
	packaging/build-deb.sh --lintian

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP) system-deps
	$(BIN)/python -m testcsms.demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check service hal testcsms

typecheck: $(STAMP)
	$(BIN)/mypy --strict service hal

test: $(STAMP) system-deps lint typecheck
	$(BIN)/pytest -q
	$(MAKE) test-vm

# The tests that need the VM kernel (gpio-sim, vcan): real gpiod and SocketCAN.
VM_RUN := ../shared/vm/run
test-vm: $(STAMP)
	@if [ -x $(VM_RUN) ]; then \
		$(VM_RUN) --timeout 900 -- env TMPDIR=/dev/shm $(BIN)/pytest -q -p no:cacheprovider \
			-m vm tests/hal tests/packaging; \
	else echo "test-vm: $(VM_RUN) not found; the VM group did not run"; fi

bench: $(STAMP) system-deps
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) demo-state .pytest_cache .mypy_cache .ruff_cache
