package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fusioo-gateway/gateway/internal/fusioosim"
	"github.com/fusioo-gateway/gateway/internal/testutil/redistest"
)

// gatewayProc is one gateway replica run in process by run().
type gatewayProc struct {
	addrs started
	stop  func()
	logs  *syncWriter // what the gateway logged (a strings.Builder)
}

// logged returns what the gateway has logged so far.
func (g *gatewayProc) logged() string {
	g.logs.mu.Lock()
	defer g.logs.mu.Unlock()
	return g.logs.w.(*strings.Builder).String()
}

func startGateway(t *testing.T, config string, env ...string) *gatewayProc {
	t.Helper()
	p := writeConfig(t, config)
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan started, 1)
	done := make(chan int, 1)
	logs := &syncWriter{w: &strings.Builder{}}
	go func() { done <- run(ctx, []string{"-config", p}, env, io.Discard, logs, ready) }()
	g := &gatewayProc{logs: logs}
	select {
	case g.addrs = <-ready:
	case code := <-done:
		cancel()
		t.Fatalf("gateway exited with %d: %v", code, logs.w)
	}
	var once sync.Once
	g.stop = func() {
		once.Do(func() {
			cancel()
			if code := <-done; code != 0 {
				t.Errorf("gateway exit %d", code)
			}
		})
	}
	t.Cleanup(g.stop)
	return g
}

func redisConfig(url string, limit int, window, maxWait string) string {
	return redisConfigMargin(url, limit, window, maxWait, "20ms")
}

// redisConfigMargin sets quota.margin too: it must cover the time from
// admission to the upstream's receipt, which under -race on a loaded
// 2-core machine reaches a good part of a second.
func redisConfigMargin(url string, limit int, window, maxWait, margin string) string {
	return fmt.Sprintf(`
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
shutdown_timeout = "2s"
[quota]
limit = %d
window = %q
margin = %q
buckets = 120
store = "redis"
fallback_share = 0.3
[redis]
url = %q
timeout = "100ms"
[smoothing]
rate = 10000.0
burst = 10000
[queue]
max_wait = %q
[log]
level = "error"
`, limit, window, margin, url, maxWait)
}

type client struct {
	c *http.Client
}

