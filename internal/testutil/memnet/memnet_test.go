package memnet

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"testing/synctest"
	"time"
)

// TestPipeInABubble: a dialled connection reaches the listener, a read on
// it blocks durably (the bubble's clock moves to its deadline), and a
// closed listener refuses.
func TestPipeInABubble(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := New()
		l, err := n.Listen("a:1")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := n.Listen("a:1"); err == nil {
			t.Fatal("listened twice on one address")
		}
		go func() {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			_, _ = io.WriteString(c, "hi")
			_, _ = io.Copy(io.Discard, c)
		}()
		c, err := n.Dial(context.Background(), "tcp", "a:1")
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 2)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hi" {
			t.Fatalf("read %q %v", buf, err)
		}
		start := time.Now()
		_ = c.SetReadDeadline(start.Add(time.Minute))
		if _, err := c.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) || time.Since(start) != time.Minute {
			t.Fatalf("read %v after %s, want the deadline a minute on", err, time.Since(start))
		}
		c.Close()
		l.Close()
		if _, err := n.Dial(context.Background(), "tcp", "a:1"); err == nil {
			t.Fatal("dialled a closed listener")
		}
		if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("accept on a closed listener: %v", err)
		}
	})
}
