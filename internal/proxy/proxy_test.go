package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/fusioo-gateway/gateway/internal/fusioo"
	"github.com/fusioo-gateway/gateway/internal/fusioosim"
	"github.com/fusioo-gateway/gateway/internal/proxy"
	"github.com/fusioo-gateway/gateway/internal/quota"
	"github.com/fusioo-gateway/gateway/internal/testutil/leaktest"
)

func TestMain(m *testing.M) { leaktest.VerifyTestMain(m) }

// seen is what the echo upstream received.
type seen struct {
	method, path, rawQuery, host string
	header                       http.Header
	bodySum                      string
}

// TestPassThroughFidelity checks that what the client sends is what the
// upstream gets, and what the upstream answers is what the client gets.
func TestPassThroughFidelity(t *testing.T) {
	t.Parallel()
	got := make(chan seen, 1)
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		sum := sha256.Sum256(b)
		got <- seen{r.Method, r.URL.Path, r.URL.RawQuery, r.Host, r.Header.Clone(), hex.EncodeToString(sum[:])}
		w.Header().Set("X-Upstream", "yes")
		w.Header().Add("Set-Cookie", "a=1")
		w.Header().Add("Set-Cookie", "b=2")
		status, _ := strconv.Atoi(r.Header.Get("X-Want-Status"))
		w.WriteHeader(status)
		_, _ = w.Write([]byte(`{"code":10000,"message":"Success","data":{"echo":"` + r.Method + `"}}`))
	})
	s := newStack(t, stackOpts{upstream: up})
	upHost := strings.TrimPrefix(s.upstream.URL, "http://")

	bin := make([]byte, 300<<10)
	_, _ = rand.Read(bin)
	binSum := sha256.Sum256(bin)
	cases := []struct {
		method, path string
		body         []byte
		status       int
	}{
		{"GET", "/v3/records/apps/app1?limit=10&offset=20&q=%C3%A9+x", nil, 200},
		{"POST", "/v3/records/apps/app1", []byte(`{"title":"x"}`), 201},
		{"POST", "/v3/files/apps/app1/fields/f1", bin, 200},
		{"PUT", "/v3/records/r1", []byte(`{"title":"y"}`), 200},
		{"DELETE", "/v3/records/r1", nil, 404},
		{"HEAD", "/v3/apps", nil, 200},
		{"GET", "/v2/some/unknown/path%2Fencoded", nil, 418},
	}
	for _, tc := range cases {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			resp, b := s.do(tc.method, tc.path, "tok-fidelity", tc.body,
				"X-Want-Status", strconv.Itoa(tc.status), "X-Custom", "v1", "Accept-Language", "da",
				"Connection", "X-Hop", "X-Hop", "must-not-pass", "X-Forwarded-For", "6.6.6.6")
			sn := <-got
			wantSum := sha256.Sum256(tc.body)
			if tc.body != nil && len(tc.body) == len(bin) {
				wantSum = binSum
			}
			if sn.method != tc.method || sn.bodySum != hex.EncodeToString(wantSum[:]) {
				t.Errorf("upstream got %s body %s", sn.method, sn.bodySum)
			}
			wantPath, wantQuery, _ := strings.Cut(tc.path, "?")
			if sn.path != strings.ReplaceAll(wantPath, "%2F", "/") || sn.rawQuery != wantQuery {
				t.Errorf("upstream got path %q query %q", sn.path, sn.rawQuery)
			}
			if sn.host != upHost {
				t.Errorf("Host %q, want the upstream's %q", sn.host, upHost)
			}
			if sn.header.Get("Authorization") != "Bearer tok-fidelity" || sn.header.Get("X-Custom") != "v1" || sn.header.Get("Accept-Language") != "da" {
				t.Errorf("end-to-end headers lost: %v", sn.header)
			}
			if sn.header.Get("X-Hop") != "" {
				t.Errorf("hop-by-hop header forwarded")
			}
			if sn.header.Get("X-Forwarded-For") != "" || sn.header.Get("X-Forwarded-Host") != "" {
				t.Errorf("X-Forwarded-* sent with upstream.forwarded_headers at its default (none): %v", sn.header)
			}
			if resp.StatusCode != tc.status || resp.Header.Get("X-Upstream") != "yes" || len(resp.Header.Values("Set-Cookie")) != 2 {
				t.Errorf("answer changed: %d %v", resp.StatusCode, resp.Header)
			}
			if tc.method != "HEAD" && !bytes.Contains(b, []byte(`"echo":"`+tc.method+`"`)) {
				t.Errorf("body changed: %s", b)
			}
			if resp.Header.Get("RateLimit-Limit") != "1000" || resp.Header.Get("RateLimit-Policy") != `"hourly";q=1000;w=3600` {
				t.Errorf("quota headers: %v", resp.Header)
			}
		})
	}
}

