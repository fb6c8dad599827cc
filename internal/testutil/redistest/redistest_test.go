package redistest

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"
)

// do sends one inline command and returns the first reply line.
func do(t *testing.T, addr, cmd string) (string, error) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := c.Write([]byte(cmd + "\r\n")); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

func TestServerLifecycle(t *testing.T) {
	s := Start(t)
	if s.Port() == 6379 || !strings.HasPrefix(s.URL(), "redis://127.0.0.1:") {
		t.Fatalf("addr %s url %s", s.Addr(), s.URL())
	}
	if got, err := do(t, s.Addr(), "SET k v"); err != nil || got != "+OK" {
		t.Fatalf("SET: %q %v", got, err)
	}

	s.Pause()
	start := time.Now()
	if _, err := do(t, s.Addr(), "PING"); err == nil {
		t.Fatal("a paused server answered")
	}
	if time.Since(start) > 2*time.Second {
		t.Fatal("the read deadline did not end the call")
	}
	s.Resume()
	if got, err := do(t, s.Addr(), "GET k"); err != nil || got != "$1" {
		t.Fatalf("GET after resume: %q %v", got, err)
	}

	s.Kill()
	if _, err := do(t, s.Addr(), "PING"); err == nil {
		t.Fatal("a killed server answered")
	}
	s.Restart()
	if got, err := do(t, s.Addr(), "EXISTS k"); err != nil || got != ":0" {
		t.Fatalf("EXISTS after restart: %q %v (want an empty server)", got, err)
	}
	// Restart of a running server, and a paused one.
	s.Pause()
	s.Restart()
	if got, err := do(t, s.Addr(), "PING"); err != nil || got != "+PONG" {
		t.Fatalf("PING after restarting a paused server: %q %v", got, err)
	}
}

func TestServerArgs(t *testing.T) {
	s := Start(t, "--requirepass", "s3cret")
	if got, _ := do(t, s.Addr(), "GET k"); !strings.HasPrefix(got, "-NOAUTH") {
		t.Fatalf("without AUTH: %q", got)
	}
}

func TestServersAreIndependent(t *testing.T) {
	a, b := Start(t), Start(t)
	if a.Addr() == b.Addr() {
		t.Fatal("two servers on one port")
	}
}
