package harness

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// SavingOptions configure the quota-saving run (issue 18, item 5).
type SavingOptions struct {
	// Duration is how long each configuration runs; 0: one minute.
	Duration time.Duration
	// Latency is the simulator's answer time, as Fusioo's over the
	// internet; 0: 150 ms.
	Latency time.Duration
	// Clients is the dashboard's clients, each polling Pages every
	// Interval; 0: 20, 2 s.
	Clients  int
	Interval time.Duration
	// Seed fixes the clients' phases; 0: 1.
	Seed uint64
}

// SavingRow is one configuration's figures, per minute.
type SavingRow struct {
	Name              string
	Requests          int     // client requests answered 200
	Upstream, Charged int     // at the simulator
	UpstreamPerMin    float64 // requests the upstream saw per minute
	ChargedPerMin     float64 // quota spent per minute
	Errors            int
}

// savingPages are the dashboard's five pages; the sync job pages app2
// (200 records, 10 pages of 20) every 10 s.
var savingPages = []string{
	"/v3/apps",
	"/v3/apps/app1",
	"/v3/records/apps/app1?limit=20",
	"/v3/records/apps/app1/count",
	"/v3/records/apps/app3?limit=20",
}

// RunSaving runs a dashboard-like workload of one token (Clients polling
// the same five pages every Interval, each from its own phase, plus a
// sync job paging app2 every 10 s) against the gateway with
// coalescing off, on, and on with a 10 s cache on the list routes, and
// prints upstream requests and quota spent per minute side by side.
func RunSaving(ctx context.Context, l Launcher, o SavingOptions, w io.Writer) ([]SavingRow, error) {
	if o.Duration <= 0 {
		o.Duration = time.Minute
	}
	if o.Latency <= 0 {
		o.Latency = 150 * time.Millisecond
	}
	if o.Clients <= 0 {
		o.Clients = 20
	}
	if o.Interval <= 0 {
		o.Interval = 2 * time.Second
	}
	if o.Seed == 0 {
		o.Seed = 1
	}
	configs := []struct{ name, env, extra string }{
		{"coalescing off", "FUSIOO_GATEWAY_COALESCE_ENABLED=false", ""},
		{"coalescing on", "FUSIOO_GATEWAY_COALESCE_ENABLED=true", ""},
		{"coalescing + 10s cache on lists", "FUSIOO_GATEWAY_COALESCE_ENABLED=true",
			"[[cache]]\nroute = \"GET /records/apps/{app}\"\nttl = \"10s\"\nmax_bytes = 16777216\n" +
				"[[cache]]\nroute = \"GET /apps\"\nttl = \"10s\"\nmax_bytes = 1048576\n"},
	}
	fmt.Fprintf(w, "quota saving: %d dashboard clients of one token polling %d pages every %s, plus a sync job paging an App; simulator latency %s; %s per configuration\n",
		o.Clients, len(savingPages), o.Interval, o.Latency, o.Duration)
	var rows []SavingRow
	for _, c := range configs {
		sim, err := l.Sim(SimOptions{})
		if err != nil {
			return nil, err
		}
		// Seeded at once, then answering at Fusioo's pace.
		err = SeedRecords(ctx, sim.URL, "app2", 200)
		if err == nil {
			err = SeedRecords(ctx, sim.URL, "app1", 40)
		}
		if err == nil {
			err = SimFaults(ctx, sim.URL, `{"latency":"`+o.Latency.String()+`"}`)
		}
		if err != nil {
			sim.Stop()
			return nil, err
		}
		base, err := SimLedger(ctx, sim.URL)
		if err != nil {
			sim.Stop()
			return nil, err
		}
		cfg := "[quota]\nlimit = 1000000\nwindow = \"1h\"\n[log]\nlevel = \"warn\"\n" + c.extra
		gw, err := l.Gateway("saving", cfg, []string{"FUSIOO_GATEWAY_UPSTREAM_URL=" + sim.URL, c.env})
		if err != nil {
			sim.Stop()
			return nil, err
		}
		row := savingLoad(ctx, gw.URL, o)
		row.Name = c.name
		gw.Stop()
		l2, err := SimLedger(ctx, sim.URL)
		sim.Stop()
		if err != nil {
			return nil, err
		}
		row.Upstream, row.Charged = l2.Requests-base.Requests, l2.Charged-base.Charged
		mins := o.Duration.Minutes()
		row.UpstreamPerMin, row.ChargedPerMin = float64(row.Upstream)/mins, float64(row.Charged)/mins
		rows = append(rows, row)
	}
	fmt.Fprintf(w, "%-32s %10s %14s %14s %8s\n", "configuration", "answered", "upstream/min", "quota/min", "errors")
	for _, r := range rows {
		fmt.Fprintf(w, "%-32s %10d %14.0f %14.0f %8d\n", r.Name, r.Requests, r.UpstreamPerMin, r.ChargedPerMin, r.Errors)
	}
	return rows, nil
}

// savingLoad drives the workload at gw for o.Duration.
func savingLoad(ctx context.Context, gw string, o SavingOptions) SavingRow {
	ctx, cancel := context.WithTimeout(ctx, o.Duration)
	defer cancel()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	defer client.CloseIdleConnections()
	var mu sync.Mutex
	var row SavingRow
	get := func(path string) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, gw+path, nil)
		req.Header.Set("Authorization", "Bearer "+Token(0))
		resp, err := client.Do(req)
		if err != nil {
			if ctx.Err() == nil {
				mu.Lock()
				row.Errors++
				mu.Unlock()
			}
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		mu.Lock()
		if resp.StatusCode == http.StatusOK {
			row.Requests++
		} else {
			row.Errors++
		}
		mu.Unlock()
	}
	rng := rand.New(rand.NewPCG(o.Seed, 2))
	var wg sync.WaitGroup
	for range o.Clients {
		phase := time.Duration(rng.Int64N(int64(o.Interval)))
		wg.Go(func() {
			every(ctx, phase, o.Interval, func() {
				var pw sync.WaitGroup
				for _, p := range savingPages { // a dashboard loads its panels together
					pw.Go(func() { get(p) })
				}
				pw.Wait()
			})
		})
	}
	wg.Go(func() { // the sync job: the App's ten pages one after another, every 10 s
		every(ctx, 0, 10*time.Second, func() {
			for off := 0; off < 200 && ctx.Err() == nil; off += 20 {
				get("/v3/records/apps/app2?limit=20&offset=" + strconv.Itoa(off))
			}
		})
	})
	wg.Wait()
	return row
}

// every runs fn after first, then every d from each run's start, until
// ctx ends.
func every(ctx context.Context, first, d time.Duration, fn func()) {
	t := time.NewTimer(first)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		t.Reset(d)
		fn()
	}
}
