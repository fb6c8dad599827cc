package metrics

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/fusioo-gateway/gateway/internal/fusioo"
)

// TestLabelsBounded: whatever statuses, methods and codes arrive, the label
// values stay within a fixed set.
func TestLabelsBounded(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg, Options{UpstreamStatuses: []int{200}})
	for i := range 5000 {
		m.Request([]string{"GET", "BREW", "X" + string(rune('a'+i%26))}[i%3], "GET /apps", 100+i%900, time.Millisecond)
		m.Upstream("GET /apps", 200, fusioo.Code(i), time.Millisecond)
	}
	if n := testutil.CollectAndCount(m.requests); n > 7*501 {
		t.Fatalf("%d request series", n)
	}
	codes := map[string]bool{}
	for _, c := range fusioo.Codes() {
		codes[c.Label()] = true
	}
	codes["none"], codes["other"] = true, true
	if n := testutil.CollectAndCount(m.upstream); n != len(codes) {
		t.Fatalf("%d upstream series, want %d", n, len(codes))
	}
	if got := testutil.ToFloat64(m.upstream.WithLabelValues("200", "other")); got != 4999 { // codes 1..4999 are not in the table; 0 is "none"
		t.Fatalf("other: %v", got)
	}
}

func TestObservers(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg, Options{RetryReasons: []string{"dial"}, RejectReasons: []string{"quota"}, StoreOps: []string{"take"}})
	m.QueueDepth(2)
	m.QueueDepth(-1)
	m.Rejected("quota")
	m.Retry("dial")
	m.BudgetExhausted()
	m.StoreError("take")
	m.FallbackActive(true)
	m.UpstreamExhausted()
	m.QueueWait(time.Second)
	for _, c := range []struct {
		c    prometheus.Collector
		want float64
	}{{m.queueDepth, 1}, {m.quotaRejections, 1}, {m.retries, 1}, {m.budgetExhausted, 1}, {m.storeErrors, 1}, {m.fallbackActive, 1}, {m.upstreamExhausted, 1}} {
		if got := testutil.ToFloat64(c.c); got != c.want {
			t.Errorf("%v", got)
		}
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP fusioo_gateway_queue_depth Requests waiting for quota, all keys together.
# TYPE fusioo_gateway_queue_depth gauge
fusioo_gateway_queue_depth 1
`), "fusioo_gateway_queue_depth"); err != nil {
		t.Fatal(err)
	}
}
