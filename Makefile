# Ember build, guest artifacts, lab and tests.
#
# Slow artifacts live in $(EMBER_CACHE), outside the repository, under keys
# derived from their inputs, so that a fresh clone on the same machine (CI)
# reuses them; they are copied to fixed names under build/ (gitignored).
# Binaries go to bin/ (gitignored).
#
#   make setup       install the Debian packages needed (apt-get update once)
#   make build       go build -o bin/ ./cmd/..., and bin/ember-init, bin/ember-init-run (guest/init)
#   make guest       build/guest/{minimal-vmlinux,minimal-bzImage,cloud-bzImage,
#                    cloud-vmlinux,initramfs.cpio.gz} and cloud-modules/
#   make lab         fetch/build the lab VM's kernel and initramfs
#   make demo        boot the minimal guest with Ember inside the lab
#   make test        vet, unit tests (with the race detector; those needing /dev/kvm
#                    inside the lab if this host has none), then the e2e tests in the lab
#   make fuzz        every Fuzz* target in the repository, FUZZTIME each
#   make bench-boot  boot benchmark (bin/ember-bench boot)
#   make bench-image image import, copy-on-write drives, image boot against a flat ext4 drive
#   make bench-k8s   pod start through containerd's CRI in the lab, Ember against runc
#   make bench-scale ember doctor --fix, then density and launch rates on this host
#
# Cache layout ($(EMBER_CACHE)):
#   apt-updated.stamp                  apt-get update was run (refreshed weekly)
#   debs/                              downloaded kernel packages
#   src/linux-source-<ver>/            unpacked linux-source-6.1
#   kernel/minimal-<key>/              minimal kernel build and artifacts
#   cloud/<pkg>_<ver>/                 unpacked cloud kernel package
#   guest/initramfs-<key>.cpio.gz      the test guests' initramfs
#   lab/assets-<key>/                  the lab's kernel, initramfs, MANIFEST
#   lab/jobs/                          per-run job directories (removed after)
#   gotmp/                             GOTMPDIR for go test -exec in the lab;
#                                      kvm-tests-for-lab.* and testbin/ of make test

EMBER_CACHE ?= /var/cache/ember
export EMBER_CACHE

GO ?= go
GUEST_DIR := build/guest
LAB := $(CURDIR)/bin/ember-lab
GOTMP := $(EMBER_CACHE)/gotmp
SETUP_STAMP := $(EMBER_CACHE)/apt-updated.stamp
# Days after which `make setup` runs apt-get update again (package versions
# in Debian's security repository move on and old ones disappear).
APT_UPDATE_DAYS := 7

# Debian packages: QEMU for the lab; busybox, cpio, kmod (depmod) for the
# initramfs images; the kernel source and its build dependencies; e2fsprogs
# for disk images in tests; acpica-tools (iasl) to check the ACPI tables;
# erofs-utils (mkfs.erofs) for the image store's layer filesystems;
# containerd (1.6) for the shim's tests. Node.js and npm (for E2B's SDK
# test) only where no node and npm are on PATH already: a host with
# NodeSource's nodejs has npm inside it, and Debian's npm conflicts with it.
APT_PACKAGES := qemu-system-x86 busybox-static cpio kmod linux-source-6.1 \
	build-essential bc bison flex libelf-dev libssl-dev xz-utils binutils \
	e2fsprogs ca-certificates acpica-tools iproute2 mmdebstrap erofs-utils \
	containerd


.PHONY: all setup build ember-init lab-bin guest guest-minimal guest-cloud guest-cloud-vmlinux guest-initramfs guest-cloud-initramfs guest-probe guest-debian \
	lab demo test unit-test kvm-tests-in-lab e2e fuzz bench-boot bench-io bench-api bench-snapshot bench-image bench-sandbox bench-k8s bench-scale clean

all: build

