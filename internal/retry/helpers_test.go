package retry

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/fusioo-gateway/gateway/internal/fusioo"
	"github.com/fusioo-gateway/gateway/internal/fusioosim"
	"github.com/fusioo-gateway/gateway/internal/testutil/leaktest"
)

func TestMain(m *testing.M) { leaktest.VerifyTestMain(m) }

const token = "token-1"

func testRoutes(t testing.TB) *fusioo.Routes {
	t.Helper()
	rs, err := fusioo.NewRoutes(fusioo.DefaultRoutes())
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// newBase returns a base transport for loopback tests, its idle
// connections closed when the test ends.
func newBase(t testing.TB, o BaseOptions) *http.Transport {
	b := NewBaseTransport(o)
	t.Cleanup(b.CloseIdleConnections)
	return b
}

// defaultConfig is DefaultConfig with the test routes, changed by set
// (when not nil).
func defaultConfig(t testing.TB, set func(*Config)) Config {
	cfg := DefaultConfig()
	cfg.Routes = testRoutes(t)
	if set != nil {
		set(&cfg)
	}
	return cfg
}

// fastConfig is DefaultConfig without waits: no backoff and no budget, so
// a test sees only what it sets.
func fastConfig(t testing.TB) Config {
	return defaultConfig(t, func(c *Config) {
		c.BaseDelay, c.ConcurrentDelay = 0, 0
		c.BudgetWindow = 0 // no budget
	})
}

// newTransport drives a Policy built from cfg over a fresh base
// transport, or over base when one is given.
func newTransport(t testing.TB, cfg Config, base ...http.RoundTripper) *Transport {
	if cfg.Routes == nil {
		cfg.Routes = testRoutes(t)
	}
	tr := &Transport{Policy: New(cfg)}
	if len(base) > 0 {
		tr.Base = base[0]
	} else {
		tr.Base = newBase(t, DefaultBaseOptions())
	}
	return tr
}

// Hooks are what a test does around an Exchange where internal/proxy's
// attempt loop charges the quota and learns: Admit charges a retry (nil
// admits all), Answered hears every attempt, with Final set on the one
// whose answer goes back. Key, Deadline and Route go to Policy.Start.
type Hooks struct {
	Key      string
	Deadline time.Time
	Route    *fusioo.Route
	Admit    func(ctx context.Context, deadline time.Time) (bool, error)
	Answered func(Seen)
}

// Seen is an Attempt as Hooks.Answered hears it: Final when the driver
// returns its answer (Plan said no retry).
type Seen struct {
	Attempt
	Final bool
}

type hooksKey struct{}

// WithHooks returns a context carrying h for Transport.RoundTrip.
func WithHooks(ctx context.Context, h *Hooks) context.Context {
	return context.WithValue(ctx, hooksKey{}, h)
}

// Transport drives a Policy over Base as internal/proxy's attempt loop
// does (Handler.exchange), with the request context's Hooks in place of
// the quota, so the Policy's decisions are tested here on their own. Its
// backoff waits on the Policy's clock.
type Transport struct {
	*Policy
	Base http.RoundTripper
}

func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	h, _ := ctx.Value(hooksKey{}).(*Hooks)
	if h == nil {
		h = &Hooks{}
	}
	x, err := t.Start(req, h.Key, h.Route, h.Deadline)
	if err != nil {
		return nil, err
	}
	defer x.Close()
	x.Turn(ctx)
	for {
		start := t.clock.Now()
		resp, err := t.Base.RoundTrip(x.Request())
		a := x.Outcome(resp, err, t.clock.Since(start))
		wait, again := x.Plan(ctx, a)
		if h.Answered != nil {
			h.Answered(Seen{a, !again})
		}
		if !again || !t.sleep(ctx, wait) || !t.admit(ctx, h) || !x.Turn(ctx) {
			return resp, err
		}
		x.Retrying(resp, a)
	}
}

func (t *Transport) admit(ctx context.Context, h *Hooks) bool {
	if h.Admit == nil {
		return true
	}
	dl := h.Deadline
	if d, ok := ctx.Deadline(); ok && (dl.IsZero() || d.Before(dl)) {
		dl = d
	}
	ok, err := h.Admit(ctx, dl)
	return ok && err == nil
}

func (t *Transport) sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	tm := t.clock.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.Chan():
		return true
	case <-ctx.Done():
		return false
	}
}

// simServer is the Fusioo simulator behind a loopback server.
type simServer struct {
	sim *fusioosim.Sim
	srv *httptest.Server
}

func newSim(t testing.TB, cfg fusioosim.Config) *simServer {
	t.Helper()
	s := &simServer{sim: fusioosim.New(cfg)}
	s.srv = httptest.NewServer(s.sim)
	t.Cleanup(s.srv.Close)
	return s
}

