package wire

import "time"

// Usage is GET /sandboxes/{id}/metrics: one sample of what the guest uses,
// from its agent.
type Usage struct {
	Time time.Time `json:"time"`
	// CPUs is the guest's CPU count; CPUUsedPct their busy share (0-100)
	// since the previous sample (or over a short window); CPUUserNS and
	// CPUSystemNS the CPU time the guest has spent since it booted.
	CPUs        int     `json:"cpus"`
	CPUUsedPct  float64 `json:"cpu_used_pct"`
	CPUUserNS   uint64  `json:"cpu_user_ns"`
	CPUSystemNS uint64  `json:"cpu_system_ns"`
	// MemUsed is the guest's memory in use (MemTotal less MemAvailable),
	// MemTotal what it has; DiskUsed and DiskTotal its root filesystem's;
	// all in bytes.
	MemUsed   uint64 `json:"mem_used"`
	MemTotal  uint64 `json:"mem_total"`
	DiskUsed  uint64 `json:"disk_used"`
	DiskTotal uint64 `json:"disk_total"`
}
