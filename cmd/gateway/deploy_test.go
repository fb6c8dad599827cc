package main

// Tests of what deploy/ ships against the gateway that runs: the live
// /metrics passes `promtool check metrics` with Fusioo's codes
// pre-initialised and no token in it; the alert rules pass `promtool check
// rules` and their unit tests; every metric the dashboard and the rules
// name exists; the dashboard's panels all use its datasource variable; and
// the compose and Kubernetes files hold a valid gateway configuration whose
// grace periods cover server.shutdown_timeout.
//
// promtool is required (scripts/test.sh installs Debian's prometheus
// package when it is missing): these tests fail, never skip, without it.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/fusioo-gateway/gateway/internal/config"
	"github.com/fusioo-gateway/gateway/internal/fusioo"
	"github.com/fusioo-gateway/gateway/internal/fusioosim"
	"github.com/fusioo-gateway/gateway/internal/limiter"
	"github.com/fusioo-gateway/gateway/internal/metrics"
	"github.com/fusioo-gateway/gateway/internal/quota"
	"github.com/fusioo-gateway/gateway/internal/retry"
)

// deployDir is deploy/ seen from this package's directory (go test runs
// in it).
var deployDir = filepath.Join("..", "..", "deploy")

func deployFile(t *testing.T, rel ...string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(append([]string{deployDir}, rel...)...))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// promtool runs promtool with args (stdin if not nil) and returns its
// combined output and exit code.
func promtool(t *testing.T, stdin []byte, args ...string) (string, int) {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool is not installed: `sudo apt-get install prometheus` (Debian/Ubuntu) or put promtool from " +
			"https://prometheus.io/download/ on PATH; scripts/test.sh installs it when missing")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil && cmd.ProcessState == nil {
		t.Fatalf("promtool %v: %v", args, err)
	}
	return string(out), cmd.ProcessState.ExitCode()
}

// The tokens of the live traffic: none of them, nor their hash prefixes,
// may appear in /metrics.
const (
	tokQuota   = "tok-deploy-quota-7f3a9c"
	tokRefused = "tok-deploy-refused-b81e22"
	tokFlaky   = "tok-deploy-flaky-40d6e1"
)

// liveMetrics runs a gateway in process in front of the simulator, sends
// traffic that exercises the metrics (successes, one request over the
// gateway's quota, an upstream 20005 and the block that follows, an
// upstream 503 and its retry, an anonymous 10003, a 404/10002, an uncharged ping) and
// returns its /metrics page.
func liveMetrics(t *testing.T) string {
	t.Helper()
	sim := fusioosim.New(fusioosim.Config{})
	var flaky atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Header.Get("Authorization") {
		case "Bearer " + tokRefused: // the quota was spent by another client of the token
			fusioo.WriteError(w, http.StatusTooManyRequests, fusioo.CodeRateLimited, fusioo.CodeRateLimited.Message())
			return
		case "Bearer " + tokFlaky:
			if flaky.Add(1) == 1 {
				fusioo.WriteError(w, http.StatusServiceUnavailable, fusioo.CodeUnavailable, fusioo.CodeUnavailable.Message())
				return
			}
		}
		sim.ServeHTTP(w, r)
	}))
	t.Cleanup(up.Close)
	gw := startGateway(t, `
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
shutdown_timeout = "2s"
[quota]
limit = 3
window = "1h"
[smoothing]
rate = 1000.0
burst = 1000
[queue]
max_wait = "200ms"
[retry]
base_delay = "1ms"
max_delay = "5ms"
[log]
level = "error"
`, "FUSIOO_GATEWAY_UPSTREAM_URL="+up.URL)
	c := newClient(t)
	base := "http://" + gw.addrs.Addr
	send := func(path, token string, want ...int) {
		t.Helper()
		st, _, body, err := c.get(base+path, token)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		if !slices.Contains(want, st) {
			t.Fatalf("GET %s (%.12s): status %d, want %v: %s", path, token, st, want, body)
		}
	}
	for range 3 {
		send("/v3/apps", tokQuota, 200)
	}
	send("/v3/apps", tokQuota, 429)          // over the gateway's quota
	send("/v3/ping", tokQuota, 200)          // not charged
	send("/v3/apps", tokRefused, 429)        // upstream 20005
	send("/v3/apps", tokRefused, 429)        // blocked by the gateway after it
	send("/v3/apps", tokFlaky, 200)          // upstream 503, retried
	send("/v3/apps", "", 401)                // anonymous: Fusioo answers 10003
	send("/v3/no/such/route", tokFlaky, 404) // 10002
	st, _, body, err := c.get("http://"+gw.addrs.AdminAddr+"/metrics", "")
	if err != nil || st != 200 {
		t.Fatalf("GET /metrics: %d %v", st, err)
	}
	return body
}