func (s *simServer) ledger() fusioosim.Ledger { return s.sim.Ledger() }

// call describes one request sent straight to a Transport, as the proxy
// would.
type call struct {
	method, path string
	body         []byte
	header       map[string]string
	hooks        *Hooks
	ctx          context.Context
	unknownLen   bool // send the body without a ContentLength
}

func newRequest(t testing.TB, base string, c call) *http.Request {
	t.Helper()
	ctx := c.ctx
	if ctx == nil {
		ctx = context.Background()
	}
	if c.hooks != nil {
		ctx = WithHooks(ctx, c.hooks)
	}
	var body io.Reader
	if c.body != nil {
		body = bytes.NewReader(c.body)
		if c.unknownLen {
			body = io.MultiReader(body) // hides Len from NewRequest
		}
	}
	req, err := http.NewRequestWithContext(ctx, c.method, base+c.path, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	for k, v := range c.header {
		req.Header.Set(k, v)
	}
	return req
}

// result is an answer read in full.
type result struct {
	status int
	header http.Header
	body   []byte
	code   fusioo.Code
	err    error
}

func roundTrip(t testing.TB, rt http.RoundTripper, base string, c call) result {
	t.Helper()
	resp, err := rt.RoundTrip(newRequest(t, base, c))
	if err != nil {
		return result{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", c.method, c.path, err)
	}
	return result{status: resp.StatusCode, header: resp.Header, body: b, code: fusioo.ParseCode(b)}
}

// countObserver counts what a Transport tells its Observer.
type countObserver struct {
	mu        sync.Mutex
	retries   map[string]int
	exhausted int
}

func newCountObserver() *countObserver { return &countObserver{retries: map[string]int{}} }

func (o *countObserver) Retry(reason string) {
	o.mu.Lock()
	o.retries[reason]++
	o.mu.Unlock()
}

func (o *countObserver) BudgetExhausted() {
	o.mu.Lock()
	o.exhausted++
	o.mu.Unlock()
}

func (o *countObserver) total() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, v := range o.retries {
		n += v
	}
	return n
}

func (o *countObserver) exhaustedN() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.exhausted
}

// recordHooks returns hooks that record every Attempt.
func recordHooks(admit func(context.Context, time.Time) (bool, error)) (*Hooks, func() []Seen) {
	var mu sync.Mutex
	var got []Seen
	h := &Hooks{
		Key:   "key-1",
		Admit: admit,
		Answered: func(a Seen) {
			mu.Lock()
			got = append(got, a)
			mu.Unlock()
		},
	}
	return h, func() []Seen {
		mu.Lock()
		defer mu.Unlock()
		return append([]Seen(nil), got...)
	}
}

// script is a test upstream that answers request n (from 0) with
// answers[min(n, len-1)], and records every request body it read.
type script struct {
	mu      sync.Mutex
	answers []scripted
	bodies  [][]byte
	protos  []string
	srv     *httptest.Server
}

type scripted struct {
	status     int
	code       fusioo.Code
	retryAfter string
	reset      bool // reset the connection instead of answering
	body       []byte
	header     map[string]string
}

func newScript(t testing.TB, answers ...scripted) *script {
	s := &script{answers: answers}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *script) serve(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	s.mu.Lock()
	n := len(s.bodies)
	s.bodies = append(s.bodies, b)
	s.protos = append(s.protos, r.Proto)
	a := s.answers[min(n, len(s.answers)-1)]
	s.mu.Unlock()
	if a.reset {
		resetConn(w)
		return
	}
	for k, v := range a.header {
		w.Header().Set(k, v)
	}
	if a.retryAfter != "" {
		w.Header().Set("Retry-After", a.retryAfter)
	}
	if a.body != nil {
		w.WriteHeader(a.status)
		_, _ = w.Write(a.body)
		return
	}
	if a.status < 400 {
		fusioo.WriteSuccess(w, map[string]int{"n": n})
		return
	}
	fusioo.WriteError(w, a.status, a.code, "")
}

func (s *script) requests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.bodies)
}

func (s *script) body(i int) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bodies[i]
}

// resetConn ends the connection under w with a TCP RST and no answer.
func resetConn(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// refusedURL returns the URL of a loopback port nothing listens on.
func refusedURL(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr
}

// blockUntil waits until n timers or sleepers wait on fc, failing the test
// after a bound.
func blockUntil(t testing.TB, fc *clockwork.FakeClock, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := fc.BlockUntilContext(ctx, n); err != nil {
		t.Fatalf("waiting for %d waiters on the fake clock: %v", n, err)
	}
}

func createBody(i int) []byte {
	b, _ := json.Marshal(map[string]any{"name": "record", "i": i})
	return b
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}
