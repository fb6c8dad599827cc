package proxy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/fusioo-gateway/gateway/internal/cache"
	"github.com/fusioo-gateway/gateway/internal/fusioo"
	"github.com/fusioo-gateway/gateway/internal/fusioosim"
	"github.com/fusioo-gateway/gateway/internal/limiter"
	"github.com/fusioo-gateway/gateway/internal/metrics"
	"github.com/fusioo-gateway/gateway/internal/proxy"
	"github.com/fusioo-gateway/gateway/internal/quota"
	"github.com/fusioo-gateway/gateway/internal/retry"
	"github.com/fusioo-gateway/gateway/internal/testutil/memnet"
)

// stack is a gateway in front of an upstream, both on loopback.
type stack struct {
	t        *testing.T
	upstream *httptest.Server
	sim      *fusioosim.Sim
	gw       *httptest.Server
	cfg      proxy.Config
	mu       sync.Mutex
	handler  *proxy.Handler
	lim      *limiter.Limiter
	store    *quota.MemoryStore
	logs     *syncBuffer
	reg      *prometheus.Registry
	client   *http.Client
	net      *memnet.Network // nil: loopback
	cache    *cache.Cache    // nil: no [[cache]]
}

type stackOpts struct {
	policy      quota.Policy
	maxWait     time.Duration
	maxBody     int64
	sim         *fusioosim.Config               // nil with upstream set
	upstream    http.Handler                    // a custom upstream instead of the simulator
	wrap        func(http.Handler) http.Handler // nil: the upstream as it is
	clock       clockwork.Clock
	timeout     time.Duration // upstream response header timeout (default the base transport's)
	transport   http.RoundTripper
	attempts    int           // retry.max_attempts (default 1: no retries)
	maxPause    time.Duration // upstream.max_pause (default 1 minute)
	dial        time.Duration // upstream.dial_timeout (default the base transport's)
	upstreamURL string        // forward there instead of the upstream started
	bodyTimeout time.Duration // upstream.body_timeout and server.body_timeout
	// inBubble serves the upstream and the gateway on an in-process
	// network (memnet) instead of loopback, for a test that runs inside
	// a testing/synctest bubble: its waits are then on the bubble's fake
	// clock, which advances only when every goroutine is blocked, so a
	// loaded machine cannot stretch them.
	inBubble bool
	coalesce bool                  // [coalesce] enabled
	cache    map[string]cache.Rule // [[cache]] entries, by route name
}

func newStack(t *testing.T, o stackOpts) *stack {
	t.Helper()
	s := &stack{t: t, logs: &syncBuffer{}}
	if o.inBubble {
		s.net = memnet.New()
	}
	up := o.upstream
	if up == nil {
		cfg := fusioosim.Config{}
		if o.sim != nil {
			cfg = *o.sim
		}
		s.sim = fusioosim.New(cfg)
		up = s.sim
	}
	if o.wrap != nil {
		up = o.wrap(up)
	}
	s.upstream = s.server("fusioo.test:80", up, nil)
	if o.policy.Limit == 0 {
		o.policy = quota.Policy{Limit: 1000, Window: time.Hour, Buckets: quota.DefaultBuckets}
	}
	if o.maxWait == 0 {
		o.maxWait = 5 * time.Second
	}
	if o.maxBody == 0 {
		o.maxBody = 26 << 20
	}
	if o.clock == nil {
		o.clock = clockwork.NewRealClock()
	}
	routes, err := fusioo.NewRoutes(fusioo.DefaultRoutes())
	if err != nil {
		t.Fatal(err)
	}
	s.reg = prometheus.NewRegistry()
	names := []string{}
	for _, r := range routes.All() {
		names = append(names, r.Name())
	}
	m := metrics.New(s.reg, metrics.Options{Routes: names, UpstreamStatuses: []int{200, 429}})
	s.store = quota.NewMemoryStore(o.policy, o.clock)
	lc := limiter.DefaultConfig()
	lc.Store, lc.Clock, lc.MaxWait, lc.MaxDepth, lc.MaxQueued, lc.Observer = s.store, o.clock, o.maxWait, 1000, 10000, m
	s.lim = limiter.New(lc)
	if o.maxPause == 0 {
		o.maxPause = time.Minute
	}
	u, _ := url.Parse(s.upstream.URL)
	if o.upstreamURL != "" {
		u, _ = url.Parse(o.upstreamURL)
	}
	rt := o.transport
	if rt == nil {
		bo := retry.DefaultBaseOptions()
		if o.timeout != 0 {
			bo.ResponseHeaderTimeout = o.timeout
		}
		if o.dial != 0 {
			bo.DialTimeout = o.dial
		}
		base := retry.NewBaseTransport(bo)
		if s.net != nil {
			base.DialContext = s.net.Dial
		}
		t.Cleanup(base.CloseIdleConnections)
		rt = retry.WithBodyTimeout(base, o.bodyTimeout)
	}
	// No backoff: the waits are the retry package's to test; the
	// loop waits on the stack's clock, which may be a fake one.
	rc := retry.DefaultConfig()
	rc.Routes, rc.MaxAttempts, rc.Clock = routes, max(o.attempts, 1), o.clock
	rc.BaseDelay, rc.ConcurrentDelay, rc.MaxDelay = 0, 0, 10*time.Millisecond
	pol := retry.New(rc)
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(s.logs), zap.DebugLevel))
	if o.cache != nil {
		s.cache = cache.New(o.cache)
	}
	s.cfg = proxy.Config{
		Upstream: u, Transport: rt, Retry: pol, Limiter: s.lim, Routes: routes, Logger: log, Clock: o.clock, Observer: m,
		MaxBodyBytes: o.maxBody, MaxWait: o.maxWait, Limit: o.policy.Limit, Window: o.policy.Window, MaxPause: o.maxPause,
		BodyTimeout: o.bodyTimeout, FlushInterval: 50 * time.Millisecond, Coalesce: o.coalesce,
		Cache: s.cache,
	}
	s.handler = proxy.New(s.cfg)
	// The first handler's base context, as cmd/gateway wires it; a
	// handler swapped in later (retarget) is reached without it.
	s.gw = s.server("gateway.test:80", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		h := s.handler
		s.mu.Unlock()
		h.ServeHTTP(w, r)
	}), s.handler.BaseContext)
	tr := &http.Transport{MaxIdleConnsPerHost: 100}
	if s.net != nil {
		tr.DialContext = s.net.Dial
	}
	t.Cleanup(tr.CloseIdleConnections)
	s.client = &http.Client{Transport: tr}
	return s
}

