package harness

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fusioo-gateway/gateway/internal/fusioosim"
	"github.com/fusioo-gateway/gateway/internal/testutil/faultproxy"
	"github.com/fusioo-gateway/gateway/internal/testutil/redistest"
)

// QuotaOptions configure the quota-efficiency run (issue 12's): Replicas
// gateways on one Redis in front of a simulator enforcing a strict rolling
// window of Limit per Window per token, Tokens tokens, clients asking
// Demand times the quota (a constant arrival rate, every token sent to
// every replica in turn) for Duration.
type QuotaOptions struct {
	Replicas int           // default 3
	Tokens   int           // default 5
	Limit    int           // default 60
	Window   time.Duration // default 10s
	Demand   float64       // default 3
	Duration time.Duration // default 40s
	// MaxWait is the gateways' queue.max_wait (default 5s); Margin and
	// Buckets their quota.margin (default 100ms) and quota.buckets (0:
	// the gateway's default).
	MaxWait time.Duration
	Margin  time.Duration
	Buckets int
	// DeriveMargin leaves quota.margin out of the gateways' file (the
	// gateway derives it from the window); Memory runs one gateway on the
	// memory store instead of Replicas on Redis: together, a file that
	// sets only the quota.
	DeriveMargin, Memory bool
	// Target is the quota use the run must reach (default QuotaUseTarget).
	Target float64
	// Env is added to every gateway's environment (FUSIOO_GATEWAY_*=…).
	Env []string
	// Faults happen during the run, each At after the load starts. With
	// faults, the quota use and refusal-speed criteria are reported, not
	// judged: a fault may send replicas to their local share.
	Faults []QuotaFault
	// ViaProxy connects each replica to Redis through a fault proxy of its
	// own (QuotaTargets.Proxies), so a fault can cut off one replica.
	ViaProxy bool
	// Topology is "" (one redis-server), "cluster" (3 masters with a
	// replica each) or "sentinel" (a master, a replica, three sentinels).
	Topology string
	Out      io.Writer
}

// QuotaFault is something done to the run's Redis or proxies.
type QuotaFault struct {
	At   time.Duration
	Name string
	Do   func(QuotaTargets) error
}

// QuotaTargets is what a fault can act on.
type QuotaTargets struct {
	Redis    *Redis
	Proxies  []*faultproxy.Proxy // one per replica, with ViaProxy
	Cluster  *redistest.Cluster
	Sentinel *redistest.Sentinel
	// Note records when something happened (QuotaReport.Notes).
	Note func(what string, at time.Time)
}

// TokenSlot is the Redis Cluster hash slot of token's quota key (as the
// gateway names it without quota.key_secret).
func TokenSlot(c *redistest.Cluster, token string) (int, error) {
	sum := sha256.Sum256([]byte(token))
	out, err := redistest.Command(c.Nodes[0].Addr(), "CLUSTER", "KEYSLOT", hex.EncodeToString(sum[:]))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(out)
}

// shardOf is token tok's slot and the master serving it.
func shardOf(c *redistest.Cluster, tok int) (int, *redistest.Server, error) {
	slot, err := TokenSlot(c, Token(tok))
	if err != nil {
		return 0, nil, err
	}
	m := c.MasterOf(slot)
	if m == nil {
		return 0, nil, fmt.Errorf("no master for slot %d", slot)
	}
	return slot, m, nil
}

// KillShardOf is a fault: kill -9 of the Cluster master serving token
// tok's key, then it waits for the replica's promotion (noted "killed",
// "promoted").
func KillShardOf(tok int) func(QuotaTargets) error {
	return func(t QuotaTargets) error {
		slot, m, err := shardOf(t.Cluster, tok)
		if err != nil {
			return err
		}
		for other := range 64 {
			if s, err := TokenSlot(t.Cluster, Token(other)); err == nil && t.Cluster.MasterOf(s) == m {
				t.Note(fmt.Sprintf("shard token %d", other), time.Now())
			}
		}
		m.Kill()
		t.Note("killed", time.Now())
		return waitUntil(30*time.Second, func() bool {
			n := t.Cluster.MasterOf(slot)
			return n != nil && n != m
		}, func() { t.Note("promoted", time.Now()) })
	}
}

