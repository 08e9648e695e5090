package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/embervm/ember/ratelimit"
	"github.com/embervm/ember/virtio/balloon"
	"github.com/embervm/ember/virtio/blk"
	vnet "github.com/embervm/ember/virtio/net"
	"github.com/embervm/ember/virtio/rng"
	"github.com/embervm/ember/virtio/vsock"
	"github.com/embervm/ember/vmm"
)

// driveFlag collects repeated --drive flags:
//
//	--drive path=FILE[,base=BASE][,id=ID][,ro][,root][,cache=Unsafe|Writeback][,rate=LIMIT]
//
// LIMIT is ratelimit.ParseFlag's form. base= (an Ember extension) makes
// FILE a copy-on-write overlay over BASE. Without id, drives are named
// drive0, drive1, ... in flag order.
type driveFlag struct{ drives *[]vmm.DriveConfig }

func (f driveFlag) String() string { return "" }

func (f driveFlag) Set(s string) error {
	d := vmm.DriveConfig{Config: blk.Config{ID: fmt.Sprintf("drive%d", len(*f.drives))}}
	for _, kv := range splitOptions(s) {
		k, v, hasValue := strings.Cut(kv, "=")
		switch {
		case k == "path" && hasValue:
			d.Path = v
		case k == "base" && hasValue:
			d.BasePath = v
		case k == "id" && hasValue:
			d.ID = v
		case k == "cache" && hasValue:
			d.CacheType = v
		case k == "rate" && hasValue:
			rl, err := ratelimit.ParseFlag(v)
			if err != nil {
				return fmt.Errorf("rate: %w", err)
			}
			d.RateLimit = &rl
		case k == "ro" && !hasValue:
			d.ReadOnly = true
		case k == "root" && !hasValue:
			d.Root = true
		default:
			return fmt.Errorf("unknown drive option %q (want path=, base=, id=, ro, root, cache=, rate=)", kv)
		}
	}
	if d.Path == "" {
		return fmt.Errorf("%q: no path=", s)
	}
	*f.drives = append(*f.drives, d)
	return nil
}

// rngFlag is --rng or --rng=rate=LIMIT.
type rngFlag struct{ cfg **rng.Config }

func (f rngFlag) String() string   { return "" }
func (f rngFlag) IsBoolFlag() bool { return true }

func (f rngFlag) Set(s string) error {
	c := &rng.Config{}
	switch {
	case s == "true":
	case s == "false":
		*f.cfg = nil
		return nil
	case strings.HasPrefix(s, "rate="):
		rl, err := ratelimit.ParseFlag(strings.TrimPrefix(s, "rate="))
		if err != nil {
			return fmt.Errorf("rate: %w", err)
		}
		c.RateLimit = &rl
	default:
		return fmt.Errorf("%q: want --rng or --rng=rate=LIMIT", s)
	}
	*f.cfg = c
	return nil
}

func isRateOption(s string) bool {
	return strings.HasPrefix(s, "rate=") || strings.HasPrefix(s, "rx-rate=") || strings.HasPrefix(s, "tx-rate=")
}

// splitOptions splits "a=1,b,c=2" at commas that start a new key: a rate
// limit's own commas ("rate=bw=1/2,ops=3/4") stay with it, because "ops=..."
// is not a drive option.
func splitOptions(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		k, _, _ := strings.Cut(p, "=")
		if len(out) > 0 && isRateOption(out[len(out)-1]) && (k == "bw" || k == "bandwidth" || k == "ops") {
			out[len(out)-1] += "," + p
			continue
		}
		out = append(out, p)
	}
	return out
}

// balloonFlag is --balloon MIB[,deflate-on-oom][,stats=SECONDS].
type balloonFlag struct{ cfg **balloon.Config }

func (f balloonFlag) String() string { return "" }

func (f balloonFlag) Set(s string) error {
	parts := strings.Split(s, ",")
	mib, err := strconv.ParseUint(parts[0], 10, 32)
	if err != nil {
		return fmt.Errorf("%q: want MIB[,deflate-on-oom][,stats=SECONDS]", s)
	}
	c := &balloon.Config{AmountMiB: uint32(mib)}
	for _, p := range parts[1:] {
		k, v, _ := strings.Cut(p, "=")
		switch {
		case p == "deflate-on-oom":
			c.DeflateOnOOM = true
		case k == "stats":
			if c.StatsPollingIntervalS, err = strconv.Atoi(v); err != nil {
				return fmt.Errorf("stats=%q: want seconds", v)
			}
		default:
			return fmt.Errorf("unknown balloon option %q (want deflate-on-oom, stats=SECONDS)", p)
		}
	}
	*f.cfg = c
	return nil
}

// vsockFlag is --vsock cid=N,uds=PATH[,id=ID].
type vsockFlag struct{ cfg **vsock.Config }

func (f vsockFlag) String() string { return "" }

func (f vsockFlag) Set(s string) error {
	c := &vsock.Config{}
	for _, kv := range strings.Split(s, ",") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "cid":
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				return fmt.Errorf("cid=%q: want a number", v)
			}
			c.GuestCID = uint32(n)
		case "uds":
			c.UDSPath = v
		case "id":
			c.VsockID = v
		default:
			return fmt.Errorf("unknown vsock option %q (want cid=, uds=, id=)", kv)
		}
	}
	if c.UDSPath == "" || c.GuestCID == 0 {
		return fmt.Errorf("%q: want cid=N,uds=PATH", s)
	}
	*f.cfg = c
	return nil
}

// netFlag collects repeated --net flags:
//
//	--net tap=NAME[,id=ID][,mac=MAC][,mtu=N][,rx-rate=LIMIT][,tx-rate=LIMIT]
type netFlag struct{ nets *[]vnet.Config }

func (f netFlag) String() string { return "" }

func (f netFlag) Set(s string) error {
	var c vnet.Config
	for _, kv := range splitOptions(s) {
		k, v, hasValue := strings.Cut(kv, "=")
		if !hasValue {
			return fmt.Errorf("unknown net option %q (want tap=, id=, mac=, mtu=, rx-rate=, tx-rate=)", kv)
		}
		switch k {
		case "tap":
			c.HostDevName = v
		case "id":
			c.IfaceID = v
		case "mac":
			c.GuestMAC = v
		case "mtu":
			n, err := strconv.Atoi(v)
			if err != nil {
				return fmt.Errorf("mtu=%q: want a number", v)
			}
			c.MTU = n
		case "rx-rate", "tx-rate":
			rl, err := ratelimit.ParseFlag(v)
			if err != nil {
				return fmt.Errorf("%s: %w", k, err)
			}
			if k == "rx-rate" {
				c.RxRateLimit = &rl
			} else {
				c.TxRateLimit = &rl
			}
		default:
			return fmt.Errorf("unknown net option %q (want tap=, id=, mac=, mtu=, rx-rate=, tx-rate=)", kv)
		}
	}
	if c.HostDevName == "" {
		return fmt.Errorf("%q: no tap=", s)
	}
	*f.nets = append(*f.nets, c)
	return nil
}
