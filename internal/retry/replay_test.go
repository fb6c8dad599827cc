package retry

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/fusioo-gateway/gateway/internal/fusioosim"
)

// TestNoHiddenReplayResetAfterApply sends a create carrying an
// Idempotency-Key (and a GetBody, as http.NewRequest sets one) over a
// reused connection that the simulator resets after applying the create.
// http.Transport alone replays such a request on its own; through the
// Transport the simulator applies it exactly once and the client gets the
// error.
func TestNoHiddenReplayResetAfterApply(t *testing.T) {
	t.Parallel()
	run := func(t *testing.T, rt http.RoundTripper, sim *simServer) result {
		// Warm a connection so the create goes over a reused one.
		if res := roundTrip(t, rt, sim.srv.URL, call{method: "GET", path: "/v3/apps"}); res.status != 200 {
			t.Fatalf("warm-up: %d %v", res.status, res.err)
		}
		sim.sim.SetFaults(fusioosim.Faults{ResetAfterApply: 1})
		req := newRequest(t, sim.srv.URL, call{method: "POST", path: "/v3/records/apps/app1", body: createBody(7),
			header: map[string]string{"Idempotency-Key": "create-7"}})
		if req.GetBody == nil {
			t.Fatal("test request has no GetBody")
		}
		resp, err := rt.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
			return result{status: resp.StatusCode}
		}
		return result{err: err}
	}

	t.Run("http.Transport alone replays", func(t *testing.T) {
		t.Parallel()
		// The control: proves the scenario triggers a hidden replay.
		sim := newSim(t, fusioosim.Config{})
		base := newBase(t, DefaultBaseOptions())
		run(t, base, sim)
		if l := sim.ledger(); l.Creates != 2 || l.Duplicates != 1 {
			t.Fatalf("without the retry layer: creates %d, duplicates %d; want the hidden replay (2, 1)", l.Creates, l.Duplicates)
		}
	})
	t.Run("Transport", func(t *testing.T) {
		t.Parallel()
		sim := newSim(t, fusioosim.Config{})
		cfg := fastConfig(t)
		cfg.IdempotentWrites = true
		tr := newTransport(t, cfg)
		res := run(t, tr, sim)
		if res.err == nil {
			t.Fatalf("got %d, want the reset", res.status)
		}
		if l := sim.ledger(); l.Creates != 1 || l.Duplicates != 0 || l.Injected["reset_after_apply"] != 1 {
			t.Fatalf("creates %d, duplicates %d, resets %d; want 1, 0, 1", l.Creates, l.Duplicates, l.Injected["reset_after_apply"])
		}
		if tr.attempts.Load() != 2 || tr.writes.Load() != 2 {
			t.Fatalf("%d attempts, %d writes; want 2, 2", tr.attempts.Load(), tr.writes.Load())
		}
	})
}

// rawServer is an HTTP/1.1 upstream that keeps every request's header
// block as it came on the wire, and resets a connection at its resetAt-th
// request (after reading it; 0: never).
type rawServer struct {
	l       net.Listener
	resetAt int

	mu    sync.Mutex
	reqs  []rawRequest
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

type rawRequest struct {
	head string // request line and header fields, CRLF-separated
	body []byte
}

func newRawServer(t *testing.T, resetAt int) *rawServer {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &rawServer{l: l, resetAt: resetAt, conns: map[net.Conn]bool{}}
	s.wg.Add(1)
	go s.accept()
	t.Cleanup(func() {
		l.Close()
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *rawServer) url() string { return "http://" + s.l.Addr().String() }

func (s *rawServer) accept() {
	defer s.wg.Done()
	for {
		c, err := s.l.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns[c] = true
		s.mu.Unlock()
		s.wg.Add(1)
		go s.serve(c)
	}
}

func (s *rawServer) serve(c net.Conn) {
	defer s.wg.Done()
	defer c.Close()
	br := bufio.NewReader(c)
	for n := 1; ; n++ {
		var head strings.Builder
		length, chunked := 0, false
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if line == "\r\n" {
				break
			}
			head.WriteString(line)
			name, value, _ := strings.Cut(strings.TrimRight(line, "\r\n"), ":")
			switch strings.ToLower(name) {
			case "content-length":
				length, _ = strconv.Atoi(strings.TrimSpace(value))
			case "transfer-encoding":
				chunked = strings.Contains(strings.ToLower(value), "chunked")
			}
		}
		var body []byte
		if chunked {
			body, _ = io.ReadAll(httputil.NewChunkedReader(br))
			// The trailer section ends with an empty line.
			for {
				line, err := br.ReadString('\n')
				if err != nil || line == "\r\n" {
					break
				}
			}
		} else {
			body = make([]byte, length)
			if _, err := io.ReadFull(br, body); err != nil {
				return
			}
		}
		s.mu.Lock()
		s.reqs = append(s.reqs, rawRequest{head: head.String(), body: body})
		s.mu.Unlock()
		if n == s.resetAt {
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
			return
		}
		const ok = `{"code":10000,"message":"Success","data":{}}`
		answer := "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + strconv.Itoa(len(ok)) + "\r\n\r\n"
		if !strings.HasPrefix(head.String(), "HEAD ") {
			answer += ok
		}
		if _, err := io.WriteString(c, answer); err != nil {
			return
		}
	}
}

func (s *rawServer) requests() []rawRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]rawRequest(nil), s.reqs...)
}