// FailoverShardOf is a fault: a graceful CLUSTER FAILOVER, on its replica,
// of the master serving token tok's key (noted "promoted" when done).
func FailoverShardOf(tok int) func(QuotaTargets) error {
	return func(t QuotaTargets) error {
		slot, m, err := shardOf(t.Cluster, tok)
		if err != nil {
			return err
		}
		id, err := redistest.Command(m.Addr(), "CLUSTER", "MYID")
		if err != nil {
			return err
		}
		reps, err := redistest.Command(m.Addr(), "CLUSTER", "REPLICAS", id)
		if err != nil {
			return err
		}
		f := strings.Fields(reps)
		if len(f) < 2 {
			return fmt.Errorf("master %s has no replica: %q", m.Addr(), reps)
		}
		replica, _, _ := strings.Cut(f[1], "@")
		if _, err := redistest.Command(replica, "CLUSTER", "FAILOVER"); err != nil {
			return err
		}
		t.Note("killed", time.Now()) // the failover started
		return waitUntil(30*time.Second, func() bool {
			n := t.Cluster.MasterOf(slot)
			return n != nil && n != m
		}, func() { t.Note("promoted", time.Now()) })
	}
}

// ReshardSlotOf is a fault: token tok's slot moves, keys and all, to
// another master (IMPORTING / MIGRATING, MIGRATE, SETSLOT NODE), as a
// reshard does it, under load.
func ReshardSlotOf(tok int) func(QuotaTargets) error {
	return func(t QuotaTargets) error {
		c := t.Cluster
		slot, err := TokenSlot(c, Token(tok))
		if err != nil {
			return err
		}
		src := c.MasterOf(slot)
		var dst *redistest.Server
		for _, n := range c.Nodes {
			if n != src && n.Pid() > 0 {
				if repl, err := redistest.Command(n.Addr(), "INFO", "replication"); err == nil && strings.Contains(repl, "role:master") {
					dst = n
					break
				}
			}
		}
		if src == nil || dst == nil {
			return fmt.Errorf("no source or destination for slot %d", slot)
		}
		srcID, err1 := redistest.Command(src.Addr(), "CLUSTER", "MYID")
		dstID, err2 := redistest.Command(dst.Addr(), "CLUSTER", "MYID")
		if err := errors.Join(err1, err2); err != nil {
			return err
		}
		s := strconv.Itoa(slot)
		steps := [][]string{{dst.Addr(), "CLUSTER", "SETSLOT", s, "IMPORTING", srcID}, {src.Addr(), "CLUSTER", "SETSLOT", s, "MIGRATING", dstID}}
		for _, st := range steps {
			if _, err := redistest.Command(st[0], st[1:]...); err != nil {
				return fmt.Errorf("%v: %w", st[1:], err)
			}
		}
		t.Note("killed", time.Now()) // the move started
		keys, err := redistest.Command(src.Addr(), "CLUSTER", "GETKEYSINSLOT", s, "1000")
		if err != nil {
			return err
		}
		host, port, _ := net.SplitHostPort(dst.Addr())
		for _, k := range strings.Fields(keys) {
			if _, err := redistest.Command(src.Addr(), "MIGRATE", host, port, k, "0", "5000", "REPLACE"); err != nil && !strings.Contains(err.Error(), "NOKEY") {
				return fmt.Errorf("migrate %s: %w", k, err)
			}
		}
		for _, n := range c.Nodes {
			if n.Pid() > 0 {
				if repl, err := redistest.Command(n.Addr(), "INFO", "replication"); err == nil && strings.Contains(repl, "role:master") {
					if _, err := redistest.Command(n.Addr(), "CLUSTER", "SETSLOT", s, "NODE", dstID); err != nil {
						return fmt.Errorf("setslot node on %s: %w", n.Addr(), err)
					}
				}
			}
		}
		t.Note("promoted", time.Now()) // the move is done
		return nil
	}
}

// KillSentinelMaster is a fault: kill -9 of the Sentinel-managed master,
// then it waits for the sentinels to promote the replica.
func KillSentinelMaster(t QuotaTargets) error {
	t.Sentinel.Master.Kill()
	t.Note("killed", time.Now())
	return waitUntil(30*time.Second, func() bool {
		a, err := t.Sentinel.MasterAddr()
		return err == nil && a == t.Sentinel.Replica.Addr()
	}, func() { t.Note("promoted", time.Now()) })
}

