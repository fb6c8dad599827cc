package harness

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// WrkOptions configure RunWrk. Zero values take the defaults in brackets.
type WrkOptions struct {
	Rounds      int           // rounds in rotating order [3]
	Duration    time.Duration // per workload and round [4s]
	Warmup      time.Duration // per workload, before the rounds [1s]
	Connections int           // wrk -c [32]
	Script      string        // path of bench/wrk/bench.lua (required)
	// ProxyCPU is the CPU the proxies (bare and gateways) are pinned to;
	// LoadCPU is wrk's, the simulator's and redis-server's, so what a
	// proxy costs is measured on a core of its own ["0", "1"].
	ProxyCPU, LoadCPU string
	// BaseBin, when set, is a directory with another build of the
	// gateway: every gateway workload runs on it too (as base-…), paired
	// with the same rounds, to compare two revisions.
	BaseBin string
	// BaseEnv is added to the environment of the base-… gateways only
	// (KEY=VALUE), e.g. to pair two settings of one build by round. The
	// launcher's own settings (listen addresses, the Redis URL) come after
	// it and win.
	BaseEnv []string
	// SimUpstream forwards to the simulator itself instead of nginx
	// serving the simulator's page.
	SimUpstream bool
	// ProfileDir, when set, turns on the gateways' server.pprof and saves
	// a CPU profile of each gateway workload's first round there.
	ProfileDir string
	// Workloads to run, by name (see wrkWorkloads); empty: all.
	Workloads []string
	Out       io.Writer
}

