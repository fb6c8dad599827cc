package retry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"os"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/fusioo-gateway/gateway/internal/fusioo"
)

var now = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	const max = time.Hour
	for _, c := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"", 0, false},
		{"   ", 0, false},
		{"0", 0, true},
		{"1", time.Second, true},
		{" 120 ", 2 * time.Minute, true},
		{"3600", time.Hour, true},
		{"3601", max, true},
		{"86400", max, true},
		{"9223372036", max, true},
		{"9223372037", max, true},
		{"99999999999999999999999999999999", max, true},
		{"-1", 0, false},
		{"+5", 0, false},
		{"1.5", 0, false},
		{"1e3", 0, false},
		{"5s", 0, false},
		{"garbage", 0, false},
		{"0x10", 0, false},
		{"Sun, 01 Mar 2026 12:00:30 GMT", 30 * time.Second, true},
		{"Sunday, 01-Mar-26 12:01:00 GMT", time.Minute, true},
		{"Sun Mar  1 12:00:10 2026", 10 * time.Second, true},
		{"Sun, 01 Mar 2026 11:00:00 GMT", 0, true},   // in the past
		{"Sun, 06 Nov 1994 08:49:37 GMT", 0, true},   // long past
		{"Fri, 31 Dec 9999 23:59:59 GMT", max, true}, // far future
		{"Sun, 01 Mar 2026 25:00:00 GMT", 0, false},  // no such hour
	} {
		got, ok := ParseRetryAfter(c.in, now, max)
		if got != c.want || ok != c.ok {
			t.Errorf("ParseRetryAfter(%q) = %v, %v; want %v, %v", c.in, got, ok, c.want, c.ok)
		}
	}
	// No cap: the largest values saturate instead of overflowing.
	if d, ok := ParseRetryAfter("99999999999999999999", now, 0); !ok || d != 1<<63-1 {
		t.Errorf("uncapped huge value: %v %v", d, ok)
	}
	if d, ok := ParseRetryAfter("Fri, 31 Dec 9999 23:59:59 GMT", now, 0); !ok || d <= 0 {
		t.Errorf("uncapped far date: %v %v", d, ok)
	}
}

func FuzzParseRetryAfter(f *testing.F) {
	for _, s := range []string{"0", "120", "-1", "1.5", "99999999999999999999", "Sun, 06 Nov 1994 08:49:37 GMT", "Fri, 31 Dec 9999 23:59:59 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "garbage"} {
		f.Add(s, int64(time.Hour))
	}
	f.Fuzz(func(t *testing.T, v string, max int64) {
		d, ok := ParseRetryAfter(v, now, time.Duration(max))
		if d < 0 {
			t.Fatalf("negative %v", d)
		}
		if max > 0 && d > time.Duration(max) {
			t.Fatalf("%v over the cap %v", d, time.Duration(max))
		}
		if !ok && d != 0 {
			t.Fatalf("invalid value gave %v", d)
		}
	})
}

// TestClassifyAnswer is the safety table on answers, without a network.
func TestClassifyAnswer(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		status int
		code   fusioo.Code
		safe   bool
		want   string
	}{
		{200, 0, true, ""},
		{200, fusioo.CodeRateLimited, true, ""}, // not an error status
		{429, 0, false, ReasonRateLimited},
		{400, fusioo.CodeRateLimited, false, ReasonRateLimited},
		{429, fusioo.CodeUnavailable, false, ReasonRateLimited},
		{400, fusioo.CodeConcurrentRequests, false, ReasonConcurrent},
		{500, fusioo.CodeConcurrentRequests, false, ReasonConcurrent},
		{409, fusioo.CodeConcurrentRequests, false, ReasonConcurrent},
		{503, 0, false, ReasonUnavailable},
		{500, fusioo.CodeUnavailable, false, ReasonUnavailable},
		{503, fusioo.CodeUnauthorized, true, ""},
		{429, fusioo.CodeInvalidUser, true, ""},
		{504, fusioo.CodeInternal, true, ReasonGatewayTimeout},
		{504, 0, false, ""},
		{500, fusioo.CodeInternal, true, ""},
		{502, 0, true, ""},
		{401, fusioo.CodeUnauthorized, true, ""},
		{400, fusioo.CodeInvalidUser, true, ""},
		{400, fusioo.CodeValidation, true, ""},
		{404, fusioo.CodeNotFound, true, ""},
	} {
		if got := classifyAnswer(c.status, c.code, c.safe); got != c.want {
			t.Errorf("classifyAnswer(%d, %d, safe %v) = %q, want %q", c.status, c.code, c.safe, got, c.want)
		}
	}
}

func TestClassifyError(t *testing.T) {
	t.Parallel()
	timeout := &net.OpError{Op: "read", Err: os.ErrDeadlineExceeded}
	reset := &net.OpError{Op: "read", Err: errors.New("connection reset by peer")}
	for _, c := range []struct {
		err           error
		written, safe bool
		want          string
	}{
		{reset, false, false, ReasonDial},
		{timeout, false, false, ReasonDial},
		{reset, true, true, ReasonReset},
		{io.EOF, true, true, ReasonReset},
		{timeout, true, true, ReasonTimeout},
		{fmt.Errorf("wrapped: %w", timeout), true, true, ReasonTimeout},
		{reset, true, false, ""},
		{timeout, true, false, ""},
	} {
		if got := classifyError(c.err, c.written, c.safe); got != c.want {
			t.Errorf("classifyError(%v, written %v, safe %v) = %q, want %q", c.err, c.written, c.safe, got, c.want)
		}
	}
}