// headerLines returns the values of the header fields named name (any
// case) in a raw header block, with the name as spelled on the wire.
func headerLines(head, name string) []string {
	var out []string
	for _, line := range strings.Split(head, "\r\n") {
		if hasPrefixFold(line, name+":") {
			out = append(out, line)
		}
	}
	return out
}

// TestNoHiddenReplayBodiless resets the second request of each connection
// and checks that bodiless requests are never sent again by http.Transport
// on its own: a bodiless create with an Idempotency-Key is sent once and
// fails; a GET is retried, by the Transport, as a counted attempt.
func TestNoHiddenReplayBodiless(t *testing.T) {
	t.Parallel()
	rows := []struct {
		method, path string
		header       map[string]string
		attempts     int // through the Transport, after the warm-up
		replayed     int // by http.Transport alone, after the warm-up
	}{
		{"POST", "/v3/records/apps/app1", map[string]string{"Idempotency-Key": "k1"}, 1, 2},
		{"POST", "/v3/webhooks", map[string]string{"X-Idempotency-Key": "k2"}, 1, 2},
		{"GET", "/v3/apps", nil, 2, 2},
		{"DELETE", "/v3/records/r1", map[string]string{"Idempotency-Key": "k3"}, 1, 2},
	}
	for _, r := range rows {
		t.Run(r.method+" "+r.path, func(t *testing.T) {
			t.Parallel()
			for _, layer := range []bool{false, true} {
				s := newRawServer(t, 2)
				base := newBase(t, DefaultBaseOptions())
				var rt http.RoundTripper = base
				var tr *Transport
				if layer {
					cfg := fastConfig(t)
					cfg.MaxAttempts = 2
					tr = newTransport(t, cfg, base)
					rt = tr
				}
				if res := roundTrip(t, rt, s.url(), call{method: "GET", path: "/v3/ping"}); res.status != 200 {
					t.Fatalf("warm-up: %d %v", res.status, res.err)
				}
				res := roundTrip(t, rt, s.url(), call{method: r.method, path: r.path, header: r.header})
				got := len(s.requests()) - 1
				if !layer {
					if got != r.replayed {
						t.Fatalf("http.Transport alone sent %d, want %d (the control no longer shows a hidden replay)", got, r.replayed)
					}
					continue
				}
				if got != r.attempts {
					t.Fatalf("upstream saw %d requests through the Transport, want %d", got, r.attempts)
				}
				if a, w := tr.attempts.Load()-1, tr.writes.Load()-1; a != int64(got) || w != int64(got) {
					t.Fatalf("%d attempts and %d writes for %d requests seen: an uncounted replay", a, w, got)
				}
				if (res.err == nil) != (r.attempts > 1) {
					t.Fatalf("result %d %v", res.status, res.err)
				}
			}
		})
	}
}