// TestStreaming checks that a response is passed on as it arrives: the
// client reads the first part while the upstream still holds the second.
func TestStreaming(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = io.WriteString(w, "first part\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, strings.Repeat("x", 1<<20)+"\n")
	})
	s := newStack(t, stackOpts{upstream: up})
	req, _ := http.NewRequest("GET", s.gw.URL+"/v3/files/f1", nil)
	req.Header.Set("Authorization", "Bearer t")
	resp, err := s.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	if err != nil || line != "first part\n" {
		t.Fatalf("first part: %q %v", line, err)
	}
	close(release)
	rest, err := io.ReadAll(br)
	if err != nil || len(rest) != 1<<20+1 {
		t.Fatalf("rest: %d bytes, %v", len(rest), err)
	}
}

// TestGatewayErrors checks every answer the gateway makes itself: status,
// Fusioo code, and the envelope shape.
func TestGatewayErrors(t *testing.T) {
	t.Parallel()
	hang := make(chan struct{})
	t.Cleanup(func() { close(hang) })
	slow := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	})
	s := newStack(t, stackOpts{maxBody: 1 << 10, policy: quota.Policy{Limit: 1, Window: time.Hour, Buckets: quota.DefaultBuckets}, maxWait: time.Second})
	timeoutStack := newStack(t, stackOpts{upstream: slow, timeout: 50 * time.Millisecond})
	down := newStack(t, stackOpts{})
	down.upstream.Close() // nothing listens there any more

	raw := func(st *stack, req string) (*http.Response, []byte) { return rawRequest(t, st, req) }
	big := bytes.Repeat([]byte("a"), 2<<10)
	cases := []struct {
		name   string
		send   func() (*http.Response, []byte)
		status int
		code   fusioo.Code
	}{
		{"CONNECT", func() (*http.Response, []byte) {
			return raw(s, "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n")
		}, 400, 10002},
		{"absolute-form for another host", func() (*http.Response, []byte) {
			return raw(s, "GET http://evil.example/v3/apps HTTP/1.1\r\nHost: evil.example\r\nAuthorization: Bearer t\r\n\r\n")
		}, 400, 10002},
		{"body over the limit (Content-Length)", func() (*http.Response, []byte) {
			return s.do("POST", "/v3/records/apps/app1", "t-big", big)
		}, 413, 30252},
		{"body over the limit (chunked)", func() (*http.Response, []byte) {
			return raw(s, "POST /v3/records/apps/app1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t-big\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n"+string(big)+"\r\n0\r\n\r\n")
		}, 413, 30252},
		{"quota exhausted", func() (*http.Response, []byte) {
			s.do("GET", "/v3/apps", "t-quota", nil)
			return s.do("GET", "/v3/apps", "t-quota", nil)
		}, 429, 20005},
		{"upstream unreachable", func() (*http.Response, []byte) {
			return down.do("GET", "/v3/apps", "t", nil)
		}, 503, 10004},
		{"upstream timeout", func() (*http.Response, []byte) {
			return timeoutStack.do("GET", "/v3/apps", "t", nil)
		}, 504, 10001},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, b := tc.send()
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, b)
			}
			if env := envelope(t, resp, b); env.Code != tc.code {
				t.Fatalf("code %d, want %d", env.Code, tc.code)
			}
			if tc.status == 429 {
				if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || ra < 1 || ra > 3700 {
					t.Fatalf("Retry-After %q", resp.Header.Get("Retry-After"))
				}
			}
		})
	}
	// None of the refused requests reached the upstream, except the
	// chunked one, cut off mid-body (so never applied).
	if l := s.sim.Ledger(); l.Requests > 2 || l.Creates != 0 {
		t.Fatalf("upstream saw %d requests and %d creates", l.Requests, l.Creates)
	}
}