func waitUntil(timeout time.Duration, cond func() bool, then func()) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %s", timeout)
		}
		time.Sleep(20 * time.Millisecond) // polling the topology's observable state
	}
	then()
	return nil
}

// ShardTokens splits the first n tokens into those a KillShardOf fault
// found on the killed master and the others (all are "on" when the fault
// noted none: a single master failed for every token).
func (r *QuotaReport) ShardTokens(n int) (on, off []int) {
	noted := false
	for k := range r.Notes {
		noted = noted || strings.HasPrefix(k, "shard token ")
	}
	for tok := range n {
		if _, ok := r.Notes[fmt.Sprintf("shard token %d", tok)]; ok || !noted {
			on = append(on, tok)
		} else {
			off = append(off, tok)
		}
	}
	return on, off
}

// SlowAnswers counts the requests for tokens sent in [from, to) that took
// longer than FastRefusal to be refused: they waited for the store.
func (r *QuotaReport) SlowAnswers(tokens []int, from, to time.Time) (slow, all int) {
	want := map[string]bool{}
	for _, t := range tokens {
		want[strconv.Itoa(t)] = true
	}
	for _, s := range r.Samples {
		_, tok, _ := strings.Cut(s.Tag, "/")
		if !want[tok] || s.Sent.Before(from) || !s.Sent.Before(to) || s.Status != http.StatusTooManyRequests {
			continue
		}
		all++
		if s.Start.Add(s.Latency).Sub(s.Sent) > FastRefusal {
			slow++
		}
	}
	return slow, all
}

// RecoveredAfter is how long after since the first request for one of
// tokens sent after since got an answer within FastRefusal (decided by
// Redis again, not waiting for it); ok false when none did.
func (r *QuotaReport) RecoveredAfter(tokens []int, since time.Time) (time.Duration, bool) {
	want := map[string]bool{}
	for _, t := range tokens {
		want[strconv.Itoa(t)] = true
	}
	var first time.Time
	for _, s := range r.Samples {
		_, tok, _ := strings.Cut(s.Tag, "/")
		if !want[tok] || s.Sent.Before(since) || s.Err != nil || s.Start.Add(s.Latency).Sub(s.Sent) > FastRefusal {
			continue
		}
		if end := s.Start.Add(s.Latency); first.IsZero() || end.Before(first) {
			first = end
		}
	}
	return first.Sub(since), !first.IsZero()
}

// FlushRedis is a fault: Redis loses every key and its script cache
// (FLUSHALL, SCRIPT FLUSH), as an operator or a failover to an empty
// replica would make it.
func FlushRedis(t QuotaTargets) error {
	for _, cmd := range []string{"FLUSHALL", "SCRIPT FLUSH"} {
		if _, err := Command(t.Redis.Addr(), strings.Fields(cmd)...); err != nil {
			return err
		}
	}
	return nil
}

// DataLoss is a scenario of the fleet run in which Redis loses its data.
type DataLoss struct {
	Name   string
	Faults []QuotaFault
}

// DataLosses are issue 13's data-loss scenarios, for a 20 s fleet run:
// FLUSHALL + SCRIPT FLUSH twice, and kill -9 with an empty restart.
var DataLosses = []DataLoss{
	{"flush twice", []QuotaFault{{7 * time.Second, "FLUSHALL + SCRIPT FLUSH", FlushRedis}, {14 * time.Second, "FLUSHALL + SCRIPT FLUSH", FlushRedis}}},
	{"kill -9 and empty restart", []QuotaFault{{10 * time.Second, "kill -9, empty restart", RestartRedis}}},
}

// CutOff returns faults that blackhole replica i from Redis (its proxy
// stops forwarding without closing the sockets) at from, and restore it at
// to: a partitioned pod, or one whose calls time out under CPU load.
func CutOff(i int, from, to time.Duration) []QuotaFault {
	return []QuotaFault{
		{from, fmt.Sprintf("replica %d cut off from Redis", i+1), func(t QuotaTargets) error { t.Proxies[i].Pause(); return nil }},
		{to, fmt.Sprintf("replica %d back", i+1), func(t QuotaTargets) error { t.Proxies[i].Resume(); return nil }},
	}
}