setup:
	@mkdir -p $(EMBER_CACHE)
	@if [ -z "$$(find $(SETUP_STAMP) -mtime -$(APT_UPDATE_DAYS) 2>/dev/null)" ]; then \
		echo "setup: apt-get update"; \
		apt-get update -q && touch $(SETUP_STAMP); \
	fi
	@missing=""; \
	for p in $(APT_PACKAGES); do \
		[ "$$(dpkg-query -W -f='$${db:Status-Abbrev}' $$p 2>/dev/null)" = "ii " ] || missing="$$missing $$p"; \
	done; \
	if ! command -v node >/dev/null || ! command -v npm >/dev/null; then missing="$$missing nodejs npm"; fi; \
	if [ -n "$$missing" ]; then \
		echo "setup: installing$$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

# Static binaries (CGO_ENABLED=0): net/http would otherwise link libc for
# the resolver, and the dynamic loader and libc's pages cost each VMM about
# 1.5 MiB of RSS and half a millisecond of start-up.
build: ember-init
	CGO_ENABLED=0 $(GO) build -o bin/ ./cmd/...

# The PID 1 of image VMs, which ember finds beside itself (or at
# $EMBER_INIT) and puts in their initramfs. Static like the rest, and
# stripped (-s -w): it is copied into every image VM's initrd. Two builds
# of it: ember-init serves the sandbox agent too (templates, pods);
# ember-init-run (tag ember_runonly) only runs a workload, for
# `ember run --image`, and is a third smaller: its guest unpacks it at
# every boot.
ember-init:
	CGO_ENABLED=0 $(GO) build -ldflags="-s -w" -o bin/ember-init ./guest/init
	CGO_ENABLED=0 $(GO) build -tags ember_runonly -ldflags="-s -w" -o bin/ember-init-run ./guest/init

# ember-lab alone, for targets that must not depend on the rest compiling.
lab-bin:
	CGO_ENABLED=0 $(GO) build -o bin/ ./cmd/ember-lab

guest: guest-minimal guest-initramfs guest-cloud guest-cloud-vmlinux guest-cloud-initramfs guest-probe guest-debian

# bin/ember-vmlinux is the guest kernel `ember run --image` boots by default.
guest-minimal: setup
	scripts/build-minimal-kernel.sh guest/kernel/microvm.config $(GUEST_DIR)
	@mkdir -p bin
	cp $(GUEST_DIR)/minimal-vmlinux bin/ember-vmlinux

guest-initramfs: setup lab-bin
	$(LAB) guest-initramfs --init guest/testinit/init -o $(GUEST_DIR)/initramfs.cpio.gz

# A Debian 12 root filesystem (mmdebstrap, cached by its package list), which
# the image and sandbox tests import as an OCI image.
# It is also imported into the Ember home build/guest/debian-home (with the
# blank disk and the initramfs of both inits a run shares, made by dry runs:
# the second, of the full ember-init, is the one templates use) so that the
# tests read it from there instead of importing it under the lab's emulation.
guest-debian: setup build guest-minimal
	scripts/debian-rootfs.sh $(GUEST_DIR)/debian-rootfs.tar
	bin/ember image import --rootfs --home $(GUEST_DIR)/debian-home $(GUEST_DIR)/debian-rootfs.tar e2e/debian:12 >/dev/null
	bin/ember run --image e2e/debian:12 --home $(GUEST_DIR)/debian-home --dry-run >/dev/null
	EMBER_INIT=$(CURDIR)/bin/ember-init bin/ember run --image e2e/debian:12 --home $(GUEST_DIR)/debian-home --dry-run >/dev/null

# The static test program the e2e tests put on a drive for the guest.
guest-probe:
	@mkdir -p $(GUEST_DIR)
	CGO_ENABLED=0 $(GO) build -o $(GUEST_DIR)/probe ./guest/probe

# The cloud kernel's virtio drivers are modules: its test initramfs carries
# and loads them (and finds the devices through ACPI alone).
CLOUD_MODULES := virtio_mmio,virtio_blk,virtio_net,virtio_rng,virtio_balloon,vmw_vsock_virtio_transport,ext4

guest-cloud-initramfs: guest-cloud lab-bin
	$(LAB) guest-initramfs --init guest/testinit/init --modules $(GUEST_DIR)/cloud-modules \
		--module $(CLOUD_MODULES) -o $(GUEST_DIR)/cloud-initramfs.cpio.gz

guest-cloud: setup
	scripts/fetch-cloud-kernel.sh $(GUEST_DIR)

