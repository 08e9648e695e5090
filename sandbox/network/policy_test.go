package network

import (
	"encoding/json"
	"testing"
)

// FuzzPolicy feeds API-shaped JSON through decoding and validation; a policy
// that validates must be one the nftables rule builder accepts.
func FuzzPolicy(f *testing.F) {
	f.Add([]byte(`{"mode":"allowlist","allow":[{"cidr":"10.0.0.0/8","proto":"tcp","port":80,"port_end":90}]}`))
	f.Add([]byte(`{"mode":"deny-all"}`))
	f.Add([]byte(`{"mode":"allowlist","allow":[{"cidr":"1.2.3.4/32"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var p Policy
		if json.Unmarshal(b, &p) != nil || p.Validate() != nil {
			return
		}
		for _, r := range p.Allow {
			if len(ruleExprs(r)) == 0 {
				t.Fatalf("rule %+v validated but builds no match", r)
			}
		}
	})
}
