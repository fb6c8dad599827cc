package retry

import (
	"context"
	"errors"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/fusioo-gateway/gateway/internal/fusioo"
	"github.com/fusioo-gateway/gateway/internal/fusioosim"
)

// TestSafetyTable sends one request per row of DESIGN.md's retry-safety
// table to the simulator, the fault injected on every attempt, and checks
// how many attempts the simulator saw and what the client got.
func TestSafetyTable(t *testing.T) {
	t.Parallel()
	create := createBody(1)
	upload := []byte("raw file bytes")
	obj := []byte(`{"name":"x"}`)
	const max = 3
	rows := []struct {
		name         string
		faults       fusioosim.Faults
		method, path string
		body         []byte
		header       map[string]string
		idem         bool
		attempts     int         // at the simulator
		status       int         // 0: an error is expected
		code         fusioo.Code // of the answer
		reason       string      // of the retries
		creates      int
		unauth       bool // the simulator counts no unauthorized request
	}{
		// 503 / 10004: all methods.
		{name: "503 GET", faults: fusioosim.Faults{Unavailable: 1}, method: "GET", path: "/v3/records/apps/app1",
			attempts: max, status: 503, code: fusioo.CodeUnavailable, reason: ReasonUnavailable},
		{name: "503 create", faults: fusioosim.Faults{Unavailable: 1}, method: "POST", path: "/v3/records/apps/app1", body: create,
			attempts: max, status: 503, code: fusioo.CodeUnavailable, reason: ReasonUnavailable},
		{name: "503 PUT", faults: fusioosim.Faults{Unavailable: 1}, method: "PUT", path: "/v3/records/r1", body: obj,
			attempts: max, status: 503, code: fusioo.CodeUnavailable, reason: ReasonUnavailable},
		{name: "503 unknown POST", faults: fusioosim.Faults{Unavailable: 1}, method: "POST", path: "/v3/somewhere/new", body: obj,
			attempts: max, status: 503, code: fusioo.CodeUnavailable, reason: ReasonUnavailable},
		{name: "503 upload streams once", faults: fusioosim.Faults{Unavailable: 1}, method: "POST", path: "/v3/files/apps/app1/fields/f1", body: upload,
			attempts: 1, status: 503, code: fusioo.CodeUnavailable},

		// 30054: all methods.
		{name: "30054 create", faults: fusioosim.Faults{Concurrent: 1}, method: "POST", path: "/v3/records/apps/app1", body: create,
			attempts: max, status: 400, code: fusioo.CodeConcurrentRequests, reason: ReasonConcurrent},

		// 504: replay-safe routes only.
		{name: "504 GET", faults: fusioosim.Faults{GatewayTimeout: 1}, method: "GET", path: "/v3/records/apps/app1",
			attempts: max, status: 504, code: fusioo.CodeInternal, reason: ReasonGatewayTimeout},
		{name: "504 HEAD", faults: fusioosim.Faults{GatewayTimeout: 1}, method: "HEAD", path: "/v3/apps",
			attempts: max, status: 504, reason: ReasonGatewayTimeout},
		{name: "504 POST filter", faults: fusioosim.Faults{GatewayTimeout: 1}, method: "POST", path: "/v3/records/apps/app1/filter", body: obj,
			attempts: max, status: 504, code: fusioo.CodeInternal, reason: ReasonGatewayTimeout},
		{name: "504 POST count/filter", faults: fusioosim.Faults{GatewayTimeout: 1}, method: "POST", path: "/v3/records/apps/app1/count/filter", body: obj,
			attempts: max, status: 504, code: fusioo.CodeInternal, reason: ReasonGatewayTimeout},
		{name: "504 PUT idempotent writes", faults: fusioosim.Faults{GatewayTimeout: 1}, method: "PUT", path: "/v3/records/r1", body: obj, idem: true,
			attempts: max, status: 504, code: fusioo.CodeInternal, reason: ReasonGatewayTimeout},
		{name: "504 PUT", faults: fusioosim.Faults{GatewayTimeout: 1}, method: "PUT", path: "/v3/records/r1", body: obj,
			attempts: 1, status: 504, code: fusioo.CodeInternal},
		{name: "504 DELETE idempotent writes", faults: fusioosim.Faults{GatewayTimeout: 1}, method: "DELETE", path: "/v3/records/r1", idem: true,
			attempts: max, status: 504, code: fusioo.CodeInternal, reason: ReasonGatewayTimeout},
		{name: "504 DELETE", faults: fusioosim.Faults{GatewayTimeout: 1}, method: "DELETE", path: "/v3/records/r1",
			attempts: 1, status: 504, code: fusioo.CodeInternal},
		{name: "504 create", faults: fusioosim.Faults{GatewayTimeout: 1}, method: "POST", path: "/v3/records/apps/app1", body: create, idem: true,
			attempts: 1, status: 504, code: fusioo.CodeInternal},
		{name: "504 discussion create", faults: fusioosim.Faults{GatewayTimeout: 1}, method: "POST", path: "/v3/records/r1/discussions", body: []byte(`{"content":"hi"}`), idem: true,
			attempts: 1, status: 504, code: fusioo.CodeInternal},
		{name: "504 after apply create", faults: fusioosim.Faults{TimeoutAfterApply: 1}, method: "POST", path: "/v3/records/apps/app1", body: create, idem: true,
			attempts: 1, status: 504, code: fusioo.CodeInternal, creates: 1},
		{name: "reset after apply create", faults: fusioosim.Faults{ResetAfterApply: 1}, method: "POST", path: "/v3/records/apps/app1", body: create, idem: true,
			header: map[string]string{"Idempotency-Key": "k-1"}, attempts: 1, creates: 1},

		// Final codes.
		{name: "10003 final", faults: fusioosim.Faults{}, method: "GET", path: "/v3/apps", header: map[string]string{"Authorization": "Bearer revoked-1"},
			attempts: 1, unauth: true, status: 401, code: fusioo.CodeUnauthorized},
		{name: "20007 final", faults: fusioosim.Faults{}, method: "GET", path: "/v3/apps", header: map[string]string{"Authorization": "Bearer lite-1"},
			attempts: 1, unauth: true, status: 400, code: fusioo.CodeInvalidUser},
		{name: "30051 final", faults: fusioosim.Faults{}, method: "GET", path: "/v3/records/nope",
			attempts: 1, status: 400, code: fusioo.CodeRecordNotFound},
		{name: "success", faults: fusioosim.Faults{}, method: "POST", path: "/v3/records/apps/app1", body: create,
			attempts: 1, status: 200, code: fusioo.CodeSuccess, creates: 1},
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			t.Parallel()
			s := newSim(t, fusioosim.Config{Faults: r.faults, Seed: 1})
			obs := newCountObserver()
			cfg := fastConfig(t)
			cfg.MaxAttempts = max
			cfg.IdempotentWrites = r.idem
			cfg.Observer = obs
			tr := newTransport(t, cfg)
			h, attempts := recordHooks(nil)
			res := roundTrip(t, tr, s.srv.URL, call{method: r.method, path: r.path, body: r.body, header: r.header, hooks: h})

			l := s.ledger()
			if l.Requests != r.attempts && !r.unauth {
				t.Errorf("simulator saw %d requests, want %d", l.Requests, r.attempts)
			}
			if got := tr.attempts.Load(); got != int64(r.attempts) {
				t.Errorf("transport sent %d attempts, want %d", got, r.attempts)
			}
			if w := tr.writes.Load(); w != tr.attempts.Load() {
				t.Errorf("%d writes for %d attempts: the base transport replayed on its own", w, tr.attempts.Load())
			}
			if r.status == 0 {
				if res.err == nil {
					t.Fatalf("got %d, want an error", res.status)
				}
			} else {
				if res.err != nil {
					t.Fatalf("error %v, want %d", res.err, r.status)
				}
				if res.status != r.status || (r.method != "HEAD" && res.code != r.code) {
					t.Errorf("got %d/%d, want %d/%d", res.status, res.code, r.status, r.code)
				}
			}
			if got := obs.retries[r.reason]; r.reason != "" && got != r.attempts-1 {
				t.Errorf("%d retries for %q, want %d (%v)", got, r.reason, r.attempts-1, obs.retries)
			}
			if obs.total() != r.attempts-1 {
				t.Errorf("%d retries, want %d", obs.total(), r.attempts-1)
			}
			if l.Creates != r.creates || l.Duplicates != 0 {
				t.Errorf("creates %d (want %d), duplicates %d", l.Creates, r.creates, l.Duplicates)
			}
			as := attempts()
			if len(as) != r.attempts {
				t.Fatalf("Answered %d times, want %d", len(as), r.attempts)
			}
			for i, a := range as {
				if a.N != i+1 || a.Final != (i == len(as)-1) || !a.Written {
					t.Errorf("attempt %d: %+v", i+1, a)
				}
			}
		})
	}
}

