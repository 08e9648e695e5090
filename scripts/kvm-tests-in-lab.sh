#!/usr/bin/env bash
# Runs inside the lab the unit tests that testkvm.Need skipped on this host
# for want of a usable /dev/kvm (make test's host pass listed them in LIST:
# package directory, tab, top-level test), with the race detector, so that
# the suite boots its VMs whatever the host has. Nothing listed (a host
# with /dev/kvm ran them all) is nothing to do.
#
# The lab's emulated nested virtualization now and then hangs a guest's
# vCPUs for good (see README, "The lab"); ember-lab reruns what a hung or
# crashed lab cut short, but a test whose own guest hung just fails. So a
# test that fails is run once more, in a fresh lab, and the retry is
# printed: a test that fails twice fails the run.
#
# usage: kvm-tests-in-lab.sh LIST LAB TESTBIN
#   LAB      the ember-lab binary
#   TESTBIN  a directory of the commands the tests run, prebuilt on this
#            host (see internal/testbin): the Go toolchain does not run in
#            the lab
set -euo pipefail
list=$1 lab=$2 testbin=$3
if [ ! -s "$list" ]; then
	echo "kvm-tests-in-lab: no test was skipped for want of /dev/kvm"
	exit 0
fi
dirs=$(cut -f1 "$list" | sort -u)
tests=$(cut -f2 "$list" | sort -u)
echo "kvm-tests-in-lab: $(echo "$tests" | wc -l) tests of $(echo "$dirs" | wc -l) packages, in the lab"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
# run TESTS DIRS: -p 1, one lab at a time (each takes both cores); -v,
# ember-lab follows the tests' ends, so that a lab fault reruns only the
# tests it cut short.
run() {
	# shellcheck disable=SC2086 # $2 is a list of paths without spaces
	EMBER_TEST_BIN=$testbin go test -race -count=1 -p 1 -v -timeout 30m \
		-exec "$lab run --" -run "^($(echo "$1" | paste -sd'|'))\$" $2 2>&1 | tee "$out"
	return "${PIPESTATUS[0]}"
}
if run "$tests" "$dirs"; then
	exit 0
fi
failed=$(sed -n 's/^--- FAIL: \([^ /]*\) .*/\1/p' "$out" | sort -u)
pkgs=$(sed -n 's/^FAIL\t\([^[:space:]]*\).*/\1/p' "$out" | sort -u)
if [ -z "$failed" ] || [ -z "$pkgs" ]; then
	echo "kvm-tests-in-lab: failed, and no failed test to run again"
	exit 1
fi
echo "kvm-tests-in-lab: RETRY of the failed tests in a fresh lab: $(echo "$failed" | paste -sd' ')"
run "$failed" "$pkgs"
