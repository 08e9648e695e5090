package wire

// ErrorBody is every error's body.
type ErrorBody struct {
	Error string `json:"error"`
	// Budget names the exhausted budget of a 429 (BudgetMemory, ...);
	// RetryAfterS repeats its Retry-After header.
	Budget      string `json:"budget,omitempty"`
	RetryAfterS int    `json:"retry_after_s,omitempty"`
}

// E2BInfo is the answer of GET /e2b: the values of E2B's SDK variables
// that point it at this emberd (`ember e2b env` prints them).
type E2BInfo struct {
	// APIURL is E2B_API_URL, SandboxURL E2B_SANDBOX_URL (the same
	// listener serves both), Domain E2B_DOMAIN.
	APIURL     string `json:"api_url"`
	SandboxURL string `json:"sandbox_url"`
	Domain     string `json:"domain"`
}