// TestRollingBoundAtSimulator drives concurrent clients at three times the
// quota for several windows; the simulator, counting strictly in rolling
// windows, must never see a request over the limit. On the bubble's clock
// the 3 s of load take no wall time, and a loaded machine cannot make the
// clients miss the slots freeing at a window's turn.
func TestRollingBoundAtSimulator(t *testing.T) {
	t.Parallel()
	synctest.Test(t, rollingBoundAtSimulator)
}

func rollingBoundAtSimulator(t *testing.T) {
	const limit, window = 40, time.Second
	s := newStack(t, stackOpts{
		policy:   quota.Policy{Limit: limit, Window: window, Margin: 100 * time.Millisecond, Buckets: 20},
		maxWait:  200 * time.Millisecond,
		sim:      &fusioosim.Config{Limit: limit, Window: window},
		inBubble: true,
	})
	tokens := []string{"tok-a", "tok-b"}
	end := time.Now().Add(3 * window)
	var ok, limited atomic.Int64
	var wg sync.WaitGroup
	// Demand above the quota, and never limited by the clients' own pace:
	// a client admitted asks again at once; one refused backs off a little.
	for c := range 16 {
		wg.Go(func() {
			tok := tokens[c%len(tokens)]
			for time.Now().Before(end) {
				resp, b := s.do("GET", "/v3/records/apps/app1", tok, nil)
				switch resp.StatusCode {
				case 200:
					ok.Add(1)
				case 429:
					limited.Add(1)
					if env := envelope(t, resp, b); env.Code != 20005 {
						t.Errorf("429 with code %d", env.Code)
					}
					time.Sleep(33 * time.Millisecond) // pacing the load, not waiting for a result
				default:
					t.Errorf("status %d: %s", resp.StatusCode, b)
				}
			}
		})
	}
	wg.Wait()
	l := s.sim.Ledger()
	if l.OverQuota != 0 || l.MaxInWindow > limit {
		t.Fatalf("simulator saw %d over quota, max %d in a window (limit %d)", l.OverQuota, l.MaxInWindow, limit)
	}
	t.Logf("%d admitted, %d limited", ok.Load(), limited.Load())
	// All of the quota is used: the limit at 0, 1.1 and 2.2 s (a window
	// and the 100 ms margin apart), per token.
	if min := int64(2 * limit * 3); ok.Load() < min {
		t.Fatalf("only %d admitted (want >= %d), %d limited", ok.Load(), min, limited.Load())
	}
	if limited.Load() == 0 {
		t.Fatalf("demand never exceeded the quota")
	}
}

// TestQueueWaitsThenForwards checks a request over quota waits for its slot
// when that is within max_wait, then goes through, and not before: two
// requests per 300 ms counted in 30 ms buckets, so the third and fourth go
// when the first bucket leaves the window, 330 ms after the first (on the
// bubble's clock: exact, however loaded the machine).
func TestQueueWaitsThenForwards(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		s := newStack(t, stackOpts{
			policy:   quota.Policy{Limit: 2, Window: 300 * time.Millisecond, Buckets: 10},
			maxWait:  5 * time.Second,
			inBubble: true,
		})
		start := time.Now()
		for i := range 4 {
			if resp, b := s.do("GET", "/v3/apps", "tok-q", nil); resp.StatusCode != 200 {
				t.Fatalf("%d %s", resp.StatusCode, b)
			}
			want := time.Duration(0)
			if i >= 2 {
				want = 330 * time.Millisecond
			}
			if el := time.Since(start); el != want {
				t.Fatalf("request %d answered after %s, want %s (2 per 300 ms in 30 ms buckets)", i+1, el, want)
			}
		}
		if l := s.sim.Ledger(); l.Requests != 4 {
			t.Fatalf("upstream saw %d", l.Requests)
		}
	})
}

