// Command pause is the sandbox ("pause") image of the test cluster: no
// registry is reachable, so containerd's sandbox_image is this, built
// locally. It holds the pod's namespaces until it is told to stop.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	// As PID 1 of a pod that shares its PID namespace it would also reap
	// orphans; the test pods do not share it, so exiting on a signal is all.
	<-stop
}
