package main

import "testing"

func TestBootPhases(t *testing.T) {
	log := `time=x level=INFO msg="VM booted" vm=a layers=1 layers_ms=100 prepare_ms=3000 agent_ms=5000 total_ms=8100
time=x level=INFO msg="other" layers_ms=1
time=x level=INFO msg="VM restored" vm=r layers=1 layers_ms=9 load_ms=9
time=x level=INFO msg="VM booted" vm=b layers=1 layers_ms=1.5 prepare_ms=20 agent_ms=4000 total_ms=4021.5
time=x level=INFO msg="VM booted" vm=c layers=1 layers_ms=2.5 prepare_ms=40 agent_ms=3000 total_ms=3042.5
`
	if got, want := bootPhases(log, "VM booted", 1), "layers 2 ms, prepare 30 ms, agent 3500 ms, total 3532 ms"; got != want {
		t.Errorf("bootPhases: %q, want %q", got, want)
	}
	if got := bootPhases("nothing", "VM booted", 0); got != "" {
		t.Errorf("no lines: %q", got)
	}
}
