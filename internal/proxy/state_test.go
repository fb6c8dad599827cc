package proxy_test

import (
	"context"
	"net/http/httptest"
	"net/url"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/fusioo-gateway/gateway/internal/fusioo"
	"github.com/fusioo-gateway/gateway/internal/limiter"
	"github.com/fusioo-gateway/gateway/internal/proxy"
	"github.com/fusioo-gateway/gateway/internal/quota"
)

// stateRig is the handler over the real limiter and memory store, as
// cmd/gateway wires them, with a fake upstream: what a key costs is the
// gateway's state alone.
type stateRig struct {
	h     *proxy.Handler
	lim   *limiter.Limiter
	store *quota.MemoryStore
	up    *fakeUpstream
}

func newStateRig(t *testing.T, maxKeys int, answer fakeAnswer) *stateRig {
	t.Helper()
	routes, err := fusioo.NewRoutes(fusioo.DefaultRoutes())
	if err != nil {
		t.Fatal(err)
	}
	p := quota.Policy{Limit: 1000, Window: time.Hour, Margin: 5 * time.Second, Buckets: 60, MaxKeys: maxKeys}
	r := &stateRig{store: quota.NewMemoryStore(p, nil), up: &fakeUpstream{answers: []fakeAnswer{answer}, discard: true}}
	r.lim = limiter.New(limiter.Config{Store: r.store, Rate: rate.Limit(float64(p.Limit) / 3600 * 10), Burst: 50,
		MaxWait: 5 * time.Second, MaxDepth: 100, MaxQueued: 10000, IdleAfter: time.Nanosecond, MaxKeys: maxKeys})
	u, _ := url.Parse("http://upstream.invalid")
	r.h = proxy.New(proxy.Config{Upstream: u, Transport: r.up, Limiter: r.lim, Routes: routes, MaxWait: 5 * time.Second, Limit: p.Limit, Window: p.Window})
	return r
}

// send makes n requests, token i being prefix+i padded to Fusioo's 1 KB,
// and returns the statuses seen.
func (r *stateRig) send(n int, prefix string) map[int]int {
	pad := strings.Repeat("x", 1000)
	seen := map[int]int{}
	for i := range n {
		req := httptest.NewRequest("GET", "/v3/apps", nil)
		req.Header.Set("Authorization", "Bearer "+prefix+strconv.Itoa(i)+pad)
		w := httptest.NewRecorder()
		r.h.ServeHTTP(w, req)
		seen[w.Code]++
	}
	return seen
}

func heap() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// rss is the process's resident set, from /proc (0 elsewhere), once the
// freed heap is returned to the system, as an idle gateway's scavenger
// does over time.
func rss() uint64 {
	debug.FreeOSMemory()
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// stateTokens is how many tokens the state tests send:
// FUSIOO_STATE_TOKENS for the figures by hand (1,000,000), else a CI size.
func stateTokens(def int) int {
	if n, err := strconv.Atoi(os.Getenv("FUSIOO_STATE_TOKENS")); err == nil && n > 0 {
		return n
	}
	return def
}

// TestIdleKeyCost: a token the gateway tracks (counted once, idle since)
// costs under 1 KB of heap, limiter and store together; once the
// limiter's sweep has dropped its idle state, only its counts remain.
func TestIdleKeyCost(t *testing.T) {
	n := stateTokens(20000)
	r := newStateRig(t, 10*n, fakeAnswer{status: 200})
	h0, r0 := heap(), rss()
	if got := r.send(n, "real-"); got[200] != n {
		t.Fatalf("statuses %v", got)
	}
	per, r1 := float64(heap()-h0)/float64(n), rss()
	if left := r.lim.Sweep(); left != 0 {
		t.Fatalf("%d keys' idle state kept by the sweep", left)
	}
	swept := float64(heap()-h0) / float64(n)
	t.Logf("%d idle tokens: %.0f bytes of heap each (%.0f once swept, counts only), RSS %d → %d MB (%d MB once swept)",
		n, per, swept, r0>>20, r1>>20, rss()>>20)
	if per > 1024 || swept > per {
		t.Fatalf("%.0f bytes per idle key (%.0f swept), want at most 1 KB", per, swept)
	}
	if c := r.store.Counted(); len(c) != n {
		t.Fatalf("the store holds %d keys' counts, want %d", len(c), n)
	}
	runtime.KeepAlive(r)
}

// TestMadeUpTokensLeaveNoState: distinct made-up tokens at full speed,
// each answered 10003 by the upstream, leave no per-key state behind:
// the heap stays within the bounded memory of refused keys.
func TestMadeUpTokensLeaveNoState(t *testing.T) {
	n := stateTokens(100000)
	r := newStateRig(t, 100000, fakeAnswer{status: 401, code: fusioo.CodeUnauthorized})
	h0, r0 := heap(), rss()
	if got := r.send(n, "made-up-"); got[401] != n {
		t.Fatalf("statuses %v", got)
	}
	grown := int64(heap()) - int64(h0)
	t.Logf("%d made-up tokens: heap +%d KB, RSS %d → %d MB, keys left: limiter %d, store %d", n, grown>>10, r0>>20, rss()>>20, r.lim.Sweep(), r.store.Sweep())
	if r.lim.Sweep() != 0 || r.store.Sweep() != 0 {
		t.Fatalf("made-up tokens left state: limiter %d keys, store %d", r.lim.Sweep(), r.store.Sweep())
	}
	// The refused keys remembered (a bounded ring) are all that grows.
	if grown > 24<<20 {
		t.Fatalf("heap grew %d MB", grown>>20)
	}
	runtime.KeepAlive(r)
}

// TestMaxKeysKeepsRealTokens: beyond quota.max_keys new tokens are
// answered 503/10004 and not forwarded, while a real token keeps its
// counts throughout.
func TestMaxKeysKeepsRealTokens(t *testing.T) {
	t.Parallel()
	const maxKeys = 640
	r := newStateRig(t, maxKeys, fakeAnswer{status: 200})
	status := func() quota.Result {
		res, err := r.lim.Status(context.Background(), proxy.NewIdentifier(nil).Key("real-0"+strings.Repeat("x", 1000)))
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	r.send(1, "real-")
	before := status()
	got := r.send(5*maxKeys, "other-")
	if got[503] == 0 || got[200] > maxKeys || got[200]+got[503] != 5*maxKeys {
		t.Fatalf("statuses %v with max_keys %d", got, maxKeys)
	}
	if r.up.attempts() != 1+got[200] {
		t.Fatalf("%d forwarded for %d admitted", r.up.attempts(), 1+got[200])
	}
	if after := status(); after.Remaining != before.Remaining {
		t.Fatalf("the real token's remaining went %d → %d", before.Remaining, after.Remaining)
	}
	r.send(1, "real-")
	if after := status(); after.Remaining != before.Remaining-1 {
		t.Fatalf("the real token's next request: remaining %d → %d", before.Remaining, after.Remaining)
	}
}