// TestBodilessWire checks what bodiless attempts look like on the wire:
// no chunked encoding, Content-Length: 0 on a POST, none on a GET, and the
// idempotency key present once, whatever its spelling.
func TestBodilessWire(t *testing.T) {
	t.Parallel()
	s := newRawServer(t, 0)
	tr := newTransport(t, fastConfig(t))
	send := func(c call) rawRequest {
		t.Helper()
		n := len(s.requests())
		if res := roundTrip(t, tr, s.url(), c); res.status != 200 {
			t.Fatalf("%s %s: %d %v", c.method, c.path, res.status, res.err)
		}
		return s.requests()[n]
	}
	key := map[string]string{"Idempotency-Key": "abc"}

	post := send(call{method: "POST", path: "/v3/records/apps/app1", header: key})
	if te := headerLines(post.head, "Transfer-Encoding"); len(te) != 0 {
		t.Errorf("bodiless POST sent %q", te)
	}
	if cl := headerLines(post.head, "Content-Length"); len(cl) != 1 || !strings.HasSuffix(cl[0], " 0") {
		t.Errorf("bodiless POST Content-Length %q, want 0", cl)
	}
	if k := headerLines(post.head, "Idempotency-Key"); len(k) != 1 || !strings.HasSuffix(k[0], ": abc") {
		t.Errorf("Idempotency-Key on the wire: %q", k)
	}

	for _, m := range []string{"GET", "HEAD", "OPTIONS", "DELETE"} {
		r := send(call{method: m, path: "/v3/apps", header: key})
		if te, cl := headerLines(r.head, "Transfer-Encoding"), headerLines(r.head, "Content-Length"); len(te) != 0 || len(cl) != 0 || len(r.body) != 0 {
			t.Errorf("bodiless %s sent %q %q and %d body bytes", m, te, cl, len(r.body))
		}
	}

	if tr := send(call{method: "TRACE", path: "/v3/apps"}); len(headerLines(tr.head, "Transfer-Encoding")) != 0 || len(tr.body) != 0 {
		t.Errorf("bodiless TRACE sent %q", tr.head)
	}

	// Bodies are sent with their length, chunked only when it is unknown
	// and too large to buffer.
	body := bytes.Repeat([]byte("x"), 100)
	r := send(call{method: "POST", path: "/v3/records/apps/app1", body: body, unknownLen: true})
	if cl := headerLines(r.head, "Content-Length"); len(cl) != 1 || !strings.HasSuffix(cl[0], " 100") || !bytes.Equal(r.body, body) {
		t.Errorf("buffered body of unknown length sent as %q, %d bytes", cl, len(r.body))
	}
	// A body that came chunked to the proxy goes on with its length.
	req := newRequest(t, s.url(), call{method: "PUT", path: "/v3/records/r1", body: body, unknownLen: true})
	req.TransferEncoding = []string{"chunked"}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	reqs := s.requests()
	r = reqs[len(reqs)-1]
	if te, cl := headerLines(r.head, "Transfer-Encoding"), headerLines(r.head, "Content-Length"); len(te) != 0 || len(cl) != 1 || !bytes.Equal(r.body, body) {
		t.Errorf("buffered chunked body sent as %q %q", te, cl)
	}
}

// countConn counts the writes made on a connection.
type countConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c countConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// TestSingleWrite checks that an attempt goes out in one write, as with
// http.Transport alone: a buffered body is a reader http.Transport knows
// to be in memory, and a bodiless one is not probed or flushed apart.
func TestSingleWrite(t *testing.T) {
	t.Parallel()
	s := newRawServer(t, 0)
	var writes atomic.Int64
	base := newBase(t, DefaultBaseOptions())
	d := &net.Dialer{}
	base.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return countConn{c, &writes}, nil
	}
	cfg := fastConfig(t)
	tr := newTransport(t, cfg, base)
	for _, c := range []call{
		{method: "GET", path: "/v3/apps"},
		{method: "POST", path: "/v3/records/apps/app1", body: createBody(1)},
		{method: "POST", path: "/v3/records/apps/app1", body: createBody(1), unknownLen: true},
		{method: "POST", path: "/v3/records/apps/app1", header: map[string]string{"Idempotency-Key": "k"}},
	} {
		before := writes.Load()
		if res := roundTrip(t, tr, s.url(), c); res.status != 200 {
			t.Fatalf("%s: %d %v", c.method, res.status, res.err)
		}
		if n := writes.Load() - before; n != 1 {
			t.Errorf("%s %s (unknown length %v): %d writes, want 1", c.method, c.path, c.unknownLen, n)
		}
	}
}
