package proxy_test

import (
	"encoding/json"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fusioo-gateway/gateway/internal/cache"
	"github.com/fusioo-gateway/gateway/internal/proxy"
	"github.com/fusioo-gateway/gateway/internal/quota"
)

const (
	recordRoute = "GET /records/{record}"
	listRoute   = "GET /records/apps/{app}"
)

// cachingStack is a gateway with a 10 s cache on a record's read and on
// an App's list, coalescing on (the default).
func cachingStack(t *testing.T, n *testNet, budget int64) *stack {
	return newStack(t, n.opts(stackOpts{
		coalesce: true,
		policy:   quota.Policy{Limit: 100000, Window: time.Hour, Buckets: quota.DefaultBuckets},
		cache:    map[string]cache.Rule{recordRoute: {TTL: 10 * time.Second, MaxBytes: budget}, listRoute: {TTL: 10 * time.Second, MaxBytes: budget}},
	}, true))
}

// createRecord creates a record in app1 through the gateway and returns
// its id.
func createRecord(t *testing.T, s *stack, tok, name string) string {
	t.Helper()
	resp, b := s.do("POST", "/v3/records/apps/app1", tok, []byte(`{"name":"`+name+`"}`), "Content-Type", "application/json")
	var env struct {
		Data struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if resp.StatusCode != 200 || json.Unmarshal(b, &env) != nil || env.Data.ID == "" {
		t.Fatalf("create: %d %s", resp.StatusCode, b)
	}
	return env.Data.ID
}

// TestCachedUntilWritten: a cached record is answered from the cache (no
// upstream request, no quota, its Age, the quota left as it stands) until
// the token PUTs it through the gateway; then it is fetched again. The
// App's cached list goes too.
func TestCachedUntilWritten(t *testing.T) {
	t.Parallel()
	nets(t, func(t *testing.T, n *testNet) {
		s := cachingStack(t, n, 1<<20)
		id := createRecord(t, s, "tok", "first")
		s.do("GET", "/v3/records/apps/app1", "tok", nil)
		resp, first := s.do("GET", "/v3/records/"+id, "tok", nil)
		before := s.sim.Ledger().Requests
		remaining := resp.Header.Get("RateLimit-Remaining")
		n.advance(3 * time.Second)
		resp, again := s.do("GET", "/v3/records/"+id, "tok", nil)
		if resp.StatusCode != 200 || string(again) != string(first) || resp.Header.Get("Age") != "3" {
			t.Fatalf("a cached read: %d Age %q %s", resp.StatusCode, resp.Header.Get("Age"), again)
		}
		if rem := resp.Header.Get("RateLimit-Remaining"); rem != remaining || s.sim.Ledger().Requests != before {
			t.Fatalf("a hit was charged or sent: remaining %s → %s, upstream %d → %d", remaining, rem, before, s.sim.Ledger().Requests)
		}
		if resp, b := s.do("GET", "/v3/records/"+id, "other-token", nil); resp.StatusCode != 200 || resp.Header.Get("Age") != "" || s.sim.Ledger().Requests != before+1 {
			t.Fatalf("another token's read was answered from the cache: Age %q %s", resp.Header.Get("Age"), b)
		}
		if resp, b := s.do("PUT", "/v3/records/"+id, "tok", []byte(`{"name":"second"}`), "Content-Type", "application/json"); resp.StatusCode != 200 {
			t.Fatalf("put: %d %s", resp.StatusCode, b)
		}
		before = s.sim.Ledger().Requests
		resp, after := s.do("GET", "/v3/records/"+id, "tok", nil)
		if !strings.Contains(string(after), "second") || resp.Header.Get("Age") != "" || s.sim.Ledger().Requests != before+1 {
			t.Fatalf("after the PUT: Age %q, upstream %d → %d, %s", resp.Header.Get("Age"), before, s.sim.Ledger().Requests, after)
		}
		if resp, _ := s.do("GET", "/v3/records/apps/app1", "tok", nil); resp.Header.Get("Age") != "" {
			t.Fatal("the App's list was served from the cache after one of its records changed")
		}
		if n, _ := s.metric("fusioo_gateway_cache_requests_total", "route", recordRoute, "result", "hit"); n != 1 {
			t.Fatalf("cache hits %v, want 1", n)
		}
		n.advance(10 * time.Second)
		if resp, _ := s.do("GET", "/v3/records/"+id, "tok", nil); resp.Header.Get("Age") != "" {
			t.Fatal("served past its TTL")
		}
	})
}

// TestCacheControlBypass: no-cache and max-age the entry is older than
// fetch from the upstream; no-store neither reads nor stores.
func TestCacheControlBypass(t *testing.T) {
	t.Parallel()
	nets(t, func(t *testing.T, n *testNet) {
		s := cachingStack(t, n, 1<<20)
		id := createRecord(t, s, "tok", "x")
		s.do("GET", "/v3/records/"+id, "tok", nil)
		n.advance(5 * time.Second)
		// (Each of these stores what it fetched, but no-store: max-age
		// first, while the entry is 5 s old.)
		for _, cc := range []string{"max-age=2", "no-cache", "no-store"} {
			before := s.sim.Ledger().Requests
			if resp, _ := s.do("GET", "/v3/records/"+id, "tok", nil, "Cache-Control", cc); resp.Header.Get("Age") != "" || s.sim.Ledger().Requests != before+1 {
				t.Fatalf("Cache-Control: %s was answered from the cache", cc)
			}
		}
		if resp, _ := s.do("GET", "/v3/records/"+id, "tok", nil, "Cache-Control", "max-age=60"); resp.Header.Get("Age") == "" {
			t.Fatal("max-age=60 not answered from the cache")
		}
		id2 := createRecord(t, s, "tok", "y")
		s.do("GET", "/v3/records/"+id2, "tok", nil, "Cache-Control", "no-store")
		if resp, _ := s.do("GET", "/v3/records/"+id2, "tok", nil); resp.Header.Get("Age") != "" {
			t.Fatal("a no-store answer was stored")
		}
	})
}

// TestCacheWithinBudget: 10,000 distinct cached URLs keep the cache within
// its byte budget, as counted and as the heap measures it.
func TestCacheWithinBudget(t *testing.T) {
	netsInTurn(t, func(t *testing.T, n *testNet) {
		const budget = 256 << 10
		s := cachingStack(t, n, budget)
		heap := func() int64 {
			var ms runtime.MemStats
			runtime.GC()
			runtime.GC() // and sync.Pool's victims (the copy buffers)
			runtime.ReadMemStats(&ms)
			return int64(ms.HeapAlloc)
		}
		for i := range 10000 {
			if resp, b := s.do("GET", "/v3/records/apps/app1?limit=20&offset="+strconv.Itoa(i), "tok", nil); resp.StatusCode != 200 {
				t.Fatalf("%d %s", resp.StatusCode, b)
			}
		}
		if b := s.cache.Bytes(listRoute); b > budget || b < budget/2 {
			t.Fatalf("the cache holds %d bytes for a budget of %d", b, budget)
		}
		// What the cache holds on the heap: the heap with its entries,
		// less the heap once they are dropped.
		entries, counted, full := s.cache.Len(), s.cache.Bytes(listRoute), heap()
		s.cache.Invalidate(proxy.NewIdentifier(nil).Key("tok"), cache.Write{Unknown: true})
		held := full - heap()
		if held > budget {
			t.Fatalf("the cache's %d entries held %d KB of heap for a budget of %d KB", entries, held>>10, budget>>10)
		}
		t.Logf("%d entries kept of 10,000 distinct URLs, %d bytes counted, %d KB of heap", entries, counted, held>>10)
	})
}
