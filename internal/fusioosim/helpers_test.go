package fusioosim

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/fusioo-gateway/gateway/internal/fusioo"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// harness is a Sim behind a real loopback server, with counts of the
// handlers started and returned so a test can wait for a handler its client
// left.
type harness struct {
	t   *testing.T
	sim *Sim
	srv *httptest.Server

	mu       sync.Mutex
	running  int
	returned int
	changed  chan struct{} // signalled (without blocking) when a handler returns
}

func newHarness(t *testing.T, cfg Config, setup ...func(*Sim)) *harness {
	t.Helper()
	h := &harness{t: t, sim: New(cfg), changed: make(chan struct{}, 1)}
	for _, f := range setup {
		f(h.sim)
	}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		h.running++
		h.mu.Unlock()
		defer func() {
			h.mu.Lock()
			h.running--
			h.returned++
			h.mu.Unlock()
			select {
			case h.changed <- struct{}{}:
			default:
			}
		}()
		h.sim.ServeHTTP(w, r)
	}))
	t.Cleanup(h.srv.Close)
	return h
}

// waitReturned waits until n handlers have returned since the harness
// started and none is running, failing the test if that takes unreasonably
// long (a handler that does not return).
func (h *harness) waitReturned(n int) {
	h.t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for {
		h.mu.Lock()
		returned, running := h.returned, h.running
		h.mu.Unlock()
		done := returned >= n && running == 0
		if done {
			return
		}
		select {
		case <-h.changed:
		case <-deadline.C:
			h.t.Fatalf("waiting for %d handlers to return: %d returned, %d running", n, returned, running)
		}
	}
}

// answer is a decoded simulator response.
type answer struct {
	status int
	header http.Header
	env    fusioo.Envelope
	raw    []byte
}

// data decodes the envelope's data into v.
func (a answer) data(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(a.env.Data, v); err != nil {
		t.Fatalf("data %s: %v", a.env.Data, err)
	}
}

type req struct {
	method, path, token, body string
	header                    map[string]string
	ctx                       context.Context
	bodyReader                io.Reader
	length                    int64
}

const tok = "token-1"

// do sends r and decodes the answer, failing the test on transport errors.
func (h *harness) do(r req) answer {
	h.t.Helper()
	a, err := h.try(r)
	if err != nil {
		h.t.Fatalf("%s %s: %v", r.method, r.path, err)
	}
	return a
}

func (h *harness) try(r req) (answer, error) {
	h.t.Helper()
	return h.tryWith(h.srv.Client(), r)
}

func (h *harness) tryWith(c *http.Client, r req) (answer, error) {
	h.t.Helper()
	ctx := r.ctx
	if ctx == nil {
		ctx = context.Background()
	}
	var body io.Reader = strings.NewReader(r.body)
	if r.bodyReader != nil {
		body = r.bodyReader
	}
	hr, err := http.NewRequestWithContext(ctx, r.method, h.srv.URL+r.path, body)
	if err != nil {
		h.t.Fatal(err)
	}
	if r.bodyReader != nil {
		hr.ContentLength = r.length
	}
	if r.token != "" {
		hr.Header.Set("Authorization", "Bearer "+r.token)
	}
	for k, v := range r.header {
		hr.Header.Set(k, v)
	}
	resp, err := c.Do(hr)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return answer{}, err
	}
	a := answer{status: resp.StatusCode, header: resp.Header, raw: raw}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &a.env); err != nil {
			h.t.Fatalf("%s %s: body %q is not an envelope: %v", r.method, r.path, raw, err)
		}
	}
	return a, nil
}

// get and post are the common shorthands, with the default token.
func (h *harness) get(path string) answer { return h.do(req{method: "GET", path: path, token: tok}) }
func (h *harness) post(path, body string) answer {
	return h.do(req{method: "POST", path: path, token: tok, body: body})
}

// expect checks an answer's status and code and Fusioo's envelope shape.
func expect(t *testing.T, a answer, status int, code fusioo.Code) {
	t.Helper()
	if a.status != status || a.env.Code != code {
		t.Fatalf("got %d/%d, want %d/%d (body %s)", a.status, a.env.Code, status, code, a.raw)
	}
	if ct := a.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q", ct)
	}
	if a.env.Message == "" || len(a.env.Data) == 0 {
		t.Fatalf("incomplete envelope %s", a.raw)
	}
	if code != fusioo.CodeSuccess && string(a.env.Data) != "{}" {
		t.Fatalf("error data %s, want {}", a.env.Data)
	}
}

// clock is a fake clock for the quota windows.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock(t time.Time) *clock { return &clock{t: t} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// zeros is an endless reader of zero bytes, for large bodies without
// allocating them.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
