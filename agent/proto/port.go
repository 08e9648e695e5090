package proto

// OpPortConnect (stream): [PortRequest] → the agent connects to that TCP
// port on the guest's loopback and answers an empty Msg once connected;
// then the connection's bytes flow both ways as Data on ChanBody, and a
// Close on ChanBody from either side is that side's half-close (TCP's
// FIN). The stream ends when both directions are closed, or when either
// side ends it (the agent then closes the connection). It carries a
// sandbox's user ports to the host without the guest needing a network.
const OpPortConnect = "port.connect"

// FeaturePort says the agent serves [OpPortConnect].
const FeaturePort = "port"

// PortRequest names a TCP port in the guest.
type PortRequest struct {
	Port int `json:"port"`
}

// MaxPort is TCP's largest port (RFC 793: a 16-bit field).
const MaxPort = 65535

// Validate checks the port.
func (r *PortRequest) Validate() error {
	if r.Port < 1 || r.Port > MaxPort {
		return Errorf(CodeInvalid, "port %d: want 1 to %d", r.Port, MaxPort)
	}
	return nil
}
