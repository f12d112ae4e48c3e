// Command pause is the sandbox ("pause") container of the local real node: it holds a pod's
// namespaces open, reaps the zombies that a shared PID namespace hands to it, and exits 0 on
// SIGINT or SIGTERM. No registry is reachable there, so slm_dev.images builds it into a
// FROM scratch image (CGO_ENABLED=0: a static binary with nothing else in the image).
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

const version = "1"

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "-v" || os.Args[1] == "--version") {
		fmt.Printf("pause %s (slm-operator local node)\n", version)
		return
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "pause: warning: not PID 1, orphaned children are not reparented here")
	}
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		switch sig {
		case syscall.SIGCHLD:
			reap()
		default:
			fmt.Fprintf(os.Stderr, "pause: %v, exiting\n", sig)
			os.Exit(0)
		}
	}
}

// reap collects every child that has exited; one SIGCHLD may stand for several of them.
func reap() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
	}
}
