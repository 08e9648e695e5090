package wire

// Budgets (Error.Budget, ErrorBody.Budget).
const (
	BudgetMemory    = "memory"
	BudgetVCPUs     = "vcpus"
	BudgetProcesses = "processes"
	BudgetFiles     = "files"
	BudgetTaps      = "taps"
)

// BudgetNames lists the budgets in the order a create checks them.
func BudgetNames() []string {
	return []string{BudgetMemory, BudgetVCPUs, BudgetProcesses, BudgetFiles, BudgetTaps}
}

// Resources are amounts of the host's budgets.
type Resources struct {
	// MemoryMiB is guest memory plus sandbox.VMOverheadMiB per sandbox.
	MemoryMiB int64 `json:"memory_mib"`
	VCPUs     int64 `json:"vcpus"`
	// Processes counts tasks (threads): vCPUs plus
	// sandbox.VMOverheadTasks per sandbox.
	Processes int64 `json:"processes"`
	// Files counts emberd's descriptors: sandbox.FilesPerSandbox per
	// sandbox.
	Files int64 `json:"files"`
	Taps  int64 `json:"taps"`
}

// Get returns the amount of budget name (BudgetMemory, ...).
func (r Resources) Get(name string) int64 {
	switch name {
	case BudgetMemory:
		return r.MemoryMiB
	case BudgetVCPUs:
		return r.VCPUs
	case BudgetProcesses:
		return r.Processes
	case BudgetFiles:
		return r.Files
	case BudgetTaps:
		return r.Taps
	}
	return 0
}

// HostBudgets is the host's budgets and how they were reached.
type HostBudgets struct {
	Budgets Resources `json:"budgets"`
	// HostMemoryMiB is MemTotal; MemoryMiB what sandboxes get of it
	// before MemoryOvercommit.
	HostMemoryMiB    int64   `json:"host_memory_mib"`
	MemoryReserveMiB int64   `json:"memory_reserve_mib"`
	MemoryMiB        int64   `json:"memory_mib"`
	MemoryOvercommit float64 `json:"memory_overcommit"`
	HostCPUs         int     `json:"host_cpus"`
	VCPUOvercommit   float64 `json:"vcpu_overcommit"`
	// Overhead is what every sandbox holds besides its template's memory
	// and vCPUs.
	Overhead   Resources `json:"overhead"`
	RetryAfter float64   `json:"retry_after_s"`
}

// Host is the answer of GET /host: the budgets, what the sandboxes hold
// and what is left.
type Host struct {
	HostBudgets
	Used Resources `json:"used"`
	Free Resources `json:"free"`
	// Sandboxes is how many sandboxes hold a part of the budgets.
	Sandboxes int `json:"sandboxes"`
}
