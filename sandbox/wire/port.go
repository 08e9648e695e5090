package wire

// PortUpgrade is the Upgrade protocol of POST /sandboxes/{id}/ports/{port}:
// after emberd's 101 Switching Protocols the connection carries the bytes
// of that TCP port in the sandbox, both ways.
const PortUpgrade = "ember-tcp"
