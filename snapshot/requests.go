package snapshot

import "github.com/embervm/ember/kvm"

// UffdRequests are the userfaultfd ioctls the VMM side of a Uffd load
// issues (MapUffd), for system call filters. UFFDIO_COPY is the handler's
// (ServeUffd), which runs in another process.
func UffdRequests() []kvm.Request {
	return []kvm.Request{{Name: "UFFDIO_API", Number: uffdioAPI}, {Name: "UFFDIO_REGISTER", Number: uffdioRegister}}
}