// sample is one line of the text exposition format.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

var (
	sampleRe = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$`)
	labelRe  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)
)

func parseSamples(t *testing.T, page string) []sample {
	t.Helper()
	var out []sample
	for _, line := range strings.Split(page, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		m := sampleRe.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("unparsable exposition line %q", line)
		}
		v, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		s := sample{name: m[1], labels: map[string]string{}, value: v}
		for _, l := range labelRe.FindAllStringSubmatch(m[2], -1) {
			s.labels[l[1]] = l[2]
		}
		out = append(out, s)
	}
	return out
}

// TestDeployMetricsPromtool: the live /metrics passes `promtool check
// metrics`, pre-initialises every Fusioo code on upstream_responses_total,
// keeps its label values bounded, carries no token (nor a token's hash
// prefix), exports build_info and the Go and process collectors, and counts
// the traffic the dashboard and alerts are built on.
func TestDeployMetricsPromtool(t *testing.T) {
	page := liveMetrics(t)
	if out, code := promtool(t, []byte(page), "check", "metrics"); code != 0 || strings.TrimSpace(out) != "" {
		t.Fatalf("promtool check metrics: exit %d:\n%s", code, out)
	}

	for _, tok := range []string{tokQuota, tokRefused, tokFlaky} {
		sum := sha256.Sum256([]byte(tok))
		for _, secret := range []string{tok, strings.TrimPrefix(tok, "tok-"), hex.EncodeToString(sum[:])[:8]} {
			if strings.Contains(page, secret) {
				t.Errorf("/metrics contains %q (a token or its fingerprint)", secret)
			}
		}
	}

	samples := parseSamples(t, page)
	byName := map[string][]sample{}
	for _, s := range samples {
		byName[s.name] = append(byName[s.name], s)
	}
	val := func(name string, labels map[string]string) (float64, bool) {
		for _, s := range byName[name] {
			if matches(s.labels, labels) {
				return s.value, true
			}
		}
		return 0, false
	}

	// Every code of Fusioo's table, plus none and other, on every status
	// the gateway pre-initialises (the statuses 30054 has a series for: the
	// traffic never produces it), at 0 where nothing happened; no other
	// code or status values.
	known := map[string]bool{"none": true, "other": true}
	for _, c := range fusioo.Codes() {
		known[c.String()] = true
	}
	statusRe := regexp.MustCompile(`^([1-5][0-9][0-9]|0|other)$`)
	preStatuses := map[string]bool{}
	seen := map[string]bool{}
	for _, s := range byName["fusioo_gateway_upstream_responses_total"] {
		code, status := s.labels["code"], s.labels["status"]
		if !known[code] {
			t.Errorf("upstream_responses_total: unbounded code label %q", code)
		}
		if !statusRe.MatchString(status) {
			t.Errorf("upstream_responses_total: unbounded status label %q", status)
		}
		seen[code] = true
		if code == fusioo.CodeConcurrentRequests.String() {
			preStatuses[status] = true
			if s.value != 0 {
				t.Errorf("upstream_responses_total{code=30054,status=%q} = %v, want a pre-initialised 0", status, s.value)
			}
		}
	}
	if len(preStatuses) == 0 {
		t.Errorf("upstream_responses_total: no pre-initialised series")
	}
	for code := range known {
		if !seen[code] {
			t.Errorf(`upstream_responses_total has no series code=%q: Fusioo's codes must be pre-initialised`, code)
		}
		for status := range preStatuses {
			if _, ok := val("fusioo_gateway_upstream_responses_total", map[string]string{"code": code, "status": status}); !ok {
				t.Errorf(`upstream_responses_total{code=%q,status=%q} is not pre-initialised`, code, status)
			}
		}
	}

	// Bounded label values everywhere else.
	bounded := map[string]*regexp.Regexp{
		"fusioo_gateway_requests_total":                   regexp.MustCompile(`^(GET|HEAD|OPTIONS|POST|PUT|PATCH|DELETE|OTHER)/([1-5][0-9][0-9]|0|other)$`),
		"fusioo_gateway_retries_total":                    regexp.MustCompile(`^(` + strings.Join(retry.Reasons(), "|") + `)$`),
		"fusioo_gateway_quota_rejections_total":           regexp.MustCompile(`^(quota|blocked|queue_full|smoothing|keys_full)$`),
		"fusioo_gateway_store_errors_total":               regexp.MustCompile(`^(` + strings.Join(quota.StoreOps, "|") + `)$`),
		"fusioo_gateway_upstream_duration_seconds_bucket": regexp.MustCompile(`^(2xx|3xx|4xx|5xx|error)$`),
	}
	labelOf := map[string]func(map[string]string) string{
		"fusioo_gateway_requests_total":                   func(l map[string]string) string { return l["method"] + "/" + l["status"] },
		"fusioo_gateway_retries_total":                    func(l map[string]string) string { return l["reason"] },
		"fusioo_gateway_quota_rejections_total":           func(l map[string]string) string { return l["reason"] },
		"fusioo_gateway_store_errors_total":               func(l map[string]string) string { return l["op"] },
		"fusioo_gateway_upstream_duration_seconds_bucket": func(l map[string]string) string { return l["class"] },
	}
	for name, re := range bounded {
		for _, s := range byName[name] {
			if v := labelOf[name](s.labels); !re.MatchString(v) {
				t.Errorf("%s: unbounded label value %q", name, v)
			}
		}
	}
	// Routes are named by template: the route table's names, or
	// "METHOD {unknown}"; never a raw path.
	routes := map[string]bool{}
	for _, r := range fusioo.DefaultRoutes() {
		routes[r.Name()] = true
	}
	unknownRoute := regexp.MustCompile(`^[A-Z]+ \{unknown\}$`)
	for _, name := range []string{"fusioo_gateway_route_requests_total", "fusioo_gateway_coalesced_total", "fusioo_gateway_cache_requests_total"} {
		for _, s := range byName[name] {
			if r := s.labels["route"]; !routes[r] && !unknownRoute.MatchString(r) {
				t.Errorf("%s: route label %q is not a route template", name, r)
			}
		}
	}

	// build_info, and the Go and process collectors.
	if bi := byName["fusioo_gateway_build_info"]; len(bi) != 1 || bi[0].value != 1 || bi[0].labels["version"] == "" {
		t.Errorf("fusioo_gateway_build_info: %+v", bi)
	}
	for _, name := range []string{"go_goroutines", "go_memstats_heap_inuse_bytes", "process_cpu_seconds_total", "process_resident_memory_bytes"} {
		if len(byName[name]) == 0 {
			t.Errorf("%s missing: Go and process collectors not registered", name)
		}
	}

	// The traffic is counted where the dashboard and alerts look for it.
	for _, want := range []struct {
		name   string
		labels map[string]string
	}{
		{"fusioo_gateway_requests_total", map[string]string{"method": "GET", "status": "200"}},
		{"fusioo_gateway_requests_total", map[string]string{"method": "GET", "status": "429"}},
		{"fusioo_gateway_quota_rejections_total", map[string]string{"reason": "quota"}},
		{"fusioo_gateway_quota_rejections_total", map[string]string{"reason": "blocked"}},
		{"fusioo_gateway_quota_upstream_exhausted_total", nil},
		{"fusioo_gateway_upstream_responses_total", map[string]string{"status": "429", "code": "20005"}},
		{"fusioo_gateway_upstream_responses_total", map[string]string{"status": "503", "code": "10004"}},
		{"fusioo_gateway_upstream_responses_total", map[string]string{"status": "401", "code": "10003"}},
		{"fusioo_gateway_upstream_duration_seconds_count", map[string]string{"class": "2xx"}},
		{"fusioo_gateway_retries_total", map[string]string{"reason": "unavailable"}},
	} {
		if v, ok := val(want.name, want.labels); !ok || v < 1 {
			t.Errorf("%s%v = %v (present %v), want >= 1 after the traffic", want.name, want.labels, v, ok)
		}
	}
	for _, name := range []string{"fusioo_gateway_queue_depth", "fusioo_gateway_store_fallback_active", "fusioo_gateway_retry_budget_exhausted_total"} {
		if v, ok := val(name, nil); !ok || v != 0 {
			t.Errorf("%s = %v (present %v), want 0", name, v, ok)
		}
	}
}

func matches(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

// TestDeployRulesPromtool: the alert rules pass `promtool check rules`
// and their unit tests (rules_test.yml fires and clears every alert), and
// the compose Prometheus configuration is valid.
func TestDeployRulesPromtool(t *testing.T) {
	rules := filepath.Join(deployDir, "prometheus", "rules.yml")
	if out, code := promtool(t, nil, "check", "rules", rules); code != 0 {
		t.Fatalf("promtool check rules: exit %d:\n%s", code, out)
	}
	if out, code := promtool(t, nil, "test", "rules", filepath.Join(deployDir, "prometheus", "rules_test.yml")); code != 0 {
		t.Fatalf("promtool test rules: exit %d:\n%s", code, out)
	}
	// prometheus-kubernetes.yml is not checked: Debian's promtool is built
	// without Kubernetes service discovery and rejects kubernetes_sd_configs.
	if out, code := promtool(t, nil, "check", "config", filepath.Join(deployDir, "prometheus", "prometheus.yml")); code != 0 {
		t.Fatalf("promtool check config: exit %d:\n%s", code, out)
	}

	// Every alert is exercised by the unit tests, firing at least once.
	alerts := regexp.MustCompile(`(?m)^\s*- alert: (\S+)`).FindAllStringSubmatch(string(deployFile(t, "prometheus", "rules.yml")), -1)
	if len(alerts) < 6 {
		t.Fatalf("rules.yml has %d alerts, want at least 6", len(alerts))
	}
	tests := string(deployFile(t, "prometheus", "rules_test.yml"))
	for _, a := range alerts {
		fired := regexp.MustCompile(`alertname: ` + a[1] + `\n\s*exp_alerts:\n\s*- exp_labels:`)
		if !fired.MatchString(tests) {
			t.Errorf("rules_test.yml never expects %s to fire", a[1])
		}
		silent := regexp.MustCompile(`alertname: ` + a[1] + `\n\s*exp_alerts: \[\]`)
		if !silent.MatchString(tests) {
			t.Errorf("rules_test.yml never expects %s to stay silent", a[1])
		}
	}
}

// referencedMetrics returns the metric names of the gateway and of the Go
// and process collectors found in text.
func referencedMetrics(text string) []string {
	re := regexp.MustCompile(`\b(fusioo_gateway_[a-z0-9_]*[a-z0-9]|go_[a-z0-9_]*[a-z0-9]|process_[a-z0-9_]*[a-z0-9])\b`)
	set := map[string]bool{}
	for _, m := range re.FindAllString(text, -1) {
		set[m] = true
	}
	out := make([]string, 0, len(set))
	for m := range set {
		out = append(out, m)
	}
	sort.Strings(out)
	return out
}

// sampleNames lists the series names of an exposition page (a histogram
// is its _bucket, _sum and _count series).
func sampleNames(t *testing.T, page string) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	for _, s := range parseSamples(t, page) {
		names[s.name] = true
	}
	return names
}

// TestDeployDashboardAndRulesMetricNames: every metric the dashboard and
// the alert rules name is a series on a live gateway's /metrics, so no
// panel or alert waits on a misspelt name or on a label vector that has no
// series until its first event.
func TestDeployDashboardAndRulesMetricNames(t *testing.T) {
	live := sampleNames(t, liveMetrics(t))

	// What internal/metrics can export with every label value initialised,
	// to say why a name is missing.
	reg := prometheus.NewRegistry()
	metrics.New(reg, metrics.Options{
		Routes:           []string{"GET /apps"},
		RetryReasons:     retry.Reasons(),
		RejectReasons:    []string{limiter.ReasonQuota, limiter.ReasonBlocked, limiter.ReasonQueueFull, limiter.ReasonSmoothing},
		StoreOps:         quota.StoreOps,
		ClientStatuses:   []int{200},
		UpstreamStatuses: []int{200},
	})
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	full := sampleNames(t, rec.Body.String())
	known := func(n string) bool { return live[n] || full[n] }

	for _, src := range []string{"grafana/fusioo-gateway.json", "prometheus/rules.yml"} {
		names := referencedMetrics(string(deployFile(t, filepath.FromSlash(src))))
		if len(names) == 0 {
			t.Errorf("%s names no metric", src)
		}
		for _, n := range names {
			if live[n] {
				continue
			}
			base := n
			for _, suf := range []string{"_bucket", "_sum", "_count"} {
				if b, ok := strings.CutSuffix(n, suf); ok {
					base = b
				}
			}
			switch {
			case full[n]:
				t.Errorf("%s names %s, which has no series on a fresh gateway: pre-initialise its label values (metrics.Options in run.go)", src, n)
			case known(n + "_bucket"):
				t.Errorf("%s names %s, a histogram: query %s_bucket, _sum or _count", src, n, n)
			case base != n && known(base):
				t.Errorf("%s names %s, but %s is not a histogram", src, n, base)
			default:
				t.Errorf("%s names %s, which the gateway does not export", src, n)
			}
		}
	}
}

// dashboard is the part of Grafana's dashboard model the tests read.
type dashboard struct {
	Inputs        json.RawMessage `json:"__inputs"`
	UID           string          `json:"uid"`
	Title         string          `json:"title"`
	SchemaVersion int             `json:"schemaVersion"`
	Templating    struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Datasource *datasourceRef  `json:"datasource"`
			Current    struct {
				Value json.RawMessage `json:"value"`
			} `json:"current"`
		} `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panel struct {
	ID         int            `json:"id"`
	Type       string         `json:"type"`
	Title      string         `json:"title"`
	Datasource *datasourceRef `json:"datasource"`
	Targets    []struct {
		RefID      string         `json:"refId"`
		Expr       string         `json:"expr"`
		Datasource *datasourceRef `json:"datasource"`
	} `json:"targets"`
	Panels  []panel `json:"panels"` // a collapsed row's panels
	GridPos struct {
		H, W, X, Y int
	} `json:"gridPos"`
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	var d dashboard
	dec := json.NewDecoder(bytes.NewReader(deployFile(t, "grafana", "fusioo-gateway.json")))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	return d
}

func usesDatasourceVar(ds *datasourceRef) bool {
	return ds != nil && ds.Type == "prometheus" && (ds.UID == "${datasource}" || ds.UID == "$datasource")
}

// TestDeployDashboardDatasource: the dashboard parses, is importable as is
// (no __inputs to fill in), has a Prometheus datasource variable whose
// default is the provisioned datasource, and every panel and query uses
// that variable and the job / instance variables; every query, with the
// variables substituted, is valid PromQL (promtool).
func TestDeployDashboardDatasource(t *testing.T) {
	d := loadDashboard(t)
	if d.Inputs != nil {
		t.Errorf("dashboard has __inputs: file provisioning cannot fill them in")
	}
	if d.UID == "" || d.Title == "" || d.SchemaVersion < 36 {
		t.Errorf("dashboard uid %q, title %q, schemaVersion %d", d.UID, d.Title, d.SchemaVersion)
	}
	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
		switch v.Name {
		case "datasource":
			if v.Type != "datasource" || string(v.Query) != `"prometheus"` {
				t.Errorf("datasource variable: type %q query %s, want a datasource variable of Prometheus", v.Type, v.Query)
			}
			// Its default is the datasource deploy/grafana provisions.
			prov := string(deployFile(t, "grafana", "provisioning", "datasources", "prometheus.yml"))
			uid := regexp.MustCompile(`(?m)^\s*uid:\s*(\S+)`).FindStringSubmatch(prov)
			if uid == nil || string(v.Current.Value) != strconv.Quote(uid[1]) {
				t.Errorf("datasource variable defaults to %s, provisioned datasource uid is %v", v.Current.Value, uid)
			}
		default:
			if v.Type == "query" && !usesDatasourceVar(v.Datasource) {
				t.Errorf("variable %s does not query ${datasource}: %+v", v.Name, v.Datasource)
			}
		}
	}
	for _, name := range []string{"datasource", "job", "instance"} {
		if !vars[name] {
			t.Errorf("dashboard has no %s variable", name)
		}
	}

	var all []panel
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			all = append(all, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	ids := map[int]string{}
	var exprs []string
	queried := 0
	for _, p := range all {
		if prev, dup := ids[p.ID]; dup {
			t.Errorf("panels %q and %q share id %d", prev, p.Title, p.ID)
		}
		ids[p.ID] = p.Title
		if p.Type == "row" { // rows group panels and run no query
			continue
		}
		if !usesDatasourceVar(p.Datasource) {
			t.Errorf("panel %q: datasource %+v, want the ${datasource} variable", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			queried++
			if !usesDatasourceVar(tg.Datasource) {
				t.Errorf("panel %q query %s: datasource %+v, want ${datasource}", p.Title, tg.RefID, tg.Datasource)
			}
			if !strings.Contains(tg.Expr, `job=~"$job"`) || !strings.Contains(tg.Expr, `instance=~"$instance"`) {
				t.Errorf("panel %q query %s does not filter on $job and $instance: %s", p.Title, tg.RefID, tg.Expr)
			}
			if strings.Contains(tg.Expr, "histogram_quantile") && (!strings.Contains(tg.Expr, "_bucket") || !strings.Contains(tg.Expr, "le")) {
				t.Errorf("panel %q: histogram_quantile needs _bucket series summed by le: %s", p.Title, tg.Expr)
			}
			exprs = append(exprs, tg.Expr)
		}
		if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: bad gridPos %+v", p.Title, p.GridPos)
		}
	}
	if queried < 15 {
		t.Errorf("dashboard has %d queries; want the panels of deploy/README.md", queried)
	}
	// The panels, by the metric each one plots.
	joined := strings.Join(exprs, "\n")
	for _, m := range []string{"fusioo_gateway_requests_total", "fusioo_gateway_upstream_responses_total", "fusioo_gateway_quota_rejections_total",
		"fusioo_gateway_quota_upstream_exhausted_total", `code="20005"`, "fusioo_gateway_retries_total", "fusioo_gateway_retry_budget_exhausted_total",
		"fusioo_gateway_queue_depth", "fusioo_gateway_queue_wait_seconds_bucket", "fusioo_gateway_upstream_duration_seconds_bucket",
		"fusioo_gateway_store_fallback_active"} {
		if !strings.Contains(joined, m) {
			t.Errorf("no dashboard panel queries %s", m)
		}
	}

	// Valid PromQL: each query as a recording rule, Grafana's variables
	// replaced by what they expand to.
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	repl := strings.NewReplacer("$__rate_interval", "1m", "$__interval", "15s", "$__range", "1h", "$job", "fusioo-gateway", "$instance", ".*")
	for i, e := range exprs {
		fmt.Fprintf(&rules, "      - record: dashboard:query%d\n        expr: %s\n", i, strconv.Quote(repl.Replace(e)))
	}
	p := filepath.Join(t.TempDir(), "dashboard_rules.yml")
	if err := os.WriteFile(p, []byte(rules.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, code := promtool(t, nil, "check", "rules", p); code != 0 {
		t.Fatalf("dashboard queries are not valid PromQL: exit %d:\n%s\n%s", code, out, rules.String())
	}
}

// TestDeployManifestsConsistent: the configurations the compose file and
// the Kubernetes manifests give the gateway are valid (the same loader as
// the binary, environment overrides included), the Dockerfile's
// ENTRYPOINT reads the file the image and the manifests put in place, and
// every grace period covers server.shutdown_timeout.
func TestDeployManifestsConsistent(t *testing.T) {
	root := filepath.Join("..", "..")
	dockerfile, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	const cfgPath = "/etc/fusioo-gateway/config.toml"
	for _, want := range []string{
		"COPY config.example.toml " + cfgPath,
		`ENTRYPOINT ["/usr/local/bin/gateway", "-config", "` + cfgPath + `"]`,
		"USER 65532:65532",
		"CGO_ENABLED=0",
		"./cmd/gateway", "./cmd/fusioo-sim",
	} {
		if !bytes.Contains(dockerfile, []byte(want)) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	if !regexp.MustCompile(`(?m)^FROM \S*(distroless/static|scratch)\S*`).Match(dockerfile) {
		t.Errorf("Dockerfile's final stage is not distroless/static or scratch")
	}

	// docker-compose: the gateway's environment over the image's file.
	compose := string(deployFile(t, "docker-compose.yml"))
	env := regexp.MustCompile(`(?m)^\s+(FUSIOO_GATEWAY_[A-Z_]+):\s*"?([^"\s#]+)"?`).FindAllStringSubmatch(compose, -1)
	var composeEnv []string
	for _, kv := range env {
		composeEnv = append(composeEnv, kv[1]+"="+kv[2])
	}
	cfg, err := config.Load(filepath.Join(root, "config.example.toml"), composeEnv)
	if err != nil {
		t.Fatalf("compose environment %v: %v", composeEnv, err)
	}
	if cfg.Server.AdminListen != "0.0.0.0:9090" || cfg.Quota.Store != "redis" || !strings.Contains(cfg.Upstream.URL, "fusioo-sim:8081") {
		t.Errorf("compose gateway: admin %q, store %q, upstream %q", cfg.Server.AdminListen, cfg.Quota.Store, cfg.Upstream.URL)
	}
	if m := regexp.MustCompile(`stop_grace_period:\s*(\S+)`).FindStringSubmatch(compose); m == nil {
		t.Errorf("compose gateway has no stop_grace_period (Docker's default 10s is shorter than shutdown_timeout)")
	} else if d, err := time.ParseDuration(m[1]); err != nil || d <= cfg.Server.ShutdownTimeout.Duration {
		t.Errorf("compose stop_grace_period %s does not cover shutdown_timeout %s", m[1], cfg.Server.ShutdownTimeout.Duration)
	}

	// Kubernetes: each ConfigMap's config.toml with its Deployment's
	// environment (values from Secrets replaced by placeholders).
	for _, dir := range []string{"shared-service", "sidecar"} {
		cm := string(deployFile(t, "kubernetes", dir, "configmap.yaml"))
		dep := string(deployFile(t, "kubernetes", dir, "deployment.yaml"))
		toml := embeddedBlock(t, cm, "config.toml: |")
		var kenv []string
		for _, m := range regexp.MustCompile(`- name: (FUSIOO_GATEWAY_[A-Z_]+)\n\s+(value: "?([^"\n]*)"?|valueFrom:)`).FindAllStringSubmatch(dep, -1) {
			v := m[3]
			if m[2] == "valueFrom:" {
				v = "redis://:placeholder@redis:6379/0"
				if !strings.HasSuffix(m[1], "_URL") {
					v = "placeholder"
				}
			}
			kenv = append(kenv, m[1]+"="+v)
		}
		cfg, err := config.Parse([]byte(toml), kenv)
		if err != nil {
			t.Errorf("%s: config.toml with env %v: %v", dir, kenv, err)
			continue
		}
		if cfg.Server.AdminListen != "0.0.0.0:9090" {
			t.Errorf("%s: admin listener %q is unreachable for probes and Prometheus", dir, cfg.Server.AdminListen)
		}
		if !strings.Contains(dep, "enableServiceLinks: false") {
			t.Errorf("%s: enableServiceLinks must be false: a Service named fusioo-gateway injects FUSIOO_GATEWAY_* variables the gateway rejects", dir)
		}
		if !strings.Contains(dep, "mountPath: /etc/fusioo-gateway\n") {
			t.Errorf("%s: the ConfigMap is not mounted where the image's ENTRYPOINT reads %s", dir, cfgPath)
		}
		for _, probe := range []string{"path: /readyz", "path: /healthz", "port: admin", "readOnlyRootFilesystem: true", "runAsNonRoot: true"} {
			if !strings.Contains(dep, probe) {
				t.Errorf("%s: deployment lacks %q", dir, probe)
			}
		}
		grace := intField(t, dep, "terminationGracePeriodSeconds")
		preStop := 0
		if m := regexp.MustCompile(`preStop:\n\s+sleep:\n\s+seconds: (\d+)`).FindStringSubmatch(dep); m != nil {
			preStop, _ = strconv.Atoi(m[1])
		}
		// The drain, then up to 2s answering the rest 503 and 1s for the
		// admin listener (run.go), after the preStop pause.
		need := time.Duration(preStop)*time.Second + cfg.Server.ShutdownTimeout.Duration + 3*time.Second
		if time.Duration(grace)*time.Second < need {
			t.Errorf("%s: terminationGracePeriodSeconds %d < preStop %ds + shutdown_timeout %s + 3s", dir, grace, preStop, cfg.Server.ShutdownTimeout.Duration)
		}
		if dir == "shared-service" {
			if cfg.Quota.Store != "redis" {
				t.Errorf("shared service: quota.store %q, want redis (replicas share each token's quota)", cfg.Quota.Store)
			}
			replicas := intField(t, dep, "replicas")
			if cfg.Quota.FallbackShare*float64(replicas) > 1 {
				t.Errorf("shared service: fallback_share %v × %d replicas > 1: the replicas could exceed the quota while Redis is down",
					cfg.Quota.FallbackShare, replicas)
			}
			if preStop == 0 {
				t.Errorf("shared service: no preStop pause: requests routed before the endpoint is removed are refused")
			}
		} else if !strings.Contains(dep, "restartPolicy: Always") {
			t.Errorf("sidecar: not a native sidecar (initContainers with restartPolicy: Always)")
		}
	}
}

// embeddedBlock returns the YAML block scalar after the line ending in
// key, without its indentation.
func embeddedBlock(t *testing.T, doc, key string) string {
	t.Helper()
	_, rest, ok := strings.Cut(doc, key+"\n")
	if !ok {
		t.Fatalf("no %q in %q", key, doc)
	}
	var b strings.Builder
	indent := ""
	for _, line := range strings.Split(rest, "\n") {
		if indent == "" && strings.TrimSpace(line) != "" {
			indent = line[:len(line)-len(strings.TrimLeft(line, " "))]
		}
		if strings.TrimSpace(line) != "" && !strings.HasPrefix(line, indent) {
			break
		}
		b.WriteString(strings.TrimPrefix(line, indent) + "\n")
	}
	return b.String()
}

func intField(t *testing.T, doc, key string) int {
	t.Helper()
	m := regexp.MustCompile(`(?m)^\s*` + key + `: (\d+)`).FindStringSubmatch(doc)
	if m == nil {
		t.Fatalf("no %s", key)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}