// server starts h on loopback, or at addr on the stack's in-process
// network, and closes it when the test ends.
func (s *stack) server(addr string, h http.Handler, base func(net.Listener) context.Context) *httptest.Server {
	s.t.Helper()
	srv := &httptest.Server{Config: &http.Server{Handler: h, BaseContext: base}}
	if s.net == nil {
		srv = httptest.NewUnstartedServer(h)
		srv.Config.BaseContext = base
	} else {
		l, err := s.net.Listen(addr)
		if err != nil {
			s.t.Fatal(err)
		}
		srv.Listener = l
	}
	srv.Start()
	s.t.Cleanup(srv.Close)
	return srv
}

// dial opens a connection to the gateway, for a test that writes its own
// bytes.
func (s *stack) dial() net.Conn {
	s.t.Helper()
	addr := strings.TrimPrefix(s.gw.URL, "http://")
	var c net.Conn
	var err error
	if s.net != nil {
		c, err = s.net.Dial(s.t.Context(), "tcp", addr)
	} else {
		c, err = net.Dial("tcp", addr)
	}
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { _ = c.Close() })
	return c
}

// do sends a request through the gateway and returns the response with its
// body read.
func (s *stack) do(method, path, token string, body []byte, hdr ...string) (*http.Response, []byte) {
	s.t.Helper()
	resp := s.open(method, path, token, body, hdr...)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatal(err)
	}
	return resp, b
}

// open sends a request through the gateway (as do) and returns the
// response, its body for the caller to read and close.
func (s *stack) open(method, path, token string, body []byte, hdr ...string) *http.Response {
	s.t.Helper()
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, s.gw.URL+path, r)
	if err != nil {
		s.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := s.client.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	return resp
}

// envelope decodes a Fusioo envelope and fails the test when b is not one.
func envelope(t *testing.T, resp *http.Response, b []byte) fusioo.Envelope {
	t.Helper()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q, body %s", ct, b)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatalf("not JSON: %s", b)
	}
	for _, k := range []string{"code", "message", "data"} {
		if _, ok := raw[k]; !ok {
			t.Fatalf("envelope without %q: %s", k, b)
		}
	}
	var env fusioo.Envelope
	if err := json.Unmarshal(b, &env); err != nil {
		t.Fatal(err)
	}
	if env.Code != fusioo.CodeSuccess && string(env.Data) != "{}" {
		t.Fatalf("error data %s, want {}", env.Data)
	}
	return env
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// metric returns the sum of a metric family's samples whose labels include
// every pair in match, and the number of distinct series in the family.
func (s *stack) metric(name string, match ...string) (float64, int) {
	s.t.Helper()
	mfs, err := s.reg.Gather()
	if err != nil {
		s.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		var sum float64
	series:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(match); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == match[i] && lp.GetValue() == match[i+1] {
						found = true
					}
				}
				if !found {
					continue series
				}
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			}
		}
		return sum, len(mf.GetMetric())
	}
	return 0, 0
}

// retarget points the gateway at another upstream URL.
func (s *stack) retarget(rawURL string) {
	u, err := url.Parse(rawURL)
	if err != nil {
		s.t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cfg.Upstream = u
	s.handler = proxy.New(s.cfg)
}