func (o *WrkOptions) defaults() {
	if o.Rounds <= 0 {
		o.Rounds = 3
	}
	if o.Duration <= 0 {
		o.Duration = 4 * time.Second
	}
	if o.Warmup <= 0 {
		o.Warmup = time.Second
	}
	if o.Connections <= 0 {
		o.Connections = 32
	}
	if o.ProxyCPU == "" {
		o.ProxyCPU = "0"
	}
	if o.LoadCPU == "" {
		o.LoadCPU = "1"
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
}

// wrkWorkload is one row of the comparison: a target and how many tokens
// its load is spread over.
type wrkWorkload struct {
	name, target string
	tokens       int
}

// wrkWorkloads are issue 17's rows; bare comes first and is what every
// ratio is to.
var wrkWorkloads = []wrkWorkload{
	{"bare", "bare", 16},
	{"memory-1", "memory", 1},
	{"memory-16", "memory", 16},
	{"redis-16", "redis", 16},
	{"redis-2000", "redis", 2000},
}

// WrkRun is one wrk run's figures.
type WrkRun struct {
	Requests   int
	Throughput float64 // requests/s
	P50, P99   time.Duration
	Errors     int // socket errors and non-2xx answers
	ProxyCPU   time.Duration
	// LoadBusy is the share of the load CPU that wrk, the simulator and
	// redis-server used: near 1, the load side limited the run.
	LoadBusy float64
}

// WrkResult is RunWrk's figures: runs by workload, one per round.
type WrkResult struct {
	Runs     map[string][]WrkRun
	Verdicts Verdicts
}

// RunWrk compares the bare proxy with the gateway (memory and Redis
// stores, deployed defaults, a quota that never binds) under wrk, a load
// generator in C pinned to its own core: rounds in rotating order, each
// workload's throughput and p99 as a ratio to the bare proxy's in the
// same round.
func RunWrk(ctx context.Context, l *ProcLauncher, o WrkOptions) (*WrkResult, error) {
	o.defaults()
	w := o.Out
	if _, err := exec.LookPath("wrk"); err != nil {
		return nil, fmt.Errorf("wrk not found (scripts/bench.sh installs Debian's): %w", err)
	}
	var cleanup []func()
	defer func() {
		for i := len(cleanup) - 1; i >= 0; i-- {
			cleanup[i]()
		}
	}()
	pin := func(pid int, cpus string) error {
		if out, err := exec.Command("taskset", "-a", "-p", "-c", cpus, strconv.Itoa(pid)).CombinedOutput(); err != nil {
			return fmt.Errorf("taskset %d: %w: %s", pid, err, out)
		}
		return nil
	}
	loadL := &ProcLauncher{BinDir: l.BinDir, Logs: l.Logs, CPUs: o.LoadCPU}
	proxyL := &ProcLauncher{BinDir: l.BinDir, Logs: l.Logs, CPUs: o.ProxyCPU, Defaults: true}
	sim, err := loadL.Sim(SimOptions{})
	if err != nil {
		return nil, err
	}
	cleanup = append(cleanup, sim.Stop)
	if err := SeedRecords(ctx, sim.URL, "app1", 20); err != nil {
		return nil, err
	}
	// The upstream every proxy forwards to: the simulator's 20-record
	// page served by nginx (a Go upstream on the load CPU would saturate
	// it before the proxies do), or the simulator itself.
	upURL, upPid := sim.URL, sim.Proc.Pid()
	if !o.SimUpstream {
		page, err := fetchPage(ctx, sim.URL+"/v3/records/apps/app1?limit=20")
		if err != nil {
			return nil, err
		}
		ng, err := startNginx(l.Logs, o.LoadCPU, page)
		if err != nil {
			return nil, err
		}
		cleanup = append(cleanup, ng.Stop)
		upURL, upPid = ng.URL, ng.Proc.Pid()
	}
	rs, err := StartRedis(l.LogDir())
	if err != nil {
		return nil, err
	}
	cleanup = append(cleanup, rs.Stop)
	if err := pin(rs.Pid(), o.LoadCPU); err != nil {
		return nil, err
	}
	// The deployed defaults (ProcLauncher.Defaults), coalescing on;
	// bench.lua's reads all differ (a sequence number in the query), so
	// none is shared and each pays what coalescing costs a read.
	gwEnv := []string{"FUSIOO_GATEWAY_UPSTREAM_URL=" + upURL}
	if o.ProfileDir != "" {
		gwEnv = append(gwEnv, "FUSIOO_GATEWAY_SERVER_PPROF=true")
	}
	services := map[string]*Service{}
	start := func(target string) error {
		var ll Launcher = proxyL
		kind, env := target, gwEnv
		if k, ok := strings.CutPrefix(target, "base-"); ok {
			ll, kind = &ProcLauncher{BinDir: o.BaseBin, Logs: l.Logs, CPUs: o.ProxyCPU, Defaults: true}, k
			env = append(slices.Clip(gwEnv), o.BaseEnv...)
		}
		s, err := startTarget(ll, "gateway-"+target, kind, upURL, rs.URL(), "info", env)
		if err != nil {
			return err
		}
		cleanup = append(cleanup, s.Stop)
		services[target] = s
		return nil
	}
	var loads []wrkWorkload
	want := map[string]bool{}
	for _, n := range o.Workloads {
		want[n] = true
	}
	for _, wl := range wrkWorkloads {
		if len(want) == 0 || want[wl.name] || wl.name == "bare" {
			loads = append(loads, wl)
		}
		if o.BaseBin != "" && wl.target != "bare" && (len(want) == 0 || want[wl.name]) {
			loads = append(loads, wrkWorkload{"base-" + wl.name, "base-" + wl.target, wl.tokens})
		}
	}
	for _, wl := range loads {
		if services[wl.target] == nil {
			if err := start(wl.target); err != nil {
				return nil, err
			}
		}
	}
	fmt.Fprintf(w, "wrk -t1 -c%d, %s per workload and round, %d rounds in rotating order; proxies on CPU %s, wrk, the upstream and redis-server on CPU %s\n",
		o.Connections, o.Duration, o.Rounds, o.ProxyCPU, o.LoadCPU)
	run := func(wl wrkWorkload, d time.Duration) (WrkRun, error) {
		s := services[wl.target]
		cpu0, load0 := ProcCPU(s.Proc.Pid()), ProcCPU(upPid)+ProcCPU(rs.Pid())
		t0 := time.Now()
		r, wrkCPU, err := runWrk(ctx, o, s.URL, wl.tokens, d)
		r.ProxyCPU = ProcCPU(s.Proc.Pid()) - cpu0
		load := ProcCPU(upPid) + ProcCPU(rs.Pid()) - load0 + wrkCPU
		r.LoadBusy = float64(load) / float64(time.Since(t0))
		return r, err
	}
	for _, wl := range loads {
		if _, err := run(wl, o.Warmup); err != nil {
			return nil, err
		}
	}
	res := &WrkResult{Runs: map[string][]WrkRun{}}
	for r := 0; r < o.Rounds; r++ {
		for i := range loads {
			wl := loads[(i+r)%len(loads)]
			var prof <-chan error
			if pp := services[wl.target].PprofURL; r == 0 && o.ProfileDir != "" && pp != "" {
				prof = profileCPU(ctx, pp, o.Duration-time.Second, filepath.Join(o.ProfileDir, wl.name+".cpu.pprof"))
			}
			x, err := run(wl, o.Duration)
			if err != nil {
				return nil, err
			}
			if prof != nil {
				if err := <-prof; err != nil {
					return nil, err
				}
			}
			res.Runs[wl.name] = append(res.Runs[wl.name], x)
		}
	}
	// The report: per workload, the paired ratios of every round.
	t := Table{Header: []string{"workload", "req/s (median)", "throughput ×bare (per round)", "p99 ×bare (per round)", "proxy CPU/req", "load CPU busy", "errors"}}
	bare := res.Runs["bare"]
	for _, wl := range loads {
		runs := res.Runs[wl.name]
		var tr, pr []float64
		errs := 0
		var cpu time.Duration
		reqs := 0
		busy := 0.0
		for i, x := range runs {
			tr = append(tr, Ratio(x.Throughput, bare[i].Throughput))
			pr = append(pr, DurRatio(x.P99, bare[i].P99))
			errs += x.Errors
			cpu += x.ProxyCPU
			reqs += x.Requests
			busy = max(busy, x.LoadBusy)
		}
		var tps []float64
		for _, x := range runs {
			tps = append(tps, x.Throughput)
		}
		t.Add(wl.name, fmt.Sprintf("%.0f", Median(tps)), ratios(tr), ratios(pr),
			Us(cpu/time.Duration(max(reqs, 1))), fmt.Sprintf("≤%.0f%%", 100*busy), strconv.Itoa(errs))
		res.Verdicts.Check(wl.name+": no errors", errs == 0, "%d socket errors or non-2xx answers", errs)
	}
	t.Write(w)
	// Two builds of the gateway, paired round by round with each other.
	for _, wl := range loads {
		base := res.Runs["base-"+wl.name]
		if base == nil {
			continue
		}
		var tr, cr []float64
		for i, x := range res.Runs[wl.name] {
			tr = append(tr, Ratio(x.Throughput, base[i].Throughput))
			cr = append(cr, Ratio(float64(x.ProxyCPU)/float64(max(x.Requests, 1)), float64(base[i].ProxyCPU)/float64(max(base[i].Requests, 1))))
		}
		fmt.Fprintf(w, "%s vs base-%s: throughput %s, proxy CPU per request %s\n", wl.name, wl.name, ratios(tr), ratios(cr))
	}
	res.Verdicts.Write(w, "wrk")
	return res, nil
}

// ratios formats per-round ratios with their median first.
func ratios(rs []float64) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = fmt.Sprintf("%.2f", r)
	}
	return fmt.Sprintf("%.2f× (%s)", Median(rs), strings.Join(parts, " "))
}