func newClient(t *testing.T) *client {
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	t.Cleanup(tr.CloseIdleConnections)
	return &client{&http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

func (c *client) get(url, token string) (int, http.Header, string, error) {
	req, _ := http.NewRequest("GET", url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.c.Do(req)
	if err != nil {
		return 0, nil, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b), nil
}

// TestRedisOutage kills Redis under traffic: the gateway keeps answering
// from its local share (no request lost, /readyz degraded, the gauge set),
// and when Redis comes back empty it recovers and writes back its counts.
func TestRedisOutage(t *testing.T) {
	for _, ap := range []string{"false", "true"} {
		t.Run("auto_pipeline="+ap, func(t *testing.T) { testRedisOutage(t, "FUSIOO_GATEWAY_REDIS_AUTO_PIPELINE="+ap) })
	}
}

func testRedisOutage(t *testing.T, env string) {
	rs := redistest.Start(t)
	sim := fusioosim.New(fusioosim.Config{})
	up := httptest.NewServer(sim)
	defer up.Close()
	// Without leases, so the counts below are exact: a lease held when
	// Redis dies would add its leftover slots to the local share.
	gw := startGateway(t, redisConfig(rs.URL(), 100, "1h", "10ms"), "FUSIOO_GATEWAY_UPSTREAM_URL="+up.URL, env,
		"FUSIOO_GATEWAY_REDIS_LEASE_TIME=0s")
	c := newClient(t)
	url := "http://" + gw.addrs.Addr + "/v3/apps"
	admin := "http://" + gw.addrs.AdminAddr
	send := func(n int) (ok, limited int) {
		for range n {
			st, _, body, err := c.get(url, "tok-outage")
			switch {
			case err != nil:
				t.Fatalf("request lost: %v", err)
			case st == 200:
				ok++
			case st == 429:
				limited++
			default:
				t.Fatalf("status %d: %s", st, body)
			}
		}
		return ok, limited
	}
	if ok, _ := send(10); ok != 10 {
		t.Fatalf("before the outage: %d of 10", ok)
	}
	rs.Kill()
	// Local share: 30% of the 90 Redis said were left.
	ok, limited := send(40)
	if ok != 27 || limited != 13 {
		t.Fatalf("during the outage: %d admitted, %d limited; want 27 and 13", ok, limited)
	}
	if st, _, body, _ := c.get(admin+"/readyz", ""); st != 200 || !strings.Contains(body, "degraded") {
		t.Fatalf("readyz during the outage: %d %s", st, body)
	}
	if _, _, body, _ := c.get(admin+"/metrics", ""); !strings.Contains(body, "fusioo_gateway_store_fallback_active 1") ||
		!strings.Contains(body, `fusioo_gateway_store_errors_total{op="take"}`) {
		t.Fatalf("metrics during the outage:\n%s", grepLines(body, "store_"))
	}
	rs.Restart() // empty
	waitFor(t, func() bool {
		_, _, body, _ := c.get(admin+"/readyz", "")
		return strings.Contains(body, "ready: quota store: redis")
	})
	if _, _, body, _ := c.get(admin+"/metrics", ""); !strings.Contains(body, "fusioo_gateway_store_fallback_active 0") {
		t.Fatalf("metrics after recovery:\n%s", grepLines(body, "store_"))
	}
	// Redis came back empty: the replica wrote back everything it admitted
	// in the window, before and during the outage.
	rc := redis.NewClient(&redis.Options{Addr: rs.Addr()})
	defer rc.Close()
	keys, err := rc.Keys(context.Background(), "fgw:*").Result()
	if err != nil || len(keys) != 1 {
		t.Fatalf("keys %v %v", keys, err)
	}
	if strings.Contains(keys[0], "tok-outage") {
		t.Fatalf("token in a Redis key: %s", keys[0])
	}
	fields, _ := rc.HGetAll(context.Background(), keys[0]).Result()
	total := 0
	for f, v := range fields {
		if f != "m" {
			var n int
			fmt.Sscan(v, &n)
			total += n
		}
	}
	if total != 37 {
		t.Fatalf("Redis holds %d after recovery, want 37 (10 before + 27 during): %v", total, fields)
	}
	if sim.Ledger().Requests != 37 {
		t.Fatalf("simulator saw %d", sim.Ledger().Requests)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestQuotaHeadersConsistentAcrossReplicas: with the Redis store, two
// replicas report one count. Without leases Remaining falls by one per
// request whichever replica answers; with leases it is off by no more than
// the slots the replicas hold (up to two batches each).
func TestQuotaHeadersConsistentAcrossReplicas(t *testing.T) {
	for _, leases := range []bool{false, true} {
		t.Run(fmt.Sprintf("leases=%v", leases), func(t *testing.T) { testQuotaHeadersConsistent(t, leases) })
	}
}

func testQuotaHeadersConsistent(t *testing.T, leases bool) {
	rs := redistest.Start(t)
	up := httptest.NewServer(fusioosim.New(fusioosim.Config{}))
	defer up.Close()
	env := []string{"FUSIOO_GATEWAY_UPSTREAM_URL=" + up.URL, "FUSIOO_GATEWAY_REDIS_LEASE_TIME=0"}
	const leaseMax = 4
	if leases {
		env = []string{"FUSIOO_GATEWAY_UPSTREAM_URL=" + up.URL, "FUSIOO_GATEWAY_REDIS_LEASE_TIME=1s",
			"FUSIOO_GATEWAY_REDIS_LEASE_MAX=" + strconv.Itoa(leaseMax)}
	}
	a := startGateway(t, redisConfig(rs.URL(), 50, "1h", "10ms"), env...)
	b := startGateway(t, redisConfig(rs.URL(), 50, "1h", "10ms"), env...)
	c := newClient(t)
	for i := range 10 {
		gw := []*gatewayProc{a, b}[i%2]
		st, h, body, err := c.get("http://"+gw.addrs.Addr+"/v3/apps", "tok-headers")
		if err != nil || st != 200 {
			t.Fatalf("%d %v %s", st, err, body)
		}
		rem, _ := strconv.Atoi(h.Get("RateLimit-Remaining"))
		ok := rem == 49-i
		if leases {
			ok = rem >= 49-i-2*2*leaseMax && rem <= 49-i+2*2*leaseMax
		}
		if !ok || !strings.HasPrefix(h.Get("RateLimit"), `"hourly";r=`+strconv.Itoa(rem)+";t=") ||
			h.Get("RateLimit-Limit") != "50" || h.Get("RateLimit-Policy") != `"hourly";q=50;w=3600` {
			t.Fatalf("request %d via replica %d: %v", i, i%2, h)
		}
		for k, v := range h {
			for _, s := range v {
				if strings.Contains(s, "tok-headers") {
					t.Fatalf("token in header %s", k)
				}
			}
		}
	}
}

// TestReadyOnlyOnceRedisAnswered: a gateway whose Redis refuses its
// password is not ready, says why, and logs the reason (never the
// password); with on_store_failure = "local" it starts on local counts,
// ready and degraded; once Redis answers it is ready.
func TestReadyOnlyOnceRedisAnswered(t *testing.T) {
	rs := redistest.Start(t, "--requirepass", "right-password")
	up := httptest.NewServer(fusioosim.New(fusioosim.Config{}))
	defer up.Close()
	wrong := strings.Replace(rs.URL(), "redis://", "redis://:wrong-password-123@", 1)
	c := newClient(t)
	readyz := func(g *gatewayProc) (int, string) {
		st, _, body, err := c.get("http://"+g.addrs.AdminAddr+"/readyz", "")
		if err != nil {
			t.Fatal(err)
		}
		return st, body
	}
	cfg := strings.Replace(redisConfig(wrong, 100, "1h", "10ms"), `level = "error"`, `level = "warn"`, 1)
	g := startGateway(t, cfg, "FUSIOO_GATEWAY_UPSTREAM_URL="+up.URL)
	waitFor(t, func() bool { return strings.Contains(g.logged(), "WRONGPASS") })
	if st, body := readyz(g); st != 503 || !strings.Contains(body, "not answered yet") || !strings.Contains(body, "WRONGPASS") {
		t.Fatalf("readyz with a wrong password: %d %q", st, body)
	}
	if strings.Contains(g.logged(), "wrong-password-123") {
		t.Fatalf("the password was logged:\n%s", g.logged())
	}
	g.stop()

	g = startGateway(t, cfg, "FUSIOO_GATEWAY_UPSTREAM_URL="+up.URL, "FUSIOO_GATEWAY_QUOTA_ON_STORE_FAILURE=local")
	waitFor(t, func() bool {
		st, body := readyz(g)
		return st == 200 && strings.Contains(body, "degraded") && strings.Contains(body, "WRONGPASS")
	})
	g.stop()

	right := strings.Replace(rs.URL(), "redis://", "redis://:right-password@", 1)
	g = startGateway(t, redisConfig(right, 100, "1h", "10ms"), "FUSIOO_GATEWAY_UPSTREAM_URL="+up.URL)
	waitFor(t, func() bool {
		st, body := readyz(g)
		return st == 200 && body == "ready: quota store: redis\n"
	})
}
