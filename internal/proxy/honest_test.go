package proxy_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/fusioo-gateway/gateway/internal/fusioo"
	"github.com/fusioo-gateway/gateway/internal/proxy"
	"github.com/fusioo-gateway/gateway/internal/quota"
)

// TestUnavailableIsNotExhausted: an upstream 503/10004 with Retry-After
// pauses the upstream, capped by upstream.max_pause, for every token;
// requests that cannot wait it out get 503/10004 with Retry-After at once,
// never 20005, and no quota is spent or blocked. Hostile Retry-After values
// are capped or ignored.
func TestUnavailableIsNotExhausted(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		retryAfter string
		pauses     bool
	}{
		{"3600", true},
		{"99999999999999999999", true},
		{"-5", false},
		{"soon", false},
		{"Fri, 31 Dec 1999 23:00:00 GMT", false}, // in the past: the bubble's clock starts at 2000
	} {
		t.Run(tc.retryAfter, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				var maintenance atomic.Bool
				maintenance.Store(true)
				up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if maintenance.Swap(false) {
						w.Header().Set("Retry-After", tc.retryAfter)
						fusioo.WriteError(w, http.StatusServiceUnavailable, fusioo.CodeUnavailable, "maintenance")
						return
					}
					fusioo.WriteSuccess(w, map[string]any{})
				})
				const pause = 3 * time.Second
				s := newStack(t, stackOpts{upstream: up, maxPause: pause, maxWait: 100 * time.Millisecond,
					policy: quota.Policy{Limit: 10, Window: time.Hour, Buckets: quota.DefaultBuckets}, inBubble: true})
				if resp, _ := s.do("GET", "/v3/apps", "tok-a", nil); resp.StatusCode != 503 {
					t.Fatalf("maintenance answer: %d, want the upstream's 503", resp.StatusCode)
				}
				// Another token, at once: the upstream is paused, not a quota.
				resp, b := s.do("GET", "/v3/apps", "tok-b", nil)
				if !tc.pauses {
					if resp.StatusCode != 200 {
						t.Fatalf("Retry-After %q ignored, yet: %d %s", tc.retryAfter, resp.StatusCode, b)
					}
					return
				}
				env := envelope(t, resp, b)
				if resp.StatusCode != 503 || env.Code != fusioo.CodeUnavailable {
					t.Fatalf("while paused: %d code %d, want 503/10004", resp.StatusCode, env.Code)
				}
				if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || ra < 1 || time.Duration(ra)*time.Second > pause {
					t.Fatalf("Retry-After %q, want the pause (at most max_pause)", resp.Header.Get("Retry-After"))
				}
				if q, _ := s.lim.Status(t.Context(), proxy.NewIdentifier(nil).Key("tok-a")); q.Remaining != 9 || q.Blocked {
					t.Fatalf("tok-a's quota after the maintenance 503: %+v, want 9 left and not blocked", q)
				}
			})
		})
	}
}

// TestPauseWaitedOut: a request that can wait out the upstream's pause
// does, then goes when it ends (max_pause caps the upstream's 1 s to
// 300 ms), and not before.
func TestPauseWaitedOut(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int32
		up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if calls.Add(1) == 1 {
				w.Header().Set("Retry-After", "1")
				fusioo.WriteError(w, http.StatusServiceUnavailable, fusioo.CodeUnavailable, "maintenance")
				return
			}
			fusioo.WriteSuccess(w, map[string]any{})
		})
		s := newStack(t, stackOpts{upstream: up, maxPause: 300 * time.Millisecond, maxWait: 2 * time.Second, inBubble: true})
		start := time.Now()
		s.do("GET", "/v3/apps", "tok-a", nil)
		if resp, b := s.do("GET", "/v3/apps", "tok-b", nil); resp.StatusCode != 200 {
			t.Fatalf("a request that can wait: %d %s", resp.StatusCode, b)
		}
		if d := time.Since(start); d != 300*time.Millisecond {
			t.Fatalf("sent after %s, want when the pause (max_pause 300ms) ends", d)
		}
		if n := calls.Load(); n != 2 {
			t.Fatalf("the upstream saw %d requests, want 2", n)
		}
	})
}