// TestMaxWaitRetryAfter checks the immediate 429 carries the honest wait.
// The slot frees when its 1 s bucket leaves the 90 s window, 91 s after
// the first request (on the bubble's clock: exact).
func TestMaxWaitRetryAfter(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		s := newStack(t, stackOpts{policy: quota.Policy{Limit: 1, Window: 90 * time.Second, Buckets: 90}, maxWait: time.Second, inBubble: true})
		s.do("GET", "/v3/apps", "tok-r", nil)
		resp, b := s.do("GET", "/v3/apps", "tok-r", nil)
		if resp.StatusCode != 429 {
			t.Fatalf("%d %s", resp.StatusCode, b)
		}
		if ra := resp.Header.Get("Retry-After"); ra != "91" {
			t.Fatalf("Retry-After %s, want 91", ra)
		}
		if resp.Header.Get("RateLimit-Remaining") != "0" || resp.Header.Get("RateLimit") != `"hourly";r=0;t=91` {
			t.Fatalf("headers %v", resp.Header)
		}
	})
}

// TestDisconnectWhileQueued: a client that leaves while queued consumes no
// quota, never reaches the upstream, and leaves no goroutine behind.
func TestDisconnectWhileQueued(t *testing.T) {
	t.Parallel()
	synctest.Test(t, disconnectWhileQueued)
}

func disconnectWhileQueued(t *testing.T) {
	s := newStack(t, stackOpts{policy: quota.Policy{Limit: 1, Window: 10 * time.Second, Buckets: quota.DefaultBuckets}, maxWait: time.Minute, inBubble: true})
	s.do("GET", "/v3/apps", "tok-d", nil)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, "GET", s.gw.URL+"/v3/apps", nil)
		req.Header.Set("Authorization", "Bearer tok-d")
		resp, err := s.client.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	synctest.Wait()
	if q := s.lim.Queued(); q != 1 {
		t.Fatalf("%d queued, want the second request", q)
	}
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("client: %v", err)
	}
	synctest.Wait()
	if q := s.lim.Queued(); q != 0 {
		t.Fatalf("%d queued after the client left", q)
	}
	if l := s.sim.Ledger(); l.Requests != 1 {
		t.Fatalf("upstream saw %d requests", l.Requests)
	}
	if c := s.store.Counted(); len(c) != 1 {
		t.Fatalf("counted %v", c)
	} else {
		for _, b := range c {
			if len(b) != 1 || b[0].Count != 1 {
				t.Fatalf("quota used by the disconnected client: %v", b)
			}
		}
	}
}