// TestBackoff checks full jitter: a uniform draw below the capped
// exponential, never the cap itself.
func TestBackoff(t *testing.T) {
	t.Parallel()
	var r float64
	tr := New(defaultConfig(t, func(c *Config) {
		c.BaseDelay, c.MaxDelay, c.Rand = 100*time.Millisecond, time.Second, func() float64 { return r }
	}))
	for _, c := range []struct {
		r    float64
		n    int
		want time.Duration
	}{
		{0, 0, 0},
		{0.5, 0, 50 * time.Millisecond},
		{0.5, 1, 100 * time.Millisecond},
		{0.5, 3, 400 * time.Millisecond},
		{0.5, 4, 500 * time.Millisecond}, // capped at 1s
		{0.5, 200, 500 * time.Millisecond},
		{1, 2, 0}, // out of range draws are treated as 0
	} {
		r = c.r
		if got := tr.backoff(tr.baseDelay, c.n); got != c.want {
			t.Errorf("backoff(r=%v, n=%d) = %v, want %v", c.r, c.n, got, c.want)
		}
	}
	r = 0.9999999
	if got := tr.backoff(tr.baseDelay, 50); got >= time.Second {
		t.Errorf("backoff reached the cap: %v", got)
	}
}

// TestSerializerBounded checks that idle (key, App) pairs are dropped once
// their cooling period is over.
func TestSerializerBounded(t *testing.T) {
	t.Parallel()
	fc := clockwork.NewFakeClock()
	s := newSerializer(time.Second, fc)
	for i := 0; i < 100; i++ {
		s.mark("k", fmt.Sprint("app", i))
	}
	if len(s.lanes) != 100 {
		t.Fatalf("%d lanes", len(s.lanes))
	}
	rel, held, ok := s.acquire(context.Background(), "k", "app0", time.Time{})
	if !held || !ok {
		t.Fatal("no turn while cooling")
	}
	fc.Advance(time.Second)
	s.mark("k", "new")
	if len(s.lanes) != 2 { // app0 is held; "new" was just marked
		t.Fatalf("%d lanes after the cooldown, want 2", len(s.lanes))
	}
	rel()
	if len(s.lanes) != 1 {
		t.Fatalf("%d lanes after the last user left, want 1", len(s.lanes))
	}
	if _, held, _ := s.acquire(context.Background(), "k", "other", time.Time{}); held {
		t.Fatal("a pair that never saw 30054 is serialized")
	}
	for i := 0; i < 2*maxLanes; i++ {
		s.mark(fmt.Sprint("k", i), "a")
	}
	if len(s.lanes) > maxLanes {
		t.Fatalf("%d lanes, over the bound %d", len(s.lanes), maxLanes)
	}
}