# Ember extracts the ELF vmlinux from the bzImage itself (about a second, so
# it is simply redone, which also picks up fixes to the extractor).
guest-cloud-vmlinux: guest-cloud build
	bin/ember extract-vmlinux $(GUEST_DIR)/cloud-bzImage $(GUEST_DIR)/cloud-vmlinux.tmp
	mv $(GUEST_DIR)/cloud-vmlinux.tmp $(GUEST_DIR)/cloud-vmlinux

lab: setup lab-bin
	$(LAB) prepare

# The demo imports the Debian root filesystem into an Ember home under
# build/ and, in the lab, has emberd build a template from that image,
# create a sandbox from it and run a command in it (scripts/demo.sh). The
# dry runs make the image's initramfs (both inits') and blank drive in the home on this
# host first: the lab cannot write them there (as guest-debian does).
DEMO_HOME := $(CURDIR)/build/demo-home
demo: setup build guest lab
	bin/ember image import --rootfs --home $(DEMO_HOME) $(GUEST_DIR)/debian-rootfs.tar demo/debian:12
	bin/ember run --image demo/debian:12 --home $(DEMO_HOME) --dry-run >/dev/null
	EMBER_INIT=$(CURDIR)/bin/ember-init bin/ember run --image demo/debian:12 --home $(DEMO_HOME) --dry-run >/dev/null
	$(LAB) run --add $(DEMO_HOME) -- $(CURDIR)/scripts/demo.sh $(DEMO_HOME) demo/debian:12

# The unit tests run on this host; those that need /dev/kvm and find none
# here list themselves (internal/testkvm) and run again inside the lab,
# with the commands they start prebuilt in $(TESTBIN) (internal/testbin).
# The list's path is new each run: it is in the environment of the tests
# that read it, so the go command's test cache cannot answer for a test
# that would have listed itself (a cached pass lists nothing).
KVM_LAB_LIST := $(GOTMP)/kvm-tests-for-lab.$(shell date +%s%N)
TESTBIN := $(GOTMP)/testbin

test: setup build guest lab
	$(GO) vet ./...
	@mkdir -p $(GOTMP) && rm -f $(GOTMP)/kvm-tests-for-lab.*
	EMBER_KVM_LAB_LIST=$(KVM_LAB_LIST) $(GO) test -race ./...
	$(MAKE) --no-print-directory kvm-tests-in-lab KVM_LAB_LIST=$(KVM_LAB_LIST)
	@rm -f $(KVM_LAB_LIST)
	$(MAKE) --no-print-directory e2e

kvm-tests-in-lab:
	@rm -rf $(TESTBIN) && mkdir -p $(TESTBIN)
	CGO_ENABLED=0 $(GO) build -o $(TESTBIN)/ ./cmd/...
	CGO_ENABLED=0 $(GO) build -tags seccomptest -o $(TESTBIN)/ember-seccomptest ./cmd/ember
	GOTMPDIR=$(GOTMP) scripts/kvm-tests-in-lab.sh $(KVM_LAB_LIST) $(LAB) $(TESTBIN)

# The end-to-end tests, run inside the lab by go test -exec. The test binary
# is built in GOTMPDIR, which must be visible inside (the lab's /tmp is empty).
e2e:
	@mkdir -p $(GOTMP)
	EMBER_GUEST_DIR=$(CURDIR)/$(GUEST_DIR) GOTMPDIR=$(GOTMP) \
		$(GO) test -v -count=1 -timeout 60m -exec "$(LAB) run --" ./e2e/

# Fuzzing: every Fuzz* target of every package, found with go test -list
# (so targets added later are run too), one after the other for FUZZTIME
# each. FUZZPARALLEL workers each (one: the machine's other core is the
# lab's or another job's). FUZZMINIMIZETIME bounds the minimisation of each
# new interesting input (go test's default, 60 s, can take a short run's
# whole time). A failing input is written to the package's testdata/fuzz
# (where plain go test then runs it); every target runs, and the failures
# are listed at the end.
FUZZTIME ?= 30s
FUZZPARALLEL ?= 1
FUZZMINIMIZETIME ?= 100x

