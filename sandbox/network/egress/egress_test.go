package egress

import (
	"net/netip"
	"testing"

	"github.com/embervm/ember/internal/depcheck"
)

// TestLeaf: the client and the ember CLI link this package; it links only
// the standard library.
func TestLeaf(t *testing.T) {
	depcheck.Leaf(t, ".")
}

func TestParseRule(t *testing.T) {
	good := map[string]Rule{
		"10.0.0.0/8":            {CIDR: netip.MustParsePrefix("10.0.0.0/8")},
		"1.2.3.4":               {CIDR: netip.MustParsePrefix("1.2.3.4/32")},
		"1.2.3.4/tcp":           {CIDR: netip.MustParsePrefix("1.2.3.4/32"), Proto: ProtoTCP},
		"0.0.0.0/0:443/tcp":     {CIDR: netip.MustParsePrefix("0.0.0.0/0"), Proto: ProtoTCP, Port: 443},
		"192.0.2.0/24:53/udp":   {CIDR: netip.MustParsePrefix("192.0.2.0/24"), Proto: ProtoUDP, Port: 53},
		"1.2.3.4:8000-8080/tcp": {CIDR: netip.MustParsePrefix("1.2.3.4/32"), Proto: ProtoTCP, Port: 8000, PortEnd: 8080},
	}
	for s, want := range good {
		r, err := ParseRule(s)
		if err != nil || r != want {
			t.Errorf("ParseRule(%q) = %+v, %v; want %+v", s, r, err, want)
		}
		if back, err := ParseRule(r.String()); err != nil || back != r {
			t.Errorf("round trip of %q through %q: %+v %v", s, r.String(), back, err)
		}
	}
	for _, s := range []string{"", "10.0.0.1/8", "1.2.3.4:80", "1.2.3.4:0/tcp", "1.2.3.4:90-80/tcp",
		"1.2.3.4:70000/tcp", "fd00::/8", "1.2.3.4/sctp", "x/tcp", "1.2.3.4:-5/udp"} {
		if r, err := ParseRule(s); err == nil {
			t.Errorf("ParseRule(%q) accepted: %+v", s, r)
		}
	}
}

func TestPolicyValidate(t *testing.T) {
	ok := []Policy{{Mode: AllowAll}, {Mode: DenyAll}, {Mode: Allowlist},
		{Mode: Allowlist, Allow: []Rule{{CIDR: netip.MustParsePrefix("1.0.0.0/8"), Proto: ProtoTCP, Port: 80}}}}
	for _, p := range ok {
		if err := p.Validate(); err != nil {
			t.Errorf("%+v: %v", p, err)
		}
	}
	bad := []Policy{{}, {Mode: "open"}, {Mode: DenyAll, Allow: []Rule{{CIDR: netip.MustParsePrefix("1.0.0.0/8")}}},
		{Mode: Allowlist, Allow: []Rule{{}}}}
	for _, p := range bad {
		if err := p.Validate(); err == nil {
			t.Errorf("%+v accepted", p)
		}
	}
}

func FuzzParseRule(f *testing.F) {
	for _, s := range []string{"10.0.0.0/8", "1.2.3.4:80/tcp", "1.2.3.4:1-2/udp", "::1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRule(s)
		if err != nil {
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("ParseRule(%q) returned an invalid rule: %v", s, err)
		}
		if back, err := ParseRule(r.String()); err != nil || back != r {
			t.Fatalf("round trip %q -> %q: %+v %v", s, r.String(), back, err)
		}
	})
}
