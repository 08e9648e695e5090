package api

import (
	"net/http"
)

// routes registers every Firecracker 1.16 endpoint (endpoints.md lists
// them with their status in Ember).
func (s *Server) routes() {
	s.handle("GET /{$}", s.getInstanceInfo)
	s.handle("GET /version", s.getVersion)
	s.handle("GET /vm/config", s.getVMConfig)
	s.handle("PUT /actions", s.putActions)

	s.handle("GET /machine-config", s.getMachineConfig)
	s.handle("PUT /machine-config", s.putMachineConfig)
	s.handle("PATCH /machine-config", s.patchMachineConfig)
	s.handle("PUT /cpu-config", s.putCPUConfig)
	s.handle("PUT /boot-source", s.putBootSource)

	s.handle("PUT /drives/{id}", s.putDrive)
	s.handle("PATCH /drives/{id}", s.patchDrive)
	s.handle("PUT /network-interfaces/{id}", s.putNet)
	s.handle("PATCH /network-interfaces/{id}", s.patchNet)
	for _, p := range []string{"/drives", "/drives/{$}", "/network-interfaces", "/network-interfaces/{$}"} {
		s.handle("PUT "+p, s.emptyID)
		s.handle("PATCH "+p, s.emptyID)
	}
	s.handle("PUT /vsock", s.putVsock)
	s.handle("PUT /entropy", s.putEntropy)
	s.handle("PUT /serial", s.putSerial)

	s.handle("GET /balloon", s.getBalloon)
	s.handle("PUT /balloon", s.putBalloon)
	s.handle("PATCH /balloon", s.patchBalloon)
	s.handle("GET /balloon/statistics", s.getBalloonStats)
	s.handle("PATCH /balloon/statistics", s.patchBalloonStats)

	s.handle("PATCH /vm", s.patchVM)
	s.handle("PUT /snapshot/create", s.putSnapshotCreate)
	s.handle("PUT /snapshot/load", s.putSnapshotLoad)

	s.handle("GET /mmds", s.getMMDS)
	s.handle("PUT /mmds", s.putMMDS)
	s.handle("PATCH /mmds", s.patchMMDS)
	s.handle("PUT /mmds/config", s.putMMDSConfig)

	// Ember's extensions.
	s.handle("PUT "+routeEmberImage, s.putEmberImage)

	s.handle("PUT /logger", s.putLogger)
	s.handle("PUT /metrics", s.putMetrics)

	s.unsupported("virtio-pmem devices", "PUT /pmem/{id}", "PATCH /pmem/{id}")
	s.unsupported("memory hot-plug (virtio-mem)",
		"PUT /hotplug/memory", "PATCH /hotplug/memory", "GET /hotplug/memory")
	s.unsupported("balloon free page hinting",
		"PATCH /balloon/hinting/start", "GET /balloon/hinting/status", "PATCH /balloon/hinting/stop")
	s.unsupported("device hot-unplug",
		"DELETE /drives/{id}", "DELETE /network-interfaces/{id}", "DELETE /pmem/{id}")

	// Everything else: an unknown path, or a known one with the wrong
	// method (Firecracker answers both with 400, not 404 or 405).
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.count(r.Method, r.URL.Path)
		s.reply(w, r, nil, invalidPath(r))
	})
}

// unsupported registers patterns that Ember does not implement yet: they
// answer 400 saying so, whatever the body.
func (s *Server) unsupported(what string, patterns ...string) {
	for _, p := range patterns {
		s.mux.HandleFunc(p, func(w http.ResponseWriter, r *http.Request) {
			s.count(r.Method, routeOf(r))
			s.reply(w, r, nil, notSupported("%s (%s %s) is not implemented by Ember yet", what, r.Method, r.URL.Path))
		})
	}
}