// TestTokenNeverLogged sends requests on every path with a distinctive
// token and checks the logs carry its fingerprint, never the token.
func TestTokenNeverLogged(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOpts{policy: quota.Policy{Limit: 2, Window: time.Hour, Buckets: quota.DefaultBuckets}, maxWait: time.Millisecond, maxBody: 100})
	token := "SECRET-" + strings.Repeat("Zq9", 300)
	s.do("GET", "/v3/apps", token, nil)
	s.do("POST", "/v3/records/apps/a", token, []byte(`{"a":1}`))
	s.do("GET", "/v3/apps", token, nil)                                       // 429
	s.do("POST", "/v3/records/apps/a", token, bytes.Repeat([]byte("x"), 200)) // 413
	s.do("GET", "/v3/ping", token, nil)
	logs := s.logs.String()
	if strings.Contains(logs, "SECRET") || strings.Contains(logs, "Zq9Zq9") {
		t.Fatalf("token in logs:\n%s", logs)
	}
	fp := proxy.Fingerprint(proxy.NewIdentifier(nil).Key(token))
	if n := strings.Count(logs, `"token":"`+fp+`"`); n != 5 {
		t.Fatalf("fingerprint %s in %d lines, want 5:\n%s", fp, n, logs)
	}
	for _, want := range []string{`"status":429`, `"status":413`, `"route":"GET /apps"`, `"code":20005`, `"queue_wait"`, `"attempts"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %s", want)
		}
	}
}

// TestAnonymousAndUncharged: requests without a token pass through (the
// upstream answers 10003) and ping never spends quota.
func TestAnonymousAndUncharged(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOpts{policy: quota.Policy{Limit: 1, Window: time.Hour, Buckets: quota.DefaultBuckets}, maxWait: time.Millisecond})
	resp, b := s.do("GET", "/v3/apps", "", nil)
	if env := envelope(t, resp, b); resp.StatusCode != 401 || env.Code != 10003 {
		t.Fatalf("anonymous: %d %s", resp.StatusCode, b)
	}
	if resp.Header.Get("RateLimit-Limit") != "" {
		t.Fatalf("anonymous requests have no quota to report: %v", resp.Header)
	}
	s.do("GET", "/v3/apps", "tok-p", nil)
	for i := range 20 {
		if resp, b := s.do("GET", "/v3/ping", "tok-p", nil); resp.StatusCode != 200 {
			t.Fatalf("ping %d through an exhausted key: %d %s", i, resp.StatusCode, b)
		}
	}
	if resp, _ := s.do("GET", "/v3/apps", "tok-p", nil); resp.StatusCode != 429 {
		t.Fatalf("charged request after pings: %d", resp.StatusCode)
	}
	if l := s.sim.Ledger(); l.Charged != 1 || l.ByRoute["GET /ping"] != 20 {
		t.Fatalf("ledger %+v", l)
	}
}

// TestAbortAnswers503 ends a shutdown grace period with a request queued
// and one in flight: both get 503/10004.
// Shared reads (coalescing) are answered alike.
func TestAbortAnswers503(t *testing.T) {
	t.Parallel()
	for _, coalesce := range []bool{false, true} {
		t.Run(fmt.Sprintf("coalesce=%v", coalesce), func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) { abortAnswers503(t, coalesce) })
		})
	}
}

func abortAnswers503(t *testing.T, coalesce bool) {
	hang := make(chan struct{})
	var inflight sync.WaitGroup
	inflight.Add(1)
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v3/hang" {
			inflight.Done()
			select {
			case <-hang:
			case <-r.Context().Done():
			}
			return
		}
		fusioo.WriteSuccess(w, map[string]any{})
	})
	s := newStack(t, stackOpts{upstream: up, policy: quota.Policy{Limit: 2, Window: time.Hour, Buckets: quota.DefaultBuckets}, maxWait: 3 * time.Hour, inBubble: true, coalesce: coalesce})
	defer close(hang)
	s.do("GET", "/v3/apps", "tok-s", nil)
	type res struct {
		status int
		code   fusioo.Code
	}
	out := make(chan res, 2)
	send := func(path string) {
		req, _ := http.NewRequest("GET", s.gw.URL+path, nil)
		req.Header.Set("Authorization", "Bearer tok-s")
		resp, err := s.client.Do(req)
		if err != nil {
			t.Error(err)
			out <- res{}
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		out <- res{resp.StatusCode, fusioo.ParseCode(b)}
	}
	go send("/v3/hang")
	inflight.Wait()
	go send("/v3/apps")
	synctest.Wait()
	if q := s.lim.Queued(); q != 1 {
		t.Fatalf("%d queued, want the second request", q)
	}
	s.handler.Abort()
	// The queued one never reached the upstream: 503/10004; the one at the
	// upstream may have been applied: 504/10001.
	got := map[res]int{}
	for range 2 {
		got[<-out]++
	}
	if got[res{503, 10004}] != 1 || got[res{504, 10001}] != 1 {
		t.Fatalf("after abort: %v, want one 503/10004 (queued) and one 504/10001 (in flight)", got)
	}
}

var _ = fmt.Sprint

// TestClientDisconnectCancelsUpstream: a client that goes away while its
// request is upstream cancels the upstream call.
func TestClientDisconnectCancelsUpstream(t *testing.T) {
	t.Parallel()
	synctest.Test(t, clientDisconnectCancelsUpstream)
}

func clientDisconnectCancelsUpstream(t *testing.T) {
	arrived, cancelled := make(chan struct{}), make(chan struct{})
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-r.Context().Done()
		close(cancelled)
	})
	s := newStack(t, stackOpts{upstream: up, inBubble: true})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, "GET", s.gw.URL+"/v3/apps", nil)
		req.Header.Set("Authorization", "Bearer tok-gone")
		resp, err := s.client.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	<-arrived
	cancel()
	synctest.Wait()
	select {
	case <-cancelled:
	default:
		t.Fatal("the upstream call outlived its client")
	}
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("client: %v", err)
	}
	if strings.Contains(s.logs.String(), `"status":502`) {
		t.Fatalf("a gone client was answered 502: %s", s.logs.String())
	}
}