// TestOutcomeUnknownIsSaid: 503/10004 only when nothing reached the
// upstream; 504/10001 "may have been applied" when the request was written
// and the exchange failed; 400/10002 for a malformed client body.
func TestOutcomeUnknownIsSaid(t *testing.T) {
	reset := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body) // the create arrived...
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			_ = conn.(*net.TCPConn).SetLinger(0)
			_ = conn.Close() // ...and the connection is reset without an answer
		}
	})
	rs := newStack(t, stackOpts{upstream: reset})
	// A dial that never completes: a listener whose accept queue is full
	// drops the SYNs of further connections.
	blackhole := newStack(t, stackOpts{upstreamURL: "http://" + fullListener(t), dial: 100 * time.Millisecond})
	cases := []struct {
		name   string
		send   func() (*http.Response, []byte)
		status int
		code   fusioo.Code
		says   string
	}{
		{"reset after the create was written", func() (*http.Response, []byte) {
			return rs.do("POST", "/v3/records/apps/app1", "t", []byte(`{"name":"x"}`))
		}, 504, fusioo.CodeInternal, "may have been applied"},
		{"dial timeout", func() (*http.Response, []byte) {
			return blackhole.do("POST", "/v3/records/apps/app1", "t", []byte(`{"name":"x"}`))
		}, 503, fusioo.CodeUnavailable, "nothing was sent"},
		{"malformed chunked body", func() (*http.Response, []byte) {
			return rawRequest(t, rs, "POST /v3/records/apps/app1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nbad\r\n0\r\n\r\n")
		}, 400, fusioo.CodeNotFound, "malformed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, b := tc.send()
			env := envelope(t, resp, b)
			if resp.StatusCode != tc.status || env.Code != tc.code || !strings.Contains(env.Message, tc.says) {
				t.Fatalf("%d code %d %q, want %d/%d saying %q", resp.StatusCode, env.Code, env.Message, tc.status, tc.code, tc.says)
			}
		})
	}
}

func rawRequest(t *testing.T, st *stack, req string) (*http.Response, []byte) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(st.gw.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, _ = io.WriteString(conn, req)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// TestStalledBodiesBounded: an upstream that sends its headers and then
// stalls the body (an error body the gateway peeks into, or a success body)
// holds the client exactly body_timeout, and a success's headers reach it
// first; a client that stops sending its body is answered 408 after
// body_timeout.
func TestStalledBodiesBounded(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		const idle = 300 * time.Millisecond
		release := make(chan struct{})
		t.Cleanup(func() { close(release) })
		up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			status := http.StatusOK
			if r.URL.Path == "/v3/apps" {
				status = http.StatusInternalServerError
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			_, _ = io.WriteString(w, `{"code":1000`)
			w.(http.Flusher).Flush()
			select {
			case <-release:
			case <-r.Context().Done():
			}
		})
		s := newStack(t, stackOpts{upstream: up, bodyTimeout: idle, inBubble: true})
		for _, tc := range []struct {
			path    string
			headers time.Duration // when the client has the headers
		}{
			{"/v3/apps", idle},           // an error body is peeked into before the headers go
			{"/v3/records/apps/app1", 0}, // a success's headers go at once
		} {
			start := time.Now()
			req, _ := http.NewRequest("GET", s.gw.URL+tc.path, nil)
			req.Header.Set("Authorization", "Bearer tok")
			resp, err := s.client.Do(req)
			if err != nil {
				t.Fatalf("%s: %v", tc.path, err)
			}
			headers := time.Since(start)
			_, err = io.ReadAll(resp.Body)
			resp.Body.Close()
			took := time.Since(start)
			t.Logf("%s: status %d, headers after %s, body ended after %s (%v)", tc.path, resp.StatusCode, headers, took, err)
			if took != idle {
				t.Fatalf("%s: held the client %s with upstream.body_timeout %s", tc.path, took, idle)
			}
			if headers != tc.headers {
				t.Fatalf("%s: headers after %s, want %s", tc.path, headers, tc.headers)
			}
		}

		// The client's side: a body that stops coming (to an upstream that
		// reads request bodies).
		s = newStack(t, stackOpts{bodyTimeout: idle, attempts: 3, inBubble: true}) // bodies buffered before they are sent
		conn := s.dial()
		start := time.Now()
		_, _ = io.WriteString(conn, "POST /v3/records/apps/app1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\nContent-Length: 100\r\n\r\n{\"na")
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("slow client body: %v after %s", err, time.Since(start))
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestTimeout || time.Since(start) != idle {
			t.Fatalf("slow client body: %d after %s, want 408 after server.body_timeout %s", resp.StatusCode, time.Since(start), idle)
		}

		// The same to a search route, whose body coalescing reads whole
		// for the read's key before anything is sent.
		s = newStack(t, stackOpts{bodyTimeout: idle, coalesce: true, inBubble: true})
		conn = s.dial()
		start = time.Now()
		_, _ = io.WriteString(conn, "POST /v3/records/apps/app1/filter HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"fil")
		resp, err = http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("slow search body: %v after %s", err, time.Since(start))
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestTimeout || time.Since(start) != idle {
			t.Fatalf("slow search body: %d after %s, want 408 after server.body_timeout %s", resp.StatusCode, time.Since(start), idle)
		}
	})
}

// fullListener listens on loopback with an accept queue of one and fills
// it, so that a further connection attempt hangs until its dial timeout.
func fullListener(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 1); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	// Fill the queue: connections that complete until one does not.
	for range 8 {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err != nil {
			break
		}
		t.Cleanup(func() { _ = c.Close() })
	}
	return addr
}