// runWrk runs wrk once against base for d and parses the line bench.lua's
// done callback prints.
// It returns the CPU time wrk used too.
func runWrk(ctx context.Context, o WrkOptions, base string, tokens int, d time.Duration) (WrkRun, time.Duration, error) {
	secs := max(int(d/time.Second), 1)
	cmd := exec.CommandContext(ctx, "taskset", "-c", o.LoadCPU, "wrk", "-t1", "-c"+strconv.Itoa(o.Connections),
		"-d"+strconv.Itoa(secs)+"s", "--timeout", "10s", "-s", o.Script, base)
	cmd.Env = append(os.Environ(), "TOKENS="+strconv.Itoa(tokens))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return WrkRun{}, 0, fmt.Errorf("wrk: %w: %s", err, out.String())
	}
	cpu := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "WRK ") {
			continue
		}
		f := map[string]int64{}
		for _, kv := range strings.Fields(line)[1:] {
			k, v, _ := strings.Cut(kv, "=")
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return WrkRun{}, 0, fmt.Errorf("wrk: bad field %q", kv)
			}
			f[k] = n
		}
		if f["duration_us"] <= 0 {
			return WrkRun{}, 0, fmt.Errorf("wrk: no duration in %q", line)
		}
		return WrkRun{
			Requests:   int(f["requests"]),
			Throughput: float64(f["requests"]) / (float64(f["duration_us"]) / 1e6),
			P50:        time.Duration(f["p50_us"]) * time.Microsecond,
			P99:        time.Duration(f["p99_us"]) * time.Microsecond,
			Errors:     int(f["errors"] + f["status"]),
		}, cpu, nil
	}
	return WrkRun{}, 0, fmt.Errorf("wrk printed no summary: %s", filepath.Base(o.Script)+": "+out.String())
}

// fetchPage returns the body of a GET of u.
func fetchPage(ctx context.Context, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer bench-page")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return b, err
}

// startNginx serves page as application/json at every path, from one
// nginx process (no master) on cpus.
func startNginx(logDir, cpus string, page []byte) (*Service, error) {
	dir, err := os.MkdirTemp(logDir, "nginx-")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "page.json"), page, 0o644); err != nil {
		return nil, err
	}
	addr, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	conf := fmt.Sprintf(`daemon off;
master_process off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  types { application/json json; }
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  server {
    listen %[2]s;
    root %[1]s;
    location / { try_files /page.json =404; }
  }
}
`, dir, addr)
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	p, err := StartProc("nginx", "taskset", []string{"-c", cpus, "nginx", "-p", dir, "-c", path, "-e", filepath.Join(dir, "error.log")}, nil, logDir)
	if err != nil {
		return nil, err
	}
	s := &Service{Name: "nginx", URL: "http://" + addr, Proc: p, stop: func() { p.Stop(6 * time.Second) }}
	if err := WaitHTTP(s.URL+"/v3/ping", p, 15*time.Second); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}
