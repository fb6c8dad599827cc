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
	t.Parallel()
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
	t.Parallel()
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

// TestResolvedChildren: counts through the pre-resolved children land on
// the same series as through the vectors, and values outside the
// pre-initialised sets still count.
func TestResolvedChildren(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	m := New(reg, Options{
		Routes: []string{"GET /apps"}, RetryReasons: []string{"dial"}, RejectReasons: []string{"quota"}, StoreOps: []string{"take"},
		ClientStatuses: []int{200, 700}, UpstreamStatuses: []int{200, 503, 700},
	})
	m.Request("GET", "GET /apps", 200, 0)
	m.Request("BREW", "GET {unknown}", 200, 0)
	m.Request("GET", "GET /apps", 700, 0)
	m.Request("PATCH", "GET /apps", 418, 0)
	m.Upstream("", 200, 0, time.Millisecond)
	m.Upstream("", 503, fusioo.CodeUnavailable, 2*time.Second)
	m.Upstream("", 503, fusioo.Code(12345), time.Millisecond)
	m.Upstream("", 700, 0, time.Millisecond)
	m.Upstream("", 0, 0, time.Millisecond)
	m.Upstream("", 101, 0, time.Millisecond)
	m.Retry("dial")
	m.Retry("reset")
	m.Rejected("quota")
	m.StoreError("take")
	for i, c := range []struct {
		c    prometheus.Collector
		want float64
	}{
		{m.requests.WithLabelValues("GET", "200"), 1},
		{m.requests.WithLabelValues("OTHER", "200"), 1},
		{m.requests.WithLabelValues("GET", "other"), 1},
		{m.requests.WithLabelValues("GET", "700"), 0},
		{m.requests.WithLabelValues("PATCH", "418"), 1},
		{m.routeRequests.WithLabelValues("GET /apps"), 3},
		{m.routeRequests.WithLabelValues("GET {unknown}"), 1},
		{m.upstream.WithLabelValues("200", "none"), 1},
		{m.upstream.WithLabelValues("503", "10004"), 1},
		{m.upstream.WithLabelValues("503", "other"), 1},
		{m.upstream.WithLabelValues("other", "none"), 1},
		{m.upstream.WithLabelValues("700", "none"), 0},
		{m.upstream.WithLabelValues("0", "none"), 1},
		{m.upstream.WithLabelValues("101", "none"), 1},
		{m.retries.WithLabelValues("dial"), 1},
		{m.retries.WithLabelValues("reset"), 1},
		{m.quotaRejections.WithLabelValues("quota"), 1},
		{m.storeErrors.WithLabelValues("take"), 1},
	} {
		if got := testutil.ToFloat64(c.c); got != c.want {
			t.Errorf("%d: %v, want %v", i, got, c.want)
		}
	}
	counts := map[string]uint64{}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "fusioo_gateway_upstream_duration_seconds" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			counts[mt.GetLabel()[0].GetValue()] = mt.GetHistogram().GetSampleCount()
		}
	}
	want := map[string]uint64{"1xx": 1, "2xx": 1, "3xx": 0, "4xx": 0, "5xx": 2, "error": 2}
	for k, v := range want {
		if counts[k] != v {
			t.Errorf("class %s: %d, want %d (%v)", k, counts[k], v, counts)
		}
	}
}
