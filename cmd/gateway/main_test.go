package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/fusioo-gateway/gateway/internal/fusioo"
	"github.com/fusioo-gateway/gateway/internal/fusioosim"
	"github.com/fusioo-gateway/gateway/internal/testutil/poll"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "gateway.toml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestInvalidConfigNamesEveryBadKey: one run reports every problem and
// exits non-zero.
func TestInvalidConfigNamesEveryBadKey(t *testing.T) {
	p := writeConfig(t, `
[server]
listen = "nowhere"
shutdown_timeout = 5
colour = "blue"
[quota]
limit = 0
store = "etcd"
fallback_share = 2.0
[queue]
max_wait = "soon"
[retry]
max_attempts = 0
[redis]
timeout = "-1s"
[log]
level = "loud"
[extra]
x = 1
`)
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"-config", p}, []string{"FUSIOO_GATEWAY_UPSTREAM_URL=ftp://x"}, &out, &errb, nil)
	if code != exitConfig {
		t.Fatalf("exit %d, want %d", code, exitConfig)
	}
	for _, key := range []string{"server.listen", "server.shutdown_timeout", "server.colour", "quota.limit", "quota.store",
		"quota.fallback_share", "queue.max_wait", "retry.max_attempts", "redis.timeout", "log.level", "extra: unknown key", "upstream.url"} {
		if !strings.Contains(errb.String(), key) {
			t.Errorf("stderr does not name %s:\n%s", key, errb.String())
		}
	}
}

// TestCheckRefusesWhatStartupRefuses: -check and a start refuse the same
// Redis options, exit 2, each problem named once, no doubled prefix, no
// secret echoed.
func TestCheckRefusesWhatStartupRefuses(t *testing.T) {
	p := writeConfig(t, `
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[quota]
store = "redis"
[redis]
url = "redis://alice:hunter2-secret@127.0.0.1:1/x"
password = "another-secret"
sentinel_password = "third-secret"
ca_file = "/nonexistent/ca.pem"
`)
	for _, args := range [][]string{{"-check", "-config", p}, {"-config", p}} {
		var out, errb bytes.Buffer
		code := run(context.Background(), args, nil, &out, &errb, nil)
		msg := errb.String()
		if code != exitConfig {
			t.Fatalf("%v: exit %d, want %d:\n%s", args, code, exitConfig, msg)
		}
		for _, want := range []string{"redis.sentinel_password: only applies", "redis.url: ", "redis.tls: "} {
			if strings.Count(msg, want) != 1 {
				t.Errorf("%v: %q named %d times, want once:\n%s", args, want, strings.Count(msg, want), msg)
			}
		}
		for _, secret := range []string{"hunter2-secret", "another-secret", "third-secret", "redis: redis:"} {
			if strings.Contains(msg, secret) {
				t.Errorf("%v: stderr shows %q:\n%s", args, secret, msg)
			}
		}
	}
}

func TestFlags(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"-version"}, nil, &out, &errb, nil); code != 0 || !strings.Contains(out.String(), "fusioo-gateway") {
		t.Fatalf("-version: %d %q", code, out.String())
	}
	if code := run(context.Background(), nil, nil, &out, &errb, nil); code != exitConfig || !strings.Contains(errb.String(), "-config is required") {
		t.Fatalf("no -config: %d %q", code, errb.String())
	}
	if code := run(context.Background(), []string{"-config", "../../config.example.toml", "-check"}, nil, &out, &errb, nil); code != 0 {
		t.Fatalf("example config: %d %s", code, errb.String())
	}
	if code := run(context.Background(), []string{"-config", "/does/not/exist"}, nil, &out, &errb, nil); code != exitConfig {
		t.Fatalf("missing file: %d", code)
	}
	errb.Reset()
	if code := run(context.Background(), []string{"-h"}, nil, &out, &errb, nil); code != exitOK || !strings.Contains(errb.String(), "-config") {
		t.Fatalf("-h: %d %q", code, errb.String())
	}
	if code := run(context.Background(), []string{"-nonsense"}, nil, &out, &errb, nil); code != exitConfig {
		t.Fatalf("unknown flag: %d", code)
	}
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			w.WriteHeader(503)
		}
	}))
	defer ok.Close()
	if code := run(context.Background(), []string{"-probe", ok.URL + "/healthz"}, nil, &out, &errb, nil); code != exitOK {
		t.Fatalf("-probe healthy: %d", code)
	}
	if code := run(context.Background(), []string{"-probe", ok.URL + "/readyz"}, nil, &out, &errb, nil); code != exitFailed {
		t.Fatalf("-probe unhealthy: %d", code)
	}
}

