// Package redistest starts a real redis-server for tests: on a free
// loopback port, without persistence, in the test's temporary directory,
// and stops it when the test ends.
//
// Tests that need Redis must never skip silently, so a missing redis-server
// fails the test with instructions instead. The server can be killed,
// restarted empty on the same port, and paused (SIGSTOP) to exercise the
// paths a real outage takes: a closed socket, an empty Redis after a
// restart, and a Redis that accepts connections but never answers.
package redistest

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// startTimeout bounds how long Start and Restart wait for the server to
// answer PING.
const startTimeout = 15 * time.Second

// Server is one redis-server process, owned by a test (Start) or by a
// program such as the benchmark driver (Launch).
type Server struct {
	t    testing.TB // nil when launched outside a test
	bin  string
	dir  string
	port int
	args []string

	// sentinel, when set, runs redis-server as a sentinel with this
	// configuration file (sentinels need one they may rewrite).
	sentinel string
	// maxPort bounds the port chosen (a Cluster node also listens on its
	// port + 10000); 0: any.
	maxPort int

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has exited
	paused bool
	runs   int
}

// Start runs redis-server on a free loopback port (never 6379) with
// persistence off, waits until it answers PING, and stops it in t.Cleanup.
// extraArgs are appended to the command line (for example
// "--requirepass", "secret"). A missing redis-server fails the test, and so
// does any later Kill, Restart, Pause or Resume that fails.
func Start(t testing.TB, extraArgs ...string) *Server {
	t.Helper()
	s, err := Launch(t.TempDir(), extraArgs...)
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	s.t = t
	t.Cleanup(s.Stop)
	return s
}

// Launch is Start outside a test: the server keeps its files and logs in
// dir, errors are returned, and the caller must Stop it.
func Launch(dir string, extraArgs ...string) (*Server, error) {
	return launchServer(&Server{dir: dir, args: extraArgs})
}

// launchServer starts s (dir, args and the options set) on a free port.
func launchServer(s *Server) (*Server, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redis-server not found on PATH (%w); install it, e.g. `apt-get install -y redis-server` "+
			"(Debian/Ubuntu), `apk add redis` (Alpine) or `brew install redis` (macOS): tests that need Redis never skip", err)
	}
	s.bin = bin
	// A free port can be taken by someone else between our probe and
	// redis-server's bind: retry with another port a few times.
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePort(s.maxPort)
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		s.port = port
		if lastErr = s.launch(); lastErr == nil {
			return s, nil
		}
	}
	return nil, fmt.Errorf("start redis-server: %w", lastErr)
}

// fail reports err to the owning test, if any, and returns it.
func (s *Server) fail(err error) error {
	if err != nil && s.t != nil {
		s.t.Helper()
		s.t.Fatalf("redistest: %v", err)
	}
	return err
}

// Addr returns host:port of the server.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// URL returns a redis:// URL for the server (database 0, no credentials).
func (s *Server) URL() string { return "redis://" + s.Addr() + "/0" }

// Port returns the server's TCP port.
func (s *Server) Port() int { return s.port }

// Pid returns the running server's process id, or -1.
func (s *Server) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return -1
	}
	return s.cmd.Process.Pid
}

// Kill sends SIGKILL and waits until the process is gone: clients see their
// connections reset and new connections refused.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.killLocked()
}

// Restart kills the server if it runs and starts a new, empty one on the
// same port, waiting until it answers PING.
func (s *Server) Restart() error {
	if s.t != nil {
		s.t.Helper()
	}
	s.Kill()
	var err error
	// The port was ours a moment ago; a short retry covers a slow release.
	for attempt := 0; attempt < 5; attempt++ {
		if err = s.launch(); err == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return s.fail(fmt.Errorf("restart redis-server on port %d: %w", s.port, err))
}

// Pause stops the process with SIGSTOP: the kernel still accepts
// connections and buffers requests, but nothing answers, like a Redis stuck
// in a long command or a network black hole.
func (s *Server) Pause() error {
	if s.t != nil {
		s.t.Helper()
	}
	return s.fail(s.signal(syscall.SIGSTOP, true))
}

// Resume continues a paused server with SIGCONT.
func (s *Server) Resume() error {
	if s.t != nil {
		s.t.Helper()
	}
	return s.fail(s.signal(syscall.SIGCONT, false))
}

// Stop ends the server; Start's cleanup calls it.
func (s *Server) Stop() { s.Kill() }

func (s *Server) signal(sig syscall.Signal, paused bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return fmt.Errorf("%v: server is not running", sig)
	}
	if err := s.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("send %v: %w", sig, err)
	}
	s.paused = paused
	return nil
}

// launch starts redis-server on s.port and waits for PING. On failure the
// process is gone and the error carries its log.
func (s *Server) launch() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.runs++
	logPath := filepath.Join(s.dir, fmt.Sprintf("redis-%d.log", s.runs))
	logFile, err := os.Create(logPath)
	if err != nil {
		return fmt.Errorf("create log: %w", err)
	}
	defer logFile.Close() // the child keeps its own descriptor

	args := []string{
		"--port", strconv.Itoa(s.port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--dir", s.dir,
		"--daemonize", "no",
		"--loglevel", "warning",
	}
	if s.sentinel != "" {
		args = []string{s.sentinel, "--sentinel", "--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
			"--dir", s.dir, "--daemonize", "no", "--loglevel", "warning"}
	}
	args = append(args, s.args...)
	cmd := exec.Command(s.bin, args...)
	cmd.Dir = s.dir
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("exec %s: %w", s.bin, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	s.cmd, s.exited, s.paused = cmd, exited, false

	if err := waitPing(s.Addr(), exited, startTimeout); err != nil {
		s.killLocked()
		out, _ := os.ReadFile(logPath)
		return fmt.Errorf("port %d: %w; log:\n%s", s.port, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// killLocked kills the process and waits for it; s.mu is held.
func (s *Server) killLocked() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGKILL) // also ends a stopped process
	<-s.exited
	s.cmd, s.exited, s.paused = nil, nil, false
}

// waitPing polls addr with PING until it answers +PONG, the process exits
// or timeout passes.
func waitPing(addr string, exited <-chan struct{}, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var lastErr error
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("redis-server exited during start")
		default:
		}
		if lastErr = ping(addr); lastErr == nil {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("redis-server exited during start")
		case <-time.After(10 * time.Millisecond):
		}
	}
	return fmt.Errorf("no PONG within %s: %w", timeout, lastErr)
}

// ping sends one inline PING over a fresh connection.
func ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "+PONG" {
		// -LOADING or -NOAUTH: still a live server; NOAUTH means it answers.
		if strings.HasPrefix(line, "-NOAUTH") {
			return nil
		}
		return fmt.Errorf("unexpected answer %q", strings.TrimSpace(line))
	}
	return nil
}

// freePort asks the kernel for a free loopback port, avoiding Redis's
// default 6379 so a developer's own Redis is never touched, and at most
// maxPort when that is not 0.
func freePort(maxPort int) (int, error) {
	for range 1000 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		if port != 6379 && (maxPort == 0 || port <= maxPort) {
			return port, nil
		}
	}
	return 0, fmt.Errorf("no free port at most %d", maxPort)
}
