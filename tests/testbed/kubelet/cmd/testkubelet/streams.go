package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/exec"
	"time"

	"github.com/creack/pty"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	utilexec "k8s.io/utils/exec"
)

// exec runs cmd as a local process in the pod's directory. A non-zero exit
// reaches kubectl as the command's exit code.
func (r *podRunner) exec(ctx context.Context, namespace, pod, ctrName string, argv []string, attach api.AttachIO) error {
	if _, err := r.container(namespace, pod, ctrName); err != nil {
		return err
	}
	if len(argv) == 0 {
		return errors.New("no command given")
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = r.podDir(namespace, pod)
	cmd.Env = append(os.Environ(), "HOSTNAME="+pod, "POD_NAMESPACE="+namespace)
	var err error
	if attach.TTY() {
		err = runWithTTY(cmd, attach)
	} else {
		err = runPiped(cmd, attach)
	}
	return exitCode(err)
}

func runPiped(cmd *exec.Cmd, attach api.AttachIO) error {
	if in := attach.Stdin(); in != nil {
		// Our own copy, not cmd.Stdin: Wait must not wait for the client's stdin EOF.
		w, err := cmd.StdinPipe()
		if err != nil {
			return err
		}
		go func() {
			_, _ = io.Copy(w, in)
			_ = w.Close()
		}()
	}
	if out := attach.Stdout(); out != nil {
		cmd.Stdout = out
	}
	if errOut := attach.Stderr(); errOut != nil {
		cmd.Stderr = errOut
	}
	return cmd.Run()
}

func runWithTTY(cmd *exec.Cmd, attach api.AttachIO) error {
	tty, err := pty.Start(cmd)
	if err != nil {
		return err
	}
	defer tty.Close()
	go func() {
		for size := range attach.Resize() {
			_ = pty.Setsize(tty, &pty.Winsize{Rows: size.Height, Cols: size.Width})
		}
	}()
	if in := attach.Stdin(); in != nil {
		go func() { _, _ = io.Copy(tty, in) }()
	}
	copied := make(chan struct{})
	go func() {
		if out := attach.Stdout(); out != nil {
			// Ends with EIO once the process and its children close the terminal.
			_, _ = io.Copy(out, tty)
		}
		close(copied)
	}()
	err = cmd.Wait()
	select {
	case <-copied:
	case <-time.After(2 * time.Second):
	}
	return err
}

func exitCode(err error) error {
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) && exitErr.ExitCode() >= 0 {
		return utilexec.CodeExitError{Err: err, Code: exitErr.ExitCode()}
	}
	return err
}

// attach joins a container's main process: its output from now on, and
// stdin if the container spec asked for it.
func (r *podRunner) attach(ctx context.Context, namespace, pod, ctrName string, attach api.AttachIO) error {
	c, err := r.container(namespace, pod, ctrName)
	if err != nil {
		return err
	}
	if !c.running() {
		return fmt.Errorf("container %s has no running process to attach to", ctrName)
	}
	if out := attach.Stdout(); out != nil {
		defer c.stdout.remove(c.stdout.add(out))
	}
	if errOut := attach.Stderr(); errOut != nil {
		defer c.stderr.remove(c.stderr.add(errOut))
	}
	if in := attach.Stdin(); in != nil && c.stdin != nil {
		// The client's EOF does not close the container's stdin: another client may attach.
		go func() { _, _ = io.Copy(c.stdin, in) }()
	}
	select {
	case <-ctx.Done():
	case <-c.done:
	}
	return nil
}

// logs serves the container's log file; with Follow it keeps reading as the
// file grows until the client goes away.
func (r *podRunner) logs(ctx context.Context, namespace, pod, ctrName string, opts api.ContainerLogOpts) (io.ReadCloser, error) {
	if _, err := r.container(namespace, pod, ctrName); err != nil {
		return nil, err
	}
	f, err := os.Open(r.logPath(namespace, pod, ctrName))
	if err != nil {
		return nil, err
	}
	if opts.Tail > 0 {
		if err := seekTail(f, opts.Tail); err != nil {
			f.Close()
			return nil, err
		}
	}
	var rc io.ReadCloser = f
	if opts.Follow {
		rc = &follower{ctx: ctx, f: f, name: namespace + "/" + pod + "/" + ctrName}
	}
	if opts.LimitBytes > 0 {
		rc = struct {
			io.Reader
			io.Closer
		}{io.LimitReader(rc, int64(opts.LimitBytes)), rc}
	}
	return rc, nil
}

// seekTail positions f at the start of its last n lines.
func seekTail(f *os.File, n int) error {
	data, err := io.ReadAll(f)
	if err != nil {
		return err
	}
	end := len(data)
	if end > 0 && data[end-1] == '\n' {
		end--
	}
	offset := 0
	for i := 0; i < n; i++ {
		idx := bytes.LastIndexByte(data[:end], '\n')
		if idx < 0 {
			offset = 0
			break
		}
		offset, end = idx+1, idx
	}
	_, err = f.Seek(int64(offset), io.SeekStart)
	return err
}

// follower reads a growing file, polling at EOF, until its context ends.
type follower struct {
	ctx  context.Context
	f    *os.File
	name string
}

func (fl *follower) Read(p []byte) (int, error) {
	for {
		n, err := fl.f.Read(p)
		if n > 0 || (err != nil && err != io.EOF) {
			return n, err
		}
		select {
		case <-fl.ctx.Done():
			return 0, io.EOF
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Close ends the stream. The log line lets tests see that a caller's
// cancellation travelled all the way here.
func (fl *follower) Close() error {
	log.Printf("logs: follow of %s closed", fl.name)
	return fl.f.Close()
}

// portForward connects the stream to 127.0.0.1:port, the "pod" being this machine.
func portForward(ctx context.Context, namespace, pod string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return fmt.Errorf("pod %s/%s: %w", namespace, pod, err)
	}
	defer conn.Close()
	go func() {
		_, _ = io.Copy(conn, stream)
		// The client finished sending: pass the half-close on, keep reading.
		_ = conn.(*net.TCPConn).CloseWrite()
	}()
	fromTarget := make(chan error, 1)
	go func() {
		_, err := io.Copy(stream, conn)
		fromTarget <- err
	}()
	select {
	case err = <-fromTarget:
	case <-ctx.Done():
	}
	return err
}