// TestSafetyTransportErrors covers the rows whose answer is a transport
// error: a reset after the request was written (replay-safe routes only),
// a timeout (likewise) and a refused connection (all methods).
func TestSafetyTransportErrors(t *testing.T) {
	const max = 3
	t.Run("reset", func(t *testing.T) {
		rows := []struct {
			method, path string
			body         []byte
			idem         bool
			attempts     int
		}{
			{"GET", "/v3/records/apps/app1", nil, false, max},
			{"POST", "/v3/records/apps/app1/filter", []byte(`{}`), false, max},
			{"PUT", "/v3/records/r1", []byte(`{}`), true, max},
			{"PUT", "/v3/records/r1", []byte(`{}`), false, 1},
			{"DELETE", "/v3/webhooks/w1", nil, true, max},
			{"POST", "/v3/records/apps/app1", createBody(1), true, 1},
			{"POST", "/v3/webhooks", []byte(`{"url":"http://x"}`), true, 1},
		}
		for _, r := range rows {
			s := newScript(t, scripted{reset: true})
			obs := newCountObserver()
			cfg := fastConfig(t)
			cfg.MaxAttempts, cfg.IdempotentWrites, cfg.Observer = max, r.idem, obs
			tr := newTransport(t, cfg)
			res := roundTrip(t, tr, s.srv.URL, call{method: r.method, path: r.path, body: r.body})
			if res.err == nil {
				t.Errorf("%s %s: got %d, want an error", r.method, r.path, res.status)
			}
			if n := s.requests(); n != r.attempts {
				t.Errorf("%s %s (idempotent writes %v): upstream saw %d requests, want %d", r.method, r.path, r.idem, n, r.attempts)
			}
			if obs.retries[ReasonReset] != r.attempts-1 {
				t.Errorf("%s %s: retries %v", r.method, r.path, obs.retries)
			}
		}
	})

	t.Run("timeout", func(t *testing.T) {
		s := newSim(t, fusioosim.Config{Faults: fusioosim.Faults{Latency: 2 * time.Second}})
		for _, r := range []struct {
			method, path string
			body         []byte
			attempts     int
		}{
			{"GET", "/v3/records/apps/app1", nil, max},
			{"POST", "/v3/records/apps/app1", createBody(2), 1},
		} {
			s.sim.Reset()
			obs := newCountObserver()
			cfg := fastConfig(t)
			cfg.MaxAttempts, cfg.Observer = max, obs
			o := DefaultBaseOptions()
			o.ResponseHeaderTimeout = 20 * time.Millisecond
			tr := newTransport(t, cfg, newBase(t, o))
			res := roundTrip(t, tr, s.srv.URL, call{method: r.method, path: r.path, body: r.body})
			if res.err == nil || !isTimeout(res.err) {
				t.Errorf("%s: got %v (status %d), want a timeout", r.method, res.err, res.status)
			}
			if n := s.ledger().Requests; n != r.attempts {
				t.Errorf("%s: simulator saw %d requests, want %d", r.method, n, r.attempts)
			}
			if obs.retries[ReasonTimeout] != r.attempts-1 {
				t.Errorf("%s: retries %v", r.method, obs.retries)
			}
		}
	})

	t.Run("dial", func(t *testing.T) {
		url := refusedURL(t)
		for _, r := range []struct {
			method, path string
			body         []byte
			attempts     int
		}{
			{"GET", "/v3/apps", nil, max},
			{"POST", "/v3/records/apps/app1", createBody(3), max},
			{"POST", "/v3/records/r1/discussions", []byte(`{"content":"x"}`), max},
			{"POST", "/v3/files/apps/app1/fields/f1", []byte("file"), 1}, // streamed once
		} {
			obs := newCountObserver()
			cfg := fastConfig(t)
			cfg.MaxAttempts, cfg.Observer = max, obs
			tr := newTransport(t, cfg)
			res := roundTrip(t, tr, url, call{method: r.method, path: r.path, body: r.body})
			var op *net.OpError
			if !errors.As(res.err, &op) {
				t.Errorf("%s %s: error %v, want a *net.OpError inside", r.method, r.path, res.err)
			}
			if n := tr.attempts.Load(); n != int64(r.attempts) || tr.writes.Load() != 0 {
				t.Errorf("%s %s: %d attempts (%d written), want %d (0)", r.method, r.path, n, tr.writes.Load(), r.attempts)
			}
			if obs.retries[ReasonDial] != r.attempts-1 {
				t.Errorf("%s %s: retries %v", r.method, r.path, obs.retries)
			}
		}
	})
}

