package seccomp

import (
	"encoding/json"
	"fmt"
	"io"
)

// Print writes p for a person: each filter with where it is installed,
// its actions, its size once compiled and its rules.
func Print(w io.Writer, p *Policy) error {
	type entry struct {
		name, where string
		f           *Filter
		data        uint16
	}
	var es []entry
	if p.Boot != nil {
		es = append(es, entry{NameBoot, "every thread, from start-up until the guest first runs", p.Boot, dataBoot})
	}
	es = append(es,
		entry{NameVMM, "every thread (API and VMM goroutines), once the guest runs", &p.VMM, dataVMM},
		entry{NameVCPU, "each vCPU thread, stacked on the process-wide filters", &p.VCPU, dataVCPU})
	for i, e := range es {
		prog, err := Compile(e.f, 0, e.data)
		if err != nil {
			return fmt.Errorf("filter %s: %w", e.name, err)
		}
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "filter %s: %s\n", e.name, e.where)
		fmt.Fprintf(w, "  default %s, matching rules %s; %d rules on %d system calls, %d BPF instructions\n",
			e.f.DefaultAction, e.f.FilterAction, len(e.f.Rules), countSyscalls(e.f), len(prog))
		for _, r := range e.f.Rules {
			fmt.Fprintf(w, "  %s\n", r.describe())
		}
	}
	return nil
}

// PrintJSON writes p as a seccompiler file that --seccomp-filter reads.
func PrintJSON(w io.Writer, p *Policy) error {
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

func countSyscalls(f *Filter) int {
	seen := map[string]bool{}
	for _, r := range f.Rules {
		seen[r.Syscall] = true
	}
	return len(seen)
}