fuzz:
	@failed=""; \
	for pkg in $$($(GO) list -f '{{if or .TestGoFiles .XTestGoFiles}}{{.ImportPath}}{{end}}' ./...); do \
		names=$$($(GO) test -list '^Fuzz' $$pkg) || { echo "$$names"; exit 1; }; \
		for name in $$(echo "$$names" | grep '^Fuzz' || true); do \
			echo "fuzz: $$pkg $$name for $(FUZZTIME)"; \
			$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) \
				-fuzzminimizetime $(FUZZMINIMIZETIME) -parallel $(FUZZPARALLEL) $$pkg \
				|| failed="$$failed $$pkg.$$name"; \
		done; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: FAILED:$$failed"; exit 1; fi; \
	echo "fuzz: every target ran clean for $(FUZZTIME)"

# Boot benchmark (cmd/ember-bench, the lead's): tiny guests natively, Linux
# guests in the lab; bin/ is put first on PATH so it finds ember and ember-lab.
bench-boot: setup build guest lab
	PATH=$(CURDIR)/bin:$$PATH EMBER_GUEST_DIR=$(CURDIR)/$(GUEST_DIR) bin/ember-bench boot

# I/O benchmark: block read/write and guest<->host TCP throughput in the lab,
# Ember against QEMU's microvm.
bench-io: setup build guest lab
	PATH=$(CURDIR)/bin:$$PATH EMBER_GUEST_DIR=$(CURDIR)/$(GUEST_DIR) bin/ember-bench io

# API benchmark on this host: exec until the socket accepts, GET / and PUT
# /drives latencies.
bench-api: build
	bin/ember-bench api

# Snapshot restore on this host: tiny guest of 128 MiB and 1 GiB, Full
# snapshot, then a fresh ember per restore.
bench-snapshot: build
	bin/ember-bench snapshot

# Images (issue 10): on this host, ember image import --rootfs of the Debian
# tarball and the copy-on-write drive against a raw file; then, in the lab,
# the imported image (build/guest/debian-home) booted to its workload
# against the same files as one flat ext4 drive (build/guest/debian-flat.ext4,
# made from the tarball when older).
bench-image: setup build guest lab
	PATH=$(CURDIR)/bin:$$PATH EMBER_GUEST_DIR=$(CURDIR)/$(GUEST_DIR) bin/ember-bench image

# Sandboxes (issues 11, 12): on this host, creates through emberd with the
# tiny guest (emberd_restore_rate_per_s) and the network's set-up cost
# (netns_tap_setup_ms, fresh and pooled); then in the lab, Debian sandboxes
# created until an exec's first output byte against a cold boot of the
# image and QEMU's restore, and the same creates through E2B's JS SDK.
bench-sandbox: setup build guest lab
	cd sandbox/e2b/sdktest && { [ -d node_modules/e2b ] || npm ci --no-audit --no-fund; }
	PATH=$(CURDIR)/bin:$$PATH EMBER_GUEST_DIR=$(CURDIR)/$(GUEST_DIR) bin/ember-bench sandbox --e2b-sdk $(CURDIR)/sandbox/e2b/sdktest

# Kubernetes (issue 14): in the lab, pods started through containerd's CRI
# (RunPodSandbox, CreateContainer, StartContainer until the container's
# first output) on the ember handler and on containerd's runc by turns:
# pod_start_p50_ms and pod_start_ratio_vs_runc.
bench-k8s: setup build guest lab
	PATH=$(CURDIR)/bin:$$PATH EMBER_GUEST_DIR=$(CURDIR)/$(GUEST_DIR) bin/ember-bench k8s

# Scale on this host (tiny guests, natively): ember doctor --fix first
# raises the kernel limits SCALE_VMS VMs need and says what it changed (it
# fails, and stops here, when something it cannot fix stands in the way);
# then the density ramp to SCALE_VMS VMs and the launch and restore rates,
# each against QEMU's microvm.
SCALE_VMS ?= 4000

bench-scale: setup build
	bin/ember doctor --vms $(SCALE_VMS) --fix
	bin/ember-bench density --max $(SCALE_VMS)
	bin/ember-bench launch

clean:
	rm -rf bin build
