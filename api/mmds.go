package api

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/embervm/ember/mmds"
	"github.com/embervm/ember/vmm"
)

// The MMDS endpoints. The data store (Options.MMDS) is the process's and is
// read and written at any time, before and after boot, without going
// through the VMM (the guest reads it concurrently: the store publishes
// immutable values). The configuration is pre-boot, through
// Backend.Configure.

// MmdsConfig is the body of PUT /mmds/config and the config file's
// "mmds-config" (GET /vm/config shows it with every field).
type MmdsConfig struct {
	NetworkInterfaces []string `json:"network_interfaces" api:"required"`
	// Version is "V1" (the default) or "V2".
	Version *string `json:"version,omitempty"`
	// IPv4Address is link-local (169.254.1.0 to 169.254.254.255),
	// default 169.254.169.254.
	IPv4Address *string `json:"ipv4_address,omitempty"`
	IMDSCompat  *bool   `json:"imds_compat,omitempty"`
}

// Firecracker's wrappings of the data store's errors (VmmActionError).
const (
	fmtMMDSError         = "MMDS error: %s"
	fmtMMDSLimitExceeded = "MMDS limit exceeded error: %s"
)

// statusError is an error answered with a status other than 400.
type statusError struct {
	status int
	err    error
}

func (e statusError) Error() string { return e.err.Error() }
func (e statusError) Unwrap() error { return e.err }

// rawJSON is an answer that is JSON already: written as it is.
type rawJSON []byte

func (s *Server) getMMDS(*call) (any, error) { return rawJSON(s.opts.MMDS.JSON()), nil }

func (s *Server) putMMDS(c *call) (any, error) {
	v, err := mmds.ParseJSON(c.body)
	if err != nil {
		return nil, bodyError{describeJSONError(err)}
	}
	return nil, storeError(s.opts.MMDS.Put(v))
}

func (s *Server) patchMMDS(c *call) (any, error) {
	v, err := mmds.ParseJSON(c.body)
	if err != nil {
		return nil, bodyError{describeJSONError(err)}
	}
	return nil, storeError(s.opts.MMDS.Patch(v))
}

// storeError is Firecracker's answer to a failed PUT or PATCH /mmds: 413
// over the limit, 400 otherwise.
func storeError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, mmds.ErrLimitExceeded):
		return statusError{http.StatusRequestEntityTooLarge, fmt.Errorf(fmtMMDSLimitExceeded, err)}
	}
	return fmt.Errorf(fmtMMDSError, err)
}

func (s *Server) putMMDSConfig(c *call) (any, error) {
	m, err := decodeModel[MmdsConfig](c.body)
	if err != nil {
		return nil, err
	}
	return nil, s.apply(func() (change, error) { return mmdsConfigChange(m) })
}

// mmdsConfigChange validates PUT /mmds/config: the version, the address
// and a non-empty interface list now, the interfaces' existence against
// the pending configuration.
func mmdsConfigChange(m MmdsConfig) (change, error) {
	cfg := mmds.Config{NetworkInterfaces: m.NetworkInterfaces}
	setIf(&cfg.Version, m.Version)
	setIf(&cfg.IPv4Address, m.IPv4Address)
	setIf(&cfg.IMDSCompat, m.IMDSCompat)
	if cfg.Version != "" && cfg.Version != mmds.V1 && cfg.Version != mmds.V2 {
		return nil, bodyError{fmt.Errorf("version %q: unknown variant, expected %s or %s", cfg.Version, mmds.V1, mmds.V2)}
	}
	if err := cfg.Normalize(); err != nil {
		return nil, err
	}
	return func(c *vmm.Config) error {
		ids := make([]string, len(c.Nets))
		for i, n := range c.Nets {
			ids[i] = n.IfaceID
		}
		if err := cfg.CheckInterfaces(ids); err != nil {
			return err
		}
		c.MMDS = cfg.Clone()
		return nil
	}, nil
}

// mmdsConfigOf is the "mmds-config" of GET /vm/config (nil without MMDS).
func mmdsConfigOf(c *mmds.Config) *MmdsConfig {
	if c == nil {
		return nil
	}
	n := c.Clone()
	if err := n.Normalize(); err != nil {
		n = c.Clone() // shown as configured
	}
	return &MmdsConfig{NetworkInterfaces: n.NetworkInterfaces, Version: &n.Version, IPv4Address: &n.IPv4Address, IMDSCompat: &n.IMDSCompat}
}
