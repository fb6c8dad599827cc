package harness

import (
	"bytes"
	"context"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fusioo-gateway/gateway/internal/fusioosim"
)

func TestPercentiles(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	ds := ms(5, 1, 4, 2, 3, 10, 9, 8, 7, 6) // 1..10 shuffled
	got := Percentiles(ds, 0, 0.5, 0.9, 0.99, 1)
	want := ms(1, 5, 9, 10, 10)
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("Percentiles = %v, want %v", got, want)
		}
	}
	if ds[0] != 5*time.Millisecond {
		t.Fatal("input was reordered")
	}
	if Percentile(nil, 0.5) != 0 {
		t.Fatal("empty input")
	}
	if p := Percentile(ms(7), 0.99); p != 7*time.Millisecond {
		t.Fatalf("one value: %v", p)
	}
}

func TestSummarizeAndRatios(t *testing.T) {
	r := &Run{Elapsed: 2 * time.Second}
	for i := range 100 {
		r.Samples = append(r.Samples, Sample{Status: 200, Latency: time.Duration(i+1) * time.Millisecond})
	}
	r.Samples = append(r.Samples, Sample{Status: 503, Latency: time.Second}, Sample{Err: context.DeadlineExceeded})
	s := Summarize("x", r)
	if s.Requests != 102 || s.OK != 100 || s.Errors != 1 || s.Statuses[503] != 1 {
		t.Fatalf("counts %+v", s)
	}
	if s.Throughput != 50 || s.P50 != 50*time.Millisecond || s.P99 != 99*time.Millisecond || s.Max != 100*time.Millisecond {
		t.Fatalf("throughput %v p50 %v p99 %v max %v (latencies of 2xx only)", s.Throughput, s.P50, s.P99, s.Max)
	}
	if X(Ratio(90, 100)) != "0.90x" || X(Ratio(1, 0)) != "-" || X(DurRatio(3, 2)) != "1.50x" {
		t.Fatal("ratio formatting")
	}
	var b bytes.Buffer
	writeCompare(&b, []string{"bare", "redis"}, map[string]Summary{"bare": s, "redis": s})
	if !strings.Contains(b.String(), "gateway (redis)") || !strings.Contains(b.String(), "1.00x") {
		t.Fatalf("table:\n%s", b.String())
	}
}

func TestVerdicts(t *testing.T) {
	var v Verdicts
	v.Check("a", true, "%d", 1)
	var b bytes.Buffer
	v.Write(&b, "s")
	if !v.Passed() || !strings.HasSuffix(b.String(), "PASS s\n") {
		t.Fatalf("%q", b.String())
	}
	v.Check("b", false, "no")
	b.Reset()
	v.Write(&b, "s")
	if v.Passed() || !strings.Contains(b.String(), "[FAIL] b: no") || !strings.HasSuffix(b.String(), "FAIL s\n") {
		t.Fatalf("%q", b.String())
	}
}

const page = `# HELP fusioo_gateway_requests_total Requests.
# TYPE fusioo_gateway_requests_total counter
fusioo_gateway_requests_total{method="GET",status="200"} 7
fusioo_gateway_requests_total{method="GET",status="429"} 3
fusioo_gateway_requests_total{method="POST",status="200"} 1
go_goroutines 12
weird{l="a \"q\" \\ b",m="x"} 1.5e3
fusioo_gateway_queue_wait_seconds_bucket{le="0.1"} 10
fusioo_gateway_queue_wait_seconds_bucket{le="1"} 30
fusioo_gateway_queue_wait_seconds_bucket{le="+Inf"} 40
fusioo_gateway_queue_wait_seconds_count 40
`

func TestParseMetrics(t *testing.T) {
	m, err := ParseMetrics(strings.NewReader(page))
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Sum("fusioo_gateway_requests_total"); got != 11 {
		t.Fatalf("sum %v", got)
	}
	if got := m.Sum("fusioo_gateway_requests_total", "status", "200"); got != 8 {
		t.Fatalf("sum status=200: %v", got)
	}
	if got := m.Sum("fusioo_gateway_requests_total", "method", "GET", "status", "429"); got != 3 {
		t.Fatalf("sum GET 429: %v", got)
	}
	if got := m.Sum("weird", "l", `a "q" \ b`); got != 1500 {
		t.Fatalf("escaped label: %v", got)
	}
	// Quantiles: 10 below 0.1, 20 more below 1, 10 above.
	if q := m.HistogramQuantile("fusioo_gateway_queue_wait_seconds", 0.25); math.Abs(q-0.1) > 1e-9 {
		t.Fatalf("p25 %v", q)
	}
	if q := m.HistogramQuantile("fusioo_gateway_queue_wait_seconds", 0.5); math.Abs(q-0.55) > 1e-9 {
		t.Fatalf("p50 %v", q)
	}
	if q := m.HistogramQuantile("fusioo_gateway_queue_wait_seconds", 0.99); q != 1 {
		t.Fatalf("p99 in +Inf bucket: %v", q)
	}
	d := Diff(Merge(m, m), m)
	if got := d.Sum("go_goroutines"); got != 12 {
		t.Fatalf("diff of merged pages: %v", got)
	}
	if _, err := ParseMetrics(strings.NewReader("x{l=\"v} 1\n")); err == nil {
		t.Fatal("unterminated label accepted")
	}
}