// BenchmarkRoundTrip measures one attempt that needs no retry against a
// local upstream, through the base transport alone and through the
// Transport, for a GET and for a create with a small body.
func BenchmarkRoundTrip(b *testing.B) {
	ok := fusioo.ErrorBody(fusioo.CodeSuccess, "")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Write(ok)
	}))
	defer srv.Close()
	body := createBody(1)
	// "overhead" is the Transport over a base that answers at once, with
	// no network: the cost of the layer itself.
	stub := stubBase(func(r *http.Request) (*http.Response, error) {
		return &http.Response{StatusCode: 200, Header: http.Header{}, Body: http.NoBody, Request: r}, nil
	})
	// "overhead-traced" is the same under a ClientTrace in the request's
	// context, as ReverseProxy gives every request it sends (its
	// Got1xxResponse hook): each attempt's trace is then composed with it,
	// by reflection (httptrace.WithClientTrace).
	for _, layer := range []string{"base", "retry", "overhead", "overhead-traced"} {
		for _, m := range []string{"GET", "POST"} {
			b.Run(layer+"/"+m, func(b *testing.B) {
				base := NewBaseTransport(DefaultBaseOptions())
				defer base.CloseIdleConnections()
				var rt http.RoundTripper = base
				switch layer {
				case "retry":
					rt = newTransport(b, defaultConfig(b, nil), base)
				case "overhead", "overhead-traced":
					rt = newTransport(b, defaultConfig(b, nil), stub)
				}
				hooks := &Hooks{Key: "k"}
				ctx := WithHooks(context.Background(), hooks)
				if layer == "overhead-traced" {
					ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
						Got1xxResponse: func(int, textproto.MIMEHeader) error { return nil },
					})
				}
				b.ReportAllocs()
				for b.Loop() {
					var rd io.Reader
					if m == "POST" {
						rd = bytes.NewReader(body)
					}
					req, _ := http.NewRequestWithContext(ctx, m, srv.URL+"/v3/records/apps/app1", rd)
					req.GetBody = nil // as a proxied request
					resp, err := rt.RoundTrip(req)
					if err != nil {
						b.Fatal(err)
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
		}
	}
}

// BenchmarkClassify measures reading the code of an error answer and
// classifying it, and classifying a success (no body read).
func BenchmarkClassify(b *testing.B) {
	body := fusioo.ErrorBody(fusioo.CodeConcurrentRequests, "")
	b.Run("30054", func(b *testing.B) {
		b.ReportAllocs()
		rd := bytes.NewReader(body)
		for b.Loop() {
			rd.Reset(body)
			resp := &http.Response{StatusCode: 400, Header: http.Header{}, Body: io.NopCloser(rd)}
			if classifyAnswer(resp.StatusCode, fusioo.PeekCode(resp), false) != ReasonConcurrent {
				b.Fatal("misclassified")
			}
		}
	})
	b.Run("200", func(b *testing.B) {
		b.ReportAllocs()
		resp := &http.Response{StatusCode: 200, Header: http.Header{}, Body: http.NoBody}
		for b.Loop() {
			if classifyAnswer(resp.StatusCode, fusioo.PeekCode(resp), true) != "" {
				b.Fatal("misclassified")
			}
		}
	})
}

// TestZeroConfigIsNone: a Config's zero fields mean none, never a hidden
// default: one attempt, no backoff, no budget, nothing buffered, no
// serialization, no cap on Retry-After.
func TestZeroConfigIsNone(t *testing.T) {
	t.Parallel()
	p := New(Config{Routes: testRoutes(t)})
	if p.maxAttempts != 1 || p.baseDelay != 0 || p.maxDelay != 0 || p.concurrentDelay != 0 || p.maxBody != 0 || p.maxRetryAfter != 0 {
		t.Errorf("zero Config: attempts %d, delays %s %s %s, body %d, Retry-After cap %s; want 1 and none",
			p.maxAttempts, p.baseDelay, p.maxDelay, p.concurrentDelay, p.maxBody, p.maxRetryAfter)
	}
	if p.budget.width != 0 || !p.budget.take() {
		t.Error("zero BudgetWindow: a budget applies")
	}
	if p.bufs.max != 0 || p.serial.cooldown != 0 {
		t.Errorf("zero Config: %d buffer bytes, cooldown %s", p.bufs.max, p.serial.cooldown)
	}
	if w := p.backoff(time.Second, 3); w != 0 {
		t.Errorf("MaxDelay 0: backoff %s", w)
	}
	// A budget with no share and no floor allows no retry at all.
	b := New(Config{Routes: testRoutes(t), BudgetWindow: time.Second}).budget
	b.request()
	if b.take() {
		t.Error("BudgetRatio 0 and BudgetMinRetries 0: a retry allowed")
	}
}

// TestDefaultConfig: DefaultConfig holds the defaults DESIGN.md documents,
// the values the gateway's configuration defaults to.
func TestDefaultConfig(t *testing.T) {
	t.Parallel()
	d := DefaultConfig()
	p := New(defaultConfig(t, nil))
	if d.Routes != nil || p.maxAttempts != 5 || p.baseDelay != 100*time.Millisecond || p.maxDelay != 5*time.Second ||
		p.concurrentDelay != 50*time.Millisecond || p.maxBody != 1<<20 || p.bufs.max != 64<<20 || p.maxRetryAfter != time.Hour ||
		p.budget.ratio != 0.2 || p.budget.min != 10 || p.budget.width != int64(time.Second) || p.serial.cooldown != 10*time.Second || p.idemWrites {
		t.Errorf("DefaultConfig %+v", d)
	}
}

// TestZeroBaseOptionsAreNone: a zero BaseOptions bounds nothing and keeps
// no idle connection (net/http's own zeros would mean defaults);
// DefaultBaseOptions holds the gateway's transport tuning.
func TestZeroBaseOptionsAreNone(t *testing.T) {
	t.Parallel()
	z := NewBaseTransport(BaseOptions{})
	if z.TLSHandshakeTimeout != 0 || z.ResponseHeaderTimeout != 0 || z.IdleConnTimeout != 0 || z.MaxIdleConnsPerHost >= 0 || z.MaxConnsPerHost != 0 {
		t.Errorf("zero BaseOptions: handshake %s, headers %s, idle %s, idle conns %d, conns %d",
			z.TLSHandshakeTimeout, z.ResponseHeaderTimeout, z.IdleConnTimeout, z.MaxIdleConnsPerHost, z.MaxConnsPerHost)
	}
	d := NewBaseTransport(DefaultBaseOptions())
	if d.TLSHandshakeTimeout != 5*time.Second || d.ResponseHeaderTimeout != 30*time.Second || d.IdleConnTimeout != 90*time.Second || d.MaxIdleConnsPerHost != 256 {
		t.Errorf("DefaultBaseOptions: handshake %s, headers %s, idle %s, idle conns %d",
			d.TLSHandshakeTimeout, d.ResponseHeaderTimeout, d.IdleConnTimeout, d.MaxIdleConnsPerHost)
	}
}