// TestServeAndDrain runs the whole binary's code in process against the
// simulator: proxying, the admin endpoints, and a shutdown whose grace
// period lets the in-flight request finish and answers the queued one
// 503/10004.
func TestServeAndDrain(t *testing.T) {
	release := make(chan struct{})
	var inflight sync.WaitGroup
	inflight.Add(1)
	sim := fusioosim.New(fusioosim.Config{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v3/slow" {
			inflight.Done()
			<-release
			fusioo.WriteSuccess(w, map[string]string{"slow": "done"})
			return
		}
		sim.ServeHTTP(w, r)
	}))
	defer up.Close()
	p := writeConfig(t, `
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
shutdown_timeout = "300ms"
[quota]
limit = 3
window = "1h"
[queue]
max_wait = "3h"
[log]
level = "info"
`)
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan started, 1)
	done := make(chan int, 1)
	var logs bytes.Buffer
	lw := &syncWriter{w: &logs}
	go func() {
		done <- run(ctx, []string{"-config", p}, []string{"FUSIOO_GATEWAY_UPSTREAM_URL=" + up.URL}, io.Discard, lw, ready)
	}()
	var addrs started
	select {
	case addrs = <-ready:
	case code := <-done:
		t.Fatalf("gateway exited with %d:\n%s", code, logs.String())
	}
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	get := func(url string) (int, string) {
		req, _ := http.NewRequest("GET", url, nil)
		req.Header.Set("Authorization", "Bearer tok-main")
		resp, err := client.Do(req)
		if err != nil {
			t.Errorf("GET %s: %v", url, err)
			return 0, ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if st, b := get("http://" + addrs.Addr + "/v3/apps"); st != 200 || !strings.Contains(b, `"code":10000`) {
		t.Fatalf("proxied: %d %s", st, b)
	}
	if st, b := get("http://" + addrs.AdminAddr + "/healthz"); st != 200 {
		t.Fatalf("healthz %d %s", st, b)
	}
	if st, b := get("http://" + addrs.AdminAddr + "/readyz"); st != 200 || !strings.Contains(b, "memory") {
		t.Fatalf("readyz %d %s", st, b)
	}
	if st, b := get("http://" + addrs.AdminAddr + "/metrics"); st != 200 || !strings.Contains(b, `fusioo_gateway_requests_total{method="GET",status="200"} 1`) ||
		!strings.Contains(b, "fusioo_gateway_build_info") || strings.Contains(b, "tok-main") {
		t.Fatalf("metrics %d:\n%s", st, b)
	}
	if st, _ := get("http://" + addrs.Addr + "/metrics"); st == 200 {
		t.Fatalf("metrics served on the proxy listener")
	}

	type answer struct {
		status int
		body   string
	}
	answers := make(chan answer, 2)
	go func() { st, b := get("http://" + addrs.Addr + "/v3/slow"); answers <- answer{st, b} }()
	inflight.Wait()
	go func() { st, b := get("http://" + addrs.Addr + "/v3/apps"); answers <- answer{st, b} }() // over quota: queued
	waitFor(t, func() bool {
		_, b := get("http://" + addrs.AdminAddr + "/metrics")
		return strings.Contains(b, "fusioo_gateway_queue_depth 1")
	})
	cancel() // SIGTERM
	// The in-flight request may finish during the grace period.
	close(release)
	got := map[int]string{}
	for range 2 {
		a := <-answers
		got[a.status] = a.body
	}
	if !strings.Contains(got[200], "slow") {
		t.Fatalf("in-flight request not finished: %v\n%s", got, lw.String())
	}
	if !strings.Contains(got[503], `"code":10004`) {
		t.Fatalf("queued request not answered 503/10004: %v", got)
	}
	if code := <-done; code != 0 {
		t.Fatalf("exit %d", code)
	}
	// The startup line names the file and TOML keys, not Go fields.
	if l := lw.String(); !strings.Contains(l, `"config_file":"`+p+`"`) || !strings.Contains(l, `"queue.max_wait":`) || strings.Contains(l, `"MaxWait"`) {
		t.Fatalf("startup log:\n%s", l)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	poll.Until(t, 10*time.Second, "condition", cond)
}

type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fmt.Sprint(s.w)
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