func TestQuotaUse(t *testing.T) {
	t0 := time.Unix(1000, 0)
	w := 10 * time.Second
	// 10 admissions at the start of every window for 60s: every rolling
	// window holds exactly 10.
	var ts []time.Time
	for k := range 6 {
		for i := range 10 {
			ts = append(ts, t0.Add(time.Duration(k)*w+time.Duration(i)*time.Millisecond))
		}
	}
	if u := fusioosim.QuotaUse(ts, t0, t0.Add(60*time.Second), w, 10); math.Abs(u-1) > 1e-9 {
		t.Fatalf("full use: %v", u)
	}
	if u := fusioosim.QuotaUse(ts, t0, t0.Add(60*time.Second), w, 20); math.Abs(u-0.5) > 1e-9 {
		t.Fatalf("half use: %v", u)
	}
	if u := fusioosim.QuotaUse(ts, t0, t0.Add(5*time.Second), w, 10); !math.IsNaN(u) {
		t.Fatalf("no window fits: %v", u)
	}
}

// TestBenchSmoke runs the whole comparison briefly in process: the
// simulator, the bare proxy and both gateways (a real redis-server), the
// closed and open loops, the CPU table's absence in process, and the
// report. Its numbers mean nothing (race detector, tiny runs).
// TestPairedRatio: each round's target is divided by the bare proxy's run
// of the same round, and the median of those ratios is what counts: one
// round in which the machine stalled does not decide.
func TestPairedRatio(t *testing.T) {
	run := func(ms int) *Run {
		r := &Run{Elapsed: time.Second}
		for range 10 {
			r.Samples = append(r.Samples, Sample{Status: 200, Latency: time.Duration(ms) * time.Millisecond})
		}
		return r
	}
	bare := []*Run{run(10), run(20), run(10), run(100)}
	target := []*Run{run(11), run(24), run(500), run(100)}
	p99 := func(s Summary) float64 { return float64(s.P99) }
	m, rounds := PairedRatio(target, bare, p99)
	if len(rounds) != 4 || X(rounds[0]) != "1.10x" || X(rounds[1]) != "1.20x" || X(rounds[2]) != "50.00x" || X(rounds[3]) != "1.00x" {
		t.Fatalf("per-round ratios %v", rounds)
	}
	if X(m) != "1.15x" { // median of 1.0, 1.1, 1.2, 50: (1.1+1.2)/2
		t.Fatalf("median %v, want 1.15", m)
	}
	if m, _ := PairedRatio(target[:3], bare, p99); X(m) != "1.20x" {
		t.Fatalf("odd count: median %v, want 1.20", m)
	}
	if m, rounds := PairedRatio(nil, bare, p99); !math.IsNaN(m) || rounds != nil {
		t.Fatal("no rounds: want NaN")
	}
}

func TestBenchSmoke(t *testing.T) {
	var out bytes.Buffer
	l := &InprocLauncher{Logs: t.TempDir()}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := RunBench(ctx, l, BenchOptions{
		Rounds: 1, ClosedFor: 300 * time.Millisecond, Concurrency: 4, OpenFor: 300 * time.Millisecond,
		Rate: 50, Warmup: 100 * time.Millisecond, Tokens: 2, Out: &out,
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{"closed loop (max throughput)", "constant rate 50 req/s", "gateway (redis)", "paired by round", "PASS bench"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("report lacks %q:\n%s", want, out.String())
		}
	}
	for _, tg := range []string{"bare", "memory", "redis"} {
		if r.Closed[tg].OK == 0 || len(r.Open) != 1 || r.Open[0].Sums[tg].OK == 0 {
			t.Fatalf("%s: no request answered:\n%s", tg, out.String())
		}
	}
}

func TestLoadRunRate(t *testing.T) {
	srv := http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			time.Sleep(50 * time.Millisecond)
		}
		w.WriteHeader(http.StatusTeapot)
		_, _ = w.Write([]byte(`{"code":30050,"message":"x","data":{}}`))
	})}
	u, stop, err := serve(srv.Handler)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	c := NewClient(16)
	run := RunRate(context.Background(), c, func(ctx context.Context, i int) (*http.Request, string) {
		p := "/fast"
		if i%2 == 1 {
			p = "/slow"
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u+p, nil)
		return req, p
	}, RateOptions{Rate: 100, Duration: 200 * time.Millisecond, Timeout: 20 * time.Millisecond})
	if len(run.Samples) != 20 {
		t.Fatalf("%d samples, want 20", len(run.Samples))
	}
	for _, s := range run.Samples {
		switch s.Tag {
		case "/fast":
			if s.Err != nil || s.Status != http.StatusTeapot || s.Code != 30050 {
				t.Fatalf("fast: %+v", s)
			}
		case "/slow":
			if s.Err == nil || s.Latency > time.Second {
				t.Fatalf("slow request not cut at its deadline: %+v", s)
			}
		}
	}
}

// TestSavingSmoke: the quota-saving run, short and in process: coalescing
// sends fewer requests upstream than none, and the cache fewer still.
func TestSavingSmoke(t *testing.T) {
	t.Parallel() // mostly waiting on the simulator's latency
	l := &InprocLauncher{Logs: t.TempDir()}
	var out strings.Builder
	rows, err := RunSaving(t.Context(), l, SavingOptions{Duration: 3 * time.Second}, &out)
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + out.String())
	if len(rows) != 3 {
		t.Fatalf("%d rows", len(rows))
	}
	off, on, cached := rows[0], rows[1], rows[2]
	for _, r := range rows {
		if r.Errors != 0 || r.Requests == 0 {
			t.Fatalf("%s: %d answered, %d errors", r.Name, r.Requests, r.Errors)
		}
	}
	if !(on.Charged < off.Charged && cached.Charged < on.Charged) {
		t.Fatalf("quota spent: off %d, coalescing %d, cache %d", off.Charged, on.Charged, cached.Charged)
	}
}
