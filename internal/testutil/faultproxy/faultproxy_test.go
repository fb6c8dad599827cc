package faultproxy

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// echo serves an echo server on loopback until the test ends.
func echo(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(c, c); _ = c.Close() }()
		}
	}()
	return ln.Addr().String()
}

func roundTrip(t *testing.T, c net.Conn, within time.Duration) error {
	t.Helper()
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	_ = c.SetReadDeadline(time.Now().Add(within))
	buf := make([]byte, 4)
	_, err := io.ReadFull(c, buf)
	if err == nil && string(buf) != "ping" {
		t.Fatalf("echo %q", buf)
	}
	return err
}

func TestProxyFaults(t *testing.T) {
	p, err := New(echo(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := roundTrip(t, c, 5*time.Second); err != nil {
		t.Fatalf("forwarding: %v", err)
	}

	// Paused: the socket stays open and nothing comes back...
	p.Pause()
	if err := roundTrip(t, c, 200*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("paused: %v, want a read timeout", err)
	}
	// ...a new connection is accepted and not answered either...
	c2, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if err := roundTrip(t, c2, 200*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("new connection while paused: %v, want a read timeout", err)
	}
	// ...and what was held arrives, in order, on Resume.
	p.Resume()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("after resume: %q %v", buf, err)
	}
	if err := roundTrip(t, c2, 5*time.Second); err != nil {
		t.Fatalf("second connection after resume: %v", err)
	}

	// Latency: an answer takes at least two legs of it.
	p.SetLatency(50 * time.Millisecond)
	start := time.Now()
	if err := roundTrip(t, c, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Fatalf("round trip %s with 50ms each way", d)
	}
	p.SetLatency(0)

	// Cut: open connections are reset; new ones work.
	p.Cut()
	if err := roundTrip(t, c, 5*time.Second); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("after cut: %v, want the connection closed", err)
	}
	c3, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	if err := roundTrip(t, c3, 5*time.Second); err != nil {
		t.Fatalf("new connection after cut: %v", err)
	}
}
