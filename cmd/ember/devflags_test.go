package main

import (
	"testing"

	"github.com/embervm/ember/virtio/balloon"
	vnet "github.com/embervm/ember/virtio/net"
	"github.com/embervm/ember/virtio/rng"
	"github.com/embervm/ember/virtio/vsock"
	"github.com/embervm/ember/vmm"
)

func TestDeviceFlags(t *testing.T) {
	var drives []vmm.DriveConfig
	df := driveFlag{&drives}
	if err := df.Set("path=/r.ext4,root,cache=Writeback,rate=bw=1M/100,ops=100/1000"); err != nil {
		t.Fatal(err)
	}
	if err := df.Set("path=/d.img,ro,id=data"); err != nil {
		t.Fatal(err)
	}
	d := drives[0]
	if d.ID != "drive0" || d.Path != "/r.ext4" || !d.Root || d.CacheType != "Writeback" || d.RateLimit == nil ||
		d.RateLimit.Bandwidth.Size != 1<<20 || d.RateLimit.Ops.Size != 100 {
		t.Fatalf("drive 0: %+v", d)
	}
	if d := drives[1]; d.ID != "data" || !d.ReadOnly || d.Root {
		t.Fatalf("drive 1: %+v", d)
	}
	for _, bad := range []string{"", "ro", "path=/x,bogus", "path=/x,rate=bw=abc"} {
		if err := df.Set(bad); err == nil {
			t.Errorf("--drive %q accepted", bad)
		}
	}

	var nets []vnet.Config
	nf := netFlag{&nets}
	if err := nf.Set("tap=tap0,mac=06:00:00:00:00:01,mtu=1400,rx-rate=bw=10M/100,tx-rate=ops=10/10"); err != nil {
		t.Fatal(err)
	}
	if n := nets[0]; n.HostDevName != "tap0" || n.GuestMAC != "06:00:00:00:00:01" || n.MTU != 1400 || n.RxRateLimit == nil || n.TxRateLimit == nil {
		t.Fatalf("net: %+v", n)
	}
	for _, bad := range []string{"", "mac=06:00:00:00:00:01", "tap=t,mtu=x", "tap=t,speed=fast"} {
		if err := nf.Set(bad); err == nil {
			t.Errorf("--net %q accepted", bad)
		}
	}

	var v *vsock.Config
	if err := (vsockFlag{&v}).Set("cid=3,uds=/tmp/v.sock"); err != nil || v.GuestCID != 3 || v.UDSPath != "/tmp/v.sock" {
		t.Fatalf("vsock: %+v, %v", v, err)
	}
	if err := (vsockFlag{&v}).Set("cid=3"); err == nil {
		t.Error("--vsock without uds accepted")
	}
	var b *balloon.Config
	if err := (balloonFlag{&b}).Set("64,deflate-on-oom,stats=5"); err != nil || b.AmountMiB != 64 || !b.DeflateOnOOM || b.StatsPollingIntervalS != 5 {
		t.Fatalf("balloon: %+v, %v", b, err)
	}
	var r *rng.Config
	if err := (rngFlag{&r}).Set("rate=bw=1M/1000"); err != nil || r.RateLimit == nil {
		t.Fatalf("rng: %+v, %v", r, err)
	}
}
