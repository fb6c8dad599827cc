package retry

import (
	"errors"
	"io"
	"net/http"
	"testing"
	"testing/synctest"
	"time"
)

// chanBody is a response body whose reads each wait for a chunk on c
// (closed: EOF) or for Close.
type chanBody struct {
	c      chan string
	closed chan struct{}
}

func (b *chanBody) Read(p []byte) (int, error) {
	select {
	case s, ok := <-b.c:
		if !ok {
			return 0, io.EOF
		}
		return copy(p, s), nil
	case <-b.closed:
		return 0, errors.New("closed")
	}
}

func (b *chanBody) Close() error {
	select {
	case <-b.closed:
	default:
		close(b.closed)
	}
	return nil
}

type bodyRT struct{ body io.ReadCloser }

func (rt bodyRT) RoundTrip(*http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: 200, Body: rt.body}, nil
}

// TestBodyTimeoutPerRead: each read of a response body has the idle
// timeout to complete, however long the caller waits between reads (a
// slow client), and a read that waits longer fails with ErrBodyStalled
// exactly idle after it began, the body closed.
func TestBodyTimeoutPerRead(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		const idle = time.Second
		body := &chanBody{c: make(chan string), closed: make(chan struct{})}
		req, _ := http.NewRequest("GET", "http://upstream/", nil)
		resp, err := WithBodyTimeout(bodyRT{body}, idle).RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 16)
		for i, wait := range []time.Duration{0, 3 * idle, idle / 2, 5 * idle / 2} {
			time.Sleep(wait) // the caller between reads: does not count
			go func() {
				time.Sleep(idle - time.Millisecond) // the upstream, just in time
				body.c <- "x"
			}()
			if n, err := resp.Body.Read(buf); n != 1 || err != nil {
				t.Fatalf("read %d: %d %v", i, n, err)
			}
		}
		start := time.Now()
		n, err := resp.Body.Read(buf)
		if n != 0 || !errors.Is(err, ErrBodyStalled) {
			t.Fatalf("stalled read: %d %v, want ErrBodyStalled", n, err)
		}
		if took := time.Since(start); took != idle {
			t.Fatalf("stalled read failed after %s, want %s", took, idle)
		}
		if _, err := resp.Body.Read(buf); !errors.Is(err, ErrBodyStalled) {
			t.Fatalf("read after the stall: %v", err)
		}
		_ = resp.Body.Close()
	})
}

// TestBodyTimeoutNotRead: a body nobody reads for many idle times is not
// cut (no read was waiting), and reads to its end afterwards.
func TestBodyTimeoutNotRead(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		body := &chanBody{c: make(chan string, 1), closed: make(chan struct{})}
		body.c <- "x"
		close(body.c)
		req, _ := http.NewRequest("GET", "http://upstream/", nil)
		resp, _ := WithBodyTimeout(bodyRT{body}, time.Second).RoundTrip(req)
		time.Sleep(5 * time.Second)
		select {
		case <-body.closed:
			t.Fatal("closed a body no read was waiting on")
		default:
		}
		if b, err := io.ReadAll(resp.Body); string(b) != "x" || err != nil {
			t.Fatalf("ReadAll %q %v", b, err)
		}
		_ = resp.Body.Close()
	})
}