// RestartRedis is a fault: kill -9, then an empty restart on the same port.
func RestartRedis(t QuotaTargets) error {
	t.Redis.Kill()
	return t.Redis.Restart()
}

func (o *QuotaOptions) defaults() {
	if o.Replicas <= 0 {
		o.Replicas = 3
	}
	if o.Tokens <= 0 {
		o.Tokens = 5
	}
	if o.Limit <= 0 {
		o.Limit = 60
	}
	if o.Window <= 0 {
		o.Window = 10 * time.Second
	}
	if o.Demand <= 0 {
		o.Demand = 3
	}
	if o.Duration <= 0 {
		o.Duration = 40 * time.Second
	}
	if o.MaxWait <= 0 {
		o.MaxWait = 5 * time.Second
	}
	if o.Margin <= 0 && !o.DeriveMargin {
		o.Margin = 100 * time.Millisecond
	}
	if o.Memory {
		o.Replicas = 1
	}
	if o.Target <= 0 {
		o.Target = QuotaUseTarget
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
}

// QuotaGatewayConfig is a replica's configuration in the quota run: the
// Redis store unless memory, margin and buckets left to the gateway when 0.
// Smoothing is the gateway's default.
func QuotaGatewayConfig(limit int, window, margin time.Duration, buckets int, maxWait time.Duration, memory bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# generated by bench/harness: quota-efficiency run\n[server]\nshutdown_timeout = \"2s\"\n[quota]\nlimit = %d\nwindow = %q\n", limit, window.String())
	if margin > 0 {
		fmt.Fprintf(&b, "margin = %q\n", margin.String())
	}
	if buckets > 0 {
		fmt.Fprintf(&b, "buckets = %d\n", buckets)
	}
	if !memory {
		b.WriteString("store = \"redis\"\nfallback_share = 0.3\n")
	}
	fmt.Fprintf(&b, "[queue]\nmax_wait = %q\n[log]\nlevel = \"warn\"\n", maxWait.String())
	return b.String()
}

// Figures of the quota run's criteria.
const (
	QuotaUseTarget     = 0.97                   // of the quota, mean over rolling windows at the simulator
	FastRefusal        = 100 * time.Millisecond // a 429 answered within this is "at once"
	FastRefusalsTarget = 0.98                   // share of 429s answered at once
	// AnswerAllowance is what a 200 may take beyond max_wait: the
	// upstream's own answer and the client's read, after the gateway sent
	// the request by max_wait.
	AnswerAllowance = 250 * time.Millisecond
)

// QuotaReport is what the quota run measured.
type QuotaReport struct {
	Requests, OK, Limited, Other, Errors int
	// OtherSeen describes the first of the Other answers: status/code, when
	// (from the run's start), which replica/token, and how long it took.
	OtherSeen []string
	// LimitedRA counts the 429s with code 20005 and a Retry-After >= 1.
	LimitedRA int
	// Upstream20005 is what the simulator answered over its quota, and
	// MaxInWindow the most charged requests it saw in one rolling window.
	Upstream20005, MaxInWindow int
	// QuotaUse is the mean over every rolling window inside the run, at
	// the simulator, of the charged requests it holds, divided by the
	// limit: all tokens, and the lowest token.
	QuotaUse, MinQuotaUse float64
	// FastRefusals is the share of 429s answered within FastRefusal, and
	// RefusalWait the client time all 429s took in total.
	FastRefusals float64
	RefusalWait  time.Duration
	// OKByReplica counts the 200s each replica answered.
	OKByReplica []int
	// Notes are when the faults' events happened ("killed", "promoted").
	Notes map[string]time.Time
	// Samples are the requests' outcomes, tagged "replica/token".
	Samples []Sample
	// MaxOK is the longest a 200 took from when it was sent; LateOK counts
	// those that took longer than max_wait + AnswerAllowance.
	MaxOK  time.Duration
	LateOK int
	Verdicts
}

// RunQuota runs the quota-efficiency scenario, prints its figures and
// returns them with the verdicts: no upstream 20005, quota used >=
// QuotaUseTarget, refusals at once, no 200 later than max_wait.
func RunQuota(ctx context.Context, l Launcher, o QuotaOptions) (*QuotaReport, error) {
	o.defaults()
	w := o.Out
	var cleanup []func()
	defer func() {
		for i := len(cleanup) - 1; i >= 0; i-- {
			cleanup[i]()
		}
	}()
	sim, err := l.Sim(SimOptions{Limit: o.Limit, Window: o.Window, History: true})
	if err != nil {
		return nil, err
	}
	cleanup = append(cleanup, sim.Stop)
	env := append([]string{"FUSIOO_GATEWAY_UPSTREAM_URL=" + sim.URL}, o.Env...)
	store := "the memory store"
	var rs *Redis
	var (
		cluster  *redistest.Cluster
		sentinel *redistest.Sentinel
	)
	switch {
	case o.Memory:
	case o.Topology == "cluster":
		if cluster, err = redistest.LaunchCluster(filepath.Join(l.LogDir(), "cluster"), 3); err != nil {
			return nil, err
		}
		cleanup = append(cleanup, cluster.Stop)
		env = append(env, "FUSIOO_GATEWAY_REDIS_CLUSTER_ADDRS="+strings.Join(cluster.Addrs(), ","))
		store = "a Redis Cluster (3 masters, 3 replicas)"
	case o.Topology == "sentinel":
		if sentinel, err = redistest.LaunchSentinel(filepath.Join(l.LogDir(), "sentinel")); err != nil {
			return nil, err
		}
		cleanup = append(cleanup, sentinel.Stop)
		env = append(env, "FUSIOO_GATEWAY_REDIS_SENTINEL_MASTER="+sentinel.Name,
			"FUSIOO_GATEWAY_REDIS_SENTINEL_ADDRS="+strings.Join(sentinel.Addrs(), ","))
		store = "a Sentinel-managed Redis (master, replica, 3 sentinels)"
	default:
		rs, err = StartRedis(l.LogDir())
		if err != nil {
			return nil, err
		}
		cleanup = append(cleanup, rs.Stop)
		env = append(env, "FUSIOO_GATEWAY_REDIS_URL="+rs.URL())
		store = "one Redis"
	}
	var (
		gws     []*Service
		targets QuotaTargets
	)
	if !o.Memory {
		targets.Redis = rs
	}
	r := &QuotaReport{Notes: map[string]time.Time{}}
	var notesMu sync.Mutex
	targets.Cluster, targets.Sentinel = cluster, sentinel
	targets.Note = func(what string, at time.Time) {
		notesMu.Lock()
		r.Notes[what] = at
		notesMu.Unlock()
	}
	for i := range o.Replicas {
		genv := env
		if o.ViaProxy && rs != nil {
			px, err := faultproxy.New(rs.Addr())
			if err != nil {
				return nil, err
			}
			cleanup = append(cleanup, px.Close)
			targets.Proxies = append(targets.Proxies, px)
			genv = append(append([]string(nil), env...), "FUSIOO_GATEWAY_REDIS_URL=redis://"+px.Addr()+"/0")
		}
		g, err := l.Gateway(fmt.Sprintf("gateway-%d", i+1), QuotaGatewayConfig(o.Limit, o.Window, o.Margin, o.Buckets, o.MaxWait, o.Memory), genv)
		if err != nil {
			return nil, err
		}
		cleanup = append(cleanup, g.Stop)
		gws = append(gws, g)
	}
	rate := o.Demand * float64(o.Tokens*o.Limit) / o.Window.Seconds()
	fmt.Fprintf(w, "%d gateways on %s; simulator: rolling %d per %s per token; %d tokens, each sent to every gateway; demand %.1fx the quota (%.0f req/s) for %s\n",
		o.Replicas, store, o.Limit, o.Window, o.Tokens, o.Demand, rate, o.Duration)
	buckets, margin := "default", "derived"
	if o.Buckets > 0 {
		buckets = strconv.Itoa(o.Buckets)
	}
	if o.Margin > 0 {
		margin = o.Margin.String()
	}
	fmt.Fprintf(w, "gateways: quota.margin %s, quota.buckets %s, queue.max_wait %s, default smoothing %s\n", margin, buckets, o.MaxWait, strings.Join(o.Env, " "))

	client := NewClient(1024)
	defer client.CloseIdleConnections()
	build := func(ctx context.Context, i int) (*http.Request, string) {
		tok, rep := i%o.Tokens, (i/o.Tokens)%len(gws)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, gws[rep].URL+"/v3/records/apps/app1/count", nil)
		req.Header.Set("Authorization", "Bearer "+Token(tok))
		return req, fmt.Sprintf("%d/%d", rep, tok)
	}
	start := time.Now()
	var run *Run
	loaded := make(chan struct{})
	go func() {
		defer close(loaded)
		run = RunRate(ctx, client, build, RateOptions{Rate: rate, Duration: o.Duration, Timeout: o.MaxWait + 10*time.Second})
	}()
	var faultErr error
	for _, f := range o.Faults {
		sleepUntil(ctx, start.Add(f.At))
		err := f.Do(targets)
		fmt.Fprintf(w, "  %5.1fs %s: %s\n", time.Since(start).Seconds(), f.Name, errOrOK(err))
		faultErr = errors.Join(faultErr, err)
	}
	<-loaded
	end := start.Add(o.Duration)
	if faultErr != nil {
		return nil, faultErr
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}

	led, err := SimLedger(ctx, sim.URL)
	if err != nil {
		return nil, err
	}
	hist, err := SimHistory(ctx, sim.URL)
	if err != nil {
		return nil, err
	}
	var pages []Metrics
	for _, g := range gws {
		m, err := FetchMetrics(ctx, g.AdminURL)
		if err != nil {
			return nil, err
		}
		pages = append(pages, m)
	}
	m := Merge(pages...)

	r.Requests, r.Upstream20005, r.MaxInWindow, r.Samples = len(run.Samples), led.OverQuota, led.MaxInWindow, run.Samples
	var limitedLat, okLat []time.Duration
	fast := 0
	for _, s := range run.Samples {
		switch {
		case s.Err != nil:
			r.Errors++
		case s.Status == http.StatusOK:
			r.OK++
			if rep, err := strconv.Atoi(strings.Split(s.Tag, "/")[0]); err == nil {
				if r.OKByReplica == nil {
					r.OKByReplica = make([]int, len(gws))
				}
				r.OKByReplica[rep]++
			}
			okLat = append(okLat, s.Latency)
			// From when the request was sent: the gateway's wait, not the
			// load generator's lag on a loaded machine.
			fromSent := s.Start.Add(s.Latency).Sub(s.Sent)
			r.MaxOK = max(r.MaxOK, fromSent)
			if fromSent > o.MaxWait+AnswerAllowance {
				r.LateOK++
			}
		case s.Status == http.StatusTooManyRequests:
			r.Limited++
			limitedLat = append(limitedLat, s.Latency)
			r.RefusalWait += s.Latency
			if s.Latency < FastRefusal {
				fast++
			}
			if n, err := strconv.Atoi(s.RetryAfter); err == nil && n >= 1 && s.Code == 20005 {
				r.LimitedRA++
			}
		default:
			r.Other++
			if len(r.OtherSeen) < 10 {
				r.OtherSeen = append(r.OtherSeen, fmt.Sprintf("%d/%d at %.1fs via %s (%s)", s.Status, s.Code, s.Start.Sub(start).Seconds(), s.Tag, s.Latency.Round(time.Millisecond)))
			}
		}
	}
	if r.Limited > 0 {
		r.FastRefusals = float64(fast) / float64(r.Limited)
	}
	tb := Table{Header: []string{"token", "charged upstream", "quota used (simulator)"}}
	var useSum float64
	r.MinQuotaUse = math.Inf(1)
	for t := range o.Tokens {
		charged := hist[SimScope(Token(t))]
		use := fusioosim.QuotaUse(charged, start, end, o.Window, o.Limit)
		useSum += use
		r.MinQuotaUse = math.Min(r.MinQuotaUse, use)
		tb.Add(strconv.Itoa(t), strconv.Itoa(len(charged)), fmt.Sprintf("%.1f%%", 100*use))
	}
	r.QuotaUse = useSum / float64(o.Tokens)
	tb.Rows = append(tb.Rows, []string{"all", strconv.Itoa(led.Charged), fmt.Sprintf("%.1f%%", 100*r.QuotaUse)})
	fmt.Fprintln(w)
	tb.Write(w)
	fmt.Fprintf(w, "\nrequests %d: 200 %d (by replica %v), 429 %d (with Retry-After and code 20005: %d), other %d, transport errors %d\n",
		r.Requests, r.OK, r.OKByReplica, r.Limited, r.LimitedRA, r.Other, r.Errors)
	if len(r.OtherSeen) > 0 {
		fmt.Fprintf(w, "other answers: %s\n", strings.Join(r.OtherSeen, "; "))
	}
	fmt.Fprintf(w, "simulator: charged %d, over quota (20005) %d, most in one rolling window %d (limit %d)\n",
		led.Charged, led.OverQuota, led.MaxInWindow, o.Limit)
	up20005 := m.Sum("fusioo_gateway_upstream_responses_total", "code", "20005")
	fmt.Fprintf(w, "gateways: upstream 20005 answers %.0f, rejections %.0f (quota %.0f, queue_full %.0f), store errors %.0f\n",
		up20005, m.Sum("fusioo_gateway_quota_rejections_total"),
		m.Sum("fusioo_gateway_quota_rejections_total", "reason", "quota"), m.Sum("fusioo_gateway_quota_rejections_total", "reason", "queue_full"),
		m.Sum("fusioo_gateway_store_errors_total"))
	lq := Percentiles(limitedLat, 0.5, 0.9, 0.99, 1)
	fmt.Fprintf(w, "client 429s: %.1f%% answered within %s; p50 %s p90 %s p99 %s max %s; %.0f client-seconds spent waiting for a refusal (%.1f waiting at any moment)\n",
		100*r.FastRefusals, FastRefusal, Ms(lq[0]), Ms(lq[1]), Ms(lq[2]), Ms(lq[3]), r.RefusalWait.Seconds(), r.RefusalWait.Seconds()/o.Duration.Seconds())
	p := Percentiles(okLat, 0.5, 0.9, 0.99, 1)
	fmt.Fprintf(w, "client 200s (queue wait included): p50 %s p90 %s p99 %s max %s; %d later than max_wait + %s\n\n",
		Ms(p[0]), Ms(p[1]), Ms(p[2]), Ms(p[3]), r.LateOK, AnswerAllowance)

	v := &r.Verdicts
	judged := len(o.Faults) == 0
	v.Check(fmt.Sprintf("quota used >= %.0f%% (mean over rolling windows at the simulator, all tokens)", 100*o.Target),
		r.QuotaUse >= o.Target || !judged, "%.1f%% (lowest token %.1f%%)%s", 100*r.QuotaUse, 100*r.MinQuotaUse, notJudged(judged))
	v.Check("upstream 20005 seen = 0", led.OverQuota == 0 && up20005 == 0, "simulator %d, gateways %.0f", led.OverQuota, up20005)
	v.Check("no rolling window over the limit", led.MaxInWindow <= o.Limit, "max %d in one window, limit %d", led.MaxInWindow, o.Limit)
	v.Check("demand exceeded the quota (client 429s)", r.Limited > 0, "%d", r.Limited)
	v.Check(fmt.Sprintf(">= %.0f%% of 429s answered within %s", 100*FastRefusalsTarget, FastRefusal), r.FastRefusals >= FastRefusalsTarget || !judged,
		"%.1f%%%s", 100*r.FastRefusals, notJudged(judged))
	v.Check("every client 429 is 20005 with Retry-After >= 1", r.LimitedRA == r.Limited, "%d of %d", r.LimitedRA, r.Limited)
	v.Check("no 200 later than max_wait after it was sent", r.LateOK == 0, "max %s (max_wait %s + %s for the answer)", Ms(r.MaxOK), o.MaxWait, AnswerAllowance)
	v.Check("no other failure", r.Other == 0 && r.Errors == 0, "%d other statuses, %d transport errors", r.Other, r.Errors)
	v.Write(w, "quota")
	return r, nil
}

func notJudged(judged bool) string {
	if judged {
		return ""
	}
	return " (reported, not judged: faults)"
}