// TestRateLimited checks a 429/20005: retried for any method once Admit
// (the quota) agrees, not sent when it does not.
func TestRateLimited(t *testing.T) {
	t.Parallel()
	fc := clockwork.NewFakeClock()
	s := newSim(t, fusioosim.Config{Limit: 1, Window: time.Minute, Now: fc.Now})
	tr := newTransport(t, defaultConfig(t, func(c *Config) { c.Clock, c.BaseDelay, c.BudgetWindow = fc, 0, 0 }))

	// The first create uses the quota.
	if res := roundTrip(t, tr, s.srv.URL, call{method: "POST", path: "/v3/records/apps/app1", body: createBody(1)}); res.status != 200 {
		t.Fatalf("first create: %d %v", res.status, res.err)
	}
	// Admit refuses: the 429 goes to the client as it came.
	h, attempts := recordHooks(func(context.Context, time.Time) (bool, error) { return false, nil })
	res := roundTrip(t, tr, s.srv.URL, call{method: "POST", path: "/v3/records/apps/app1", body: createBody(2), hooks: h})
	if res.status != 429 || res.code != fusioo.CodeRateLimited {
		t.Fatalf("refused retry: got %d/%d, want 429/20005", res.status, res.code)
	}
	if as := attempts(); len(as) != 1 || as[0].Code != fusioo.CodeRateLimited || as[0].Status != 429 {
		t.Fatalf("attempts %+v", as)
	}
	// Admit waits until the window frees (here: moves the clock) and
	// agrees: the retry succeeds.
	admits := 0
	h, attempts = recordHooks(func(ctx context.Context, _ time.Time) (bool, error) {
		admits++
		fc.Advance(time.Minute)
		return true, nil
	})
	h.Deadline = fc.Now().Add(time.Hour)
	res = roundTrip(t, tr, s.srv.URL, call{method: "POST", path: "/v3/records/apps/app1", body: createBody(3), hooks: h})
	if res.status != 200 || admits != 1 {
		t.Fatalf("admitted retry: got %d after %d admits, want 200 after 1", res.status, admits)
	}
	if as := attempts(); len(as) != 2 || as[0].Final || !as[1].Final || as[1].Status != 200 {
		t.Fatalf("attempts %+v", as)
	}
	if l := s.ledger(); l.Creates != 2 || l.Duplicates != 0 || l.OverQuota != 2 {
		t.Fatalf("ledger: creates %d duplicates %d over quota %d", l.Creates, l.Duplicates, l.OverQuota)
	}
}

// TestAdmitError checks that an error from Admit ends the retries like a
// refusal: the client gets the last answer.
func TestAdmitError(t *testing.T) {
	t.Parallel()
	s := newSim(t, fusioosim.Config{Faults: fusioosim.Faults{Unavailable: 1}})
	tr := newTransport(t, fastConfig(t))
	h, attempts := recordHooks(func(context.Context, time.Time) (bool, error) { return false, errors.New("queue full") })
	res := roundTrip(t, tr, s.srv.URL, call{method: "GET", path: "/v3/apps", hooks: h})
	if res.status != http.StatusServiceUnavailable || s.ledger().Requests != 1 || len(attempts()) != 1 {
		t.Fatalf("got %d after %d requests", res.status, s.ledger().Requests)
	}
}
