// Package api is Ember's REST API: the Firecracker 1.16 API, served over
// HTTP/1.1 on a unix socket, so tools written for Firecracker drive Ember
// unchanged.
//
// The package has four parts:
//
//   - models.go: Firecracker's JSON request and response bodies, with the
//     same field names, required fields and defaults (swagger
//     firecracker.yaml).
//   - decode.go: strict decoding of those bodies, as Firecracker's serde
//     does it: unknown fields, missing required fields, wrong types, a
//     second JSON value and oversize bodies are all refused with a
//     fault_message naming what is wrong.
//   - translate.go (and its siblings): each pre-boot PUT/PATCH validated
//     with Firecracker's rules and applied to the pending vmm.Config
//     through vmm.Backend.Configure; run-time PATCHes go to the Backend's
//     run-time methods. ToFullConfig and ApplyConfigFile share the same
//     translation for GET /vm/config and --config-file.
//   - server.go: the HTTP server (Server, New, Options) routing every
//     Firecracker endpoint with a stdlib ServeMux; endpoints Ember does not
//     implement yet answer 400 with a fault_message saying so (see
//     endpoints.md).
//
// Errors follow Firecracker: every failure is a 400 (413 for an MMDS data
// store over its limit) whose JSON body is {"fault_message": "..."}; successes are 204 without a body, except GETs,
// which answer 200 with JSON.
//
// Process-level configuration that is not the VMM's (the logger and the
// metrics) is handed to hooks in Options; the API server keeps no global
// state.
//
// Package api/client is a typed Go client for the same API.
package api
