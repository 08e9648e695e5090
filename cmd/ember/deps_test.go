package main

import (
	"testing"

	"github.com/embervm/ember/internal/depcheck"
)

// TestLinksNoManager: ember is the VMM, started once per microVM, and
// every package it links costs each start; its sandbox, template and
// apikey commands talk to emberd through the client and the API's leaf
// packages, never linking emberd's manager, network or image store
// (bbolt, netlink, nftables, go-containerregistry).
func TestLinksNoManager(t *testing.T) {
	depcheck.NoHeavy(t, ".")
}
