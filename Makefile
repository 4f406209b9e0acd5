# cloudmount — the two commands a newcomer needs:
#   make demo    install what is missing (fuse3, ...), build, mount a sample cloud folder
#   make test    install what the tests need, build, run every test
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
DEMO_MOUNT ?= $(HOME)/cloudmount-demo
CARGO ?= cargo

.PHONY: deps build demo test lint install install-units uninstall bench

deps:
	@./scripts/install-deps.sh

build:
	$(CARGO) build --release

demo: deps build
	./target/release/cloudmount demo $(DEMO_MOUNT)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

# cargo-nextest when present (each test in its own process), else cargo test. No test
# is ever retried: a flaky test is a failing test.
test: deps
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --all-targets --no-fail-fast --failure-output immediate-final; \
	else \
		$(CARGO) test --all-targets; \
	fi

install: build
	install -Dm755 target/release/cloudmount $(DESTDIR)$(BINDIR)/cloudmount
	$(DESTDIR)$(BINDIR)/cloudmount install-helpers --dir $(DESTDIR)/sbin

# User units into ~/.config/systemd/user (run as the user who mounts).
install-units:
	mkdir -p $(HOME)/.config/systemd/user
	for u in cloudmount.service cloudmount@.service; do \
		sed 's#@BINDIR@#$(BINDIR)#g' systemd/$$u > $(HOME)/.config/systemd/user/$$u; done
	@echo "now: systemctl --user daemon-reload && systemctl --user enable --now cloudmount"

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/cloudmount $(DESTDIR)/sbin/mount.cloudmount $(DESTDIR)/sbin/mount.fuse.cloudmount

bench: deps build
	./bench/run.sh
