// Package mmds is Ember's microVM metadata service (Firecracker's MMDS): a
// JSON data store the host fills through the API (PUT /mmds replaces it,
// PATCH /mmds merges into it, RFC 7396) and the guest reads over HTTP at a
// link-local address (169.254.169.254 by default), the way EC2 instances
// read their instance metadata.
//
// The package has the host-independent parts; package mmds/netstack is the
// userspace TCP/IP path that carries the guest's HTTP requests to them:
//
//   - store.go: the data store (Store), one JSON value under a size limit
//     (--mmds-size-limit): a value over it is refused and changes nothing.
//     Published values are immutable, so the guest's reads take no lock.
//   - patch.go: RFC 7396 JSON merge patch (PATCH /mmds).
//   - json.go: parsing, and serialising as Firecracker's serde_json does
//     (compact, keys sorted, no HTML escaping), so that sizes and bodies
//     match Firecracker's byte for byte.
//   - render.go: what a GET returns: the value at a JSON pointer, as JSON
//     (Accept: application/json) or in EC2's IMDS text format (an object's
//     keys one per line, sub-objects with a trailing '/', strings raw).
//   - token.go: MMDS version 2 session tokens: AES-256-GCM under a random
//     key each VM draws (a clone's tokens are not the source's), the
//     expiry sealed inside, the instance id as additional data.
//   - service.go: the guest-facing HTTP handler (Service) with
//     Firecracker's V1 and V2 rules, status codes and bodies, and the
//     token metrics (mmds.rx_no_token, mmds.rx_invalid_token).
//   - config.go: the MMDS configuration (PUT /mmds/config, the config
//     file's "mmds-config"), which snapshots keep; the data store they do
//     not keep (a clone's owner PUTs the clone's own data after the load).
//
// Everything the guest sends is hostile: the handler only looks up paths in
// the store and never echoes more than the path it was asked for; the
// request's size and the connections are bounded by mmds/netstack.
package mmds
