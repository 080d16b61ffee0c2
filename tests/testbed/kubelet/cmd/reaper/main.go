// Command reaper runs one command and guarantees it dies with the test that
// started it.
//
// Usage: reaper -- COMMAND [ARGS...]
//
// The test process holds reaper's stdin open. When that pipe reaches EOF —
// because the test dropped its handle, finished, panicked or was killed,
// even with SIGKILL — reaper sends SIGTERM to the command's whole process
// group, waits a grace period, then SIGKILL. etcd and kube-apiserver cannot
// watch their parent themselves; this is how no test-bed process outlives
// its test.
package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"
)

const grace = 5 * time.Second

func main() {
	args := os.Args[1:]
	if len(args) > 0 && args[0] == "--" {
		args = args[1:]
	}
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: reaper -- COMMAND [ARGS...]")
		os.Exit(2)
	}

	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout = os.Stdout
	cmd.Stderr = os.Stderr
	// The command gets no stdin: reaper's own stdin is the lifeline.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "reaper: cannot start %s: %v\n", args[0], err)
		os.Exit(127)
	}
	pgid := cmd.Process.Pid

	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()

	lifeline := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(lifeline)
	}()

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)

	select {
	case <-exited:
	case <-lifeline:
		stop(pgid, exited)
	case <-signals:
		stop(pgid, exited)
	}
	os.Exit(cmd.ProcessState.ExitCode())
}

// stop ends the whole process group: SIGTERM, then SIGKILL after the grace period.
func stop(pgid int, exited <-chan struct{}) {
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(grace):
	}
	// Anything left in the group (children of the command) goes too.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	<-exited
}
