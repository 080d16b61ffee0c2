package main

import (
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
)

// container is a pod container's main process, if its spec has a command.
// Its output goes to the log file and to every attached client.
type container struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser // nil unless the spec asks for stdin
	stdout *fanout
	stderr *fanout
	done   chan struct{}
}

func startProcess(cmd *exec.Cmd, logFile *os.File, wantStdin bool) (*container, error) {
	c := &container{
		cmd:    cmd,
		stdout: &fanout{file: logFile, sinks: map[int]io.Writer{}},
		stderr: &fanout{file: logFile, sinks: map[int]io.Writer{}},
		done:   make(chan struct{}),
	}
	cmd.Stdout = c.stdout
	cmd.Stderr = c.stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if wantStdin {
		w, err := cmd.StdinPipe()
		if err != nil {
			return nil, err
		}
		c.stdin = w
	}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, err
	}
	go func() {
		_ = cmd.Wait()
		logFile.Close()
		close(c.done)
	}()
	return c, nil
}

// running reports whether the container has a live process to attach to.
func (c *container) running() bool {
	if c.cmd == nil {
		return false
	}
	select {
	case <-c.done:
		return false
	default:
		return true
	}
}

func (c *container) stop() {
	if c.running() {
		_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		<-c.done
	}
}

// fanout copies a process's output to its log file and to attached clients.
// A client whose write fails is dropped.
type fanout struct {
	mu    sync.Mutex
	file  *os.File
	sinks map[int]io.Writer
	next  int
}

func (f *fanout) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.file.Write(p); err != nil {
		return 0, err
	}
	for id, sink := range f.sinks {
		if _, err := sink.Write(p); err != nil {
			delete(f.sinks, id)
		}
	}
	return len(p), nil
}

func (f *fanout) add(w io.Writer) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.next++
	f.sinks[f.next] = w
	return f.next
}

func (f *fanout) remove(id int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.sinks, id)
}
