// Package app assembles the gateway: it is the one place where the
// concrete limiter, quota store, retry policy, metrics and proxy are
// wired together. cmd/gateway runs it behind its listeners and signals;
// the benchmarks in bench/ run the very same assembly in process.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/pprof"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/time/rate"

	"github.com/fusioo-gateway/gateway/internal/cache"
	"github.com/fusioo-gateway/gateway/internal/config"
	"github.com/fusioo-gateway/gateway/internal/fusioo"
	"github.com/fusioo-gateway/gateway/internal/limiter"
	"github.com/fusioo-gateway/gateway/internal/metrics"
	"github.com/fusioo-gateway/gateway/internal/proxy"
	"github.com/fusioo-gateway/gateway/internal/quota"
	"github.com/fusioo-gateway/gateway/internal/retry"
)

// NewLogger returns the zap logger log.level and log.format describe,
// writing to w.
func NewLogger(c config.Log, w io.Writer) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(c.Level)
	if err != nil {
		return nil, fmt.Errorf("log.level: %w", err)
	}
	ec := zap.NewProductionEncoderConfig()
	ec.EncodeTime = new(isoEncoder).encode
	var enc zapcore.Encoder
	if c.Format == "console" {
		enc = zapcore.NewConsoleEncoder(ec)
	} else {
		enc = zapcore.NewJSONEncoder(ec)
	}
	return zap.New(zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(w)), lvl)), nil
}

// leaseTime is redis.lease_time, but at most 1/300 of the quota window:
// leased slots are counted up to 2.5 lease times ahead (a refill's hold),
// so holding them costs less than 1% of the quota.
func leaseTime(cfg config.Config) time.Duration {
	return min(cfg.Redis.LeaseTime.Duration, cfg.Quota.Window.Duration/300)
}

// redisSettle is how long no slot is used after Redis lost all its data,
// for every replica holding counts to write them back first: a replica
// learns of the loss from its next take or within the fallback's probe
// tick (250 ms), and writes back in a few round trips.
const redisSettle = 2 * time.Second

// Gateway is the assembled gateway: the proxy handler, the admin handler
// and what runs behind them.
type Gateway struct {
	Config   config.Config
	Registry *prometheus.Registry
	Handler  *proxy.Handler
	Limiter  *limiter.Limiter

	log      *zap.Logger
	mem      *quota.MemoryStore
	fallback *quota.FallbackStore
	closers  []func() error
	ready    atomic.Bool
	health   func() (ok bool, detail string)
}

// New wires the concrete types for cfg. It does no I/O and starts nothing:
// Run does the background work. version labels fusioo_gateway_build_info.
func New(cfg config.Config, log *zap.Logger, version string) (*Gateway, error) {
	g := &Gateway{Config: cfg, log: log, Registry: prometheus.NewRegistry()}
	upstream, err := url.Parse(cfg.Upstream.URL)
	if err != nil {
		return nil, fmt.Errorf("upstream.url: %w", err)
	}
	routes, err := routeTable(cfg.Routes)
	if err != nil {
		return nil, err
	}
	responses, err := responseCache(cfg.Cache, routes)
	if err != nil {
		return nil, err
	}
	m := g.newMetrics(routes, version)
	store, err := g.newStore(cfg, m)
	if err != nil {
		return nil, err
	}
	g.Limiter = limiter.New(limiterConfig(cfg, store, m))
	base := upstreamTransport(cfg.Upstream)
	g.closers = append(g.closers, func() error { base.CloseIdleConnections(); return nil })
	g.Handler = proxy.New(proxy.Config{
		Upstream:         upstream,
		Transport:        retry.WithBodyTimeout(base, cfg.Upstream.BodyTimeout.Duration),
		Retry:            retry.New(retryConfig(cfg, routes, m)),
		Limiter:          g.Limiter,
		Routes:           routes,
		Identifier:       proxy.NewIdentifier([]byte(cfg.Quota.KeySecret)),
		Logger:           log.Named("access"),
		Observer:         m,
		MaxBodyBytes:     cfg.Server.MaxBodyBytes,
		MaxWait:          cfg.Queue.MaxWait.Duration,
		Limit:            cfg.Quota.Limit,
		Window:           cfg.Quota.Window.Duration,
		MaxPause:         cfg.Upstream.MaxPause.Duration,
		ForwardedHeaders: cfg.Upstream.ForwardedHeaders,
		BodyTimeout:      cfg.Server.BodyTimeout.Duration,
		// Headers go out at once, before a body the upstream may stall.
		FlushInterval:     100 * time.Millisecond,
		Cache:             responses,
		Coalesce:          cfg.Coalesce.Enabled,
		CoalesceMaxBuffer: cfg.Coalesce.MaxBufferBytes,
		CoalesceMaxTotal:  cfg.Coalesce.MaxTotalBytes,
		PolicyName:        cfg.Quota.PolicyName,
	})
	return g, nil
}

// routeTable is Fusioo's route table with the file's overrides.
func routeTable(overrides []config.Route) (*fusioo.Routes, error) {
	table := fusioo.DefaultRoutes()
	for _, r := range overrides {
		k, err := fusioo.ParseKind(r.Kind)
		if err != nil {
			return nil, fmt.Errorf("routes: %w", err)
		}
		table = append(table, fusioo.Route{Method: r.Method, Template: r.Template, Charged: r.Charged, Kind: k})
	}
	routes, err := fusioo.NewRoutes(table)
	if err != nil {
		return nil, fmt.Errorf("routes: %w", err)
	}
	return routes, nil
}

// responseCache is the [[cache]] entries' cache, nil without any; each
// must name a read route of the table.
func responseCache(entries []config.Cache, routes *fusioo.Routes) (*cache.Cache, error) {
	if len(entries) == 0 {
		return nil, nil
	}
	reads := map[string]bool{}
	for _, r := range routes.All() {
		if r.Kind == fusioo.KindRead && r.Template != "{unknown}" {
			reads[r.Name()] = true
		}
	}
	rules := map[string]cache.Rule{}
	var errs []error
	for i, e := range entries {
		method, tmpl, _ := strings.Cut(e.Route, " ")
		_, tmpl = fusioo.SplitVersion(tmpl)
		name := strings.ToUpper(method) + " " + tmpl
		if !reads[name] {
			errs = append(errs, fmt.Errorf("cache[%d].route: %q is not a read route of the route table", i, e.Route))
			continue
		}
		rules[name] = cache.Rule{TTL: e.TTL.Duration, MaxBytes: e.MaxBytes}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return cache.New(rules), nil
}

// newMetrics registers the process, build and gateway collectors on
// g.Registry, every bounded label value pre-initialised.
func (g *Gateway) newMetrics(routes *fusioo.Routes, version string) *metrics.Metrics {
	routeNames := make([]string, 0)
	for _, r := range routes.All() {
		routeNames = append(routeNames, r.Name())
	}
	g.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	g.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: metrics.Namespace, Name: "build_info",
		Help:        "Always 1; the labels say which build runs.",
		ConstLabels: prometheus.Labels{"version": version},
	}, func() float64 { return 1 }))
	return metrics.New(g.Registry, metrics.Options{
		Routes:           routeNames,
		RetryReasons:     retry.Reasons(),
		RejectReasons:    []string{limiter.ReasonQuota, limiter.ReasonBlocked, limiter.ReasonQueueFull, limiter.ReasonSmoothing, limiter.ReasonKeysFull},
		StoreOps:         quota.StoreOps,
		ClientStatuses:   []int{200, 400, 401, 404, 408, 413, 415, 429, 499, 503, 504},
		UpstreamStatuses: []int{200, 400, 401, 404, 429, 500, 503, 504},
	})
}

// newStore is the quota store cfg asks for (the Redis one behind its
// local fallback), and sets g's health and what Run and Close drive.
func (g *Gateway) newStore(cfg config.Config, m *metrics.Metrics) (quota.Store, error) {
	policy := quota.Policy{
		Limit:   cfg.Quota.Limit,
		Window:  cfg.Quota.Window.Duration,
		Margin:  cfg.QuotaMargin(),
		Buckets: cfg.Quota.Buckets,
		MaxKeys: cfg.Quota.MaxKeys,
	}
	if err := policy.Validate(); err != nil {
		return nil, fmt.Errorf("quota: %w", err)
	}
	if cfg.Quota.Store != "redis" {
		g.mem = quota.NewMemoryStore(policy, nil)
		g.health = func() (bool, string) { return true, "quota store: memory" }
		return g.mem, nil
	}
	ro := quota.RedisOptions{
		KeyPrefix:    cfg.Redis.KeyPrefix,
		Timeout:      cfg.Redis.Timeout.Duration,
		AutoPipeline: cfg.Redis.AutoPipeline,
		MaxHold:      3 * leaseTime(cfg), // a refill holds up to 2.5 lease times
		Settle:       redisSettle,
	}
	reject := cfg.Quota.OnStoreFailure == "reject"
	fo := quota.DefaultFallbackOptions()
	fo.Share, fo.Reject = cfg.Quota.FallbackShare, reject
	fo.Observer = storeObserver{m: m, log: g.log.Named("quota"), every: rate.NewLimiter(1, 3), suppressed: new(atomic.Int64)}
	if err := errors.Join(ro.Validate(), fo.Validate()); err != nil {
		return nil, fmt.Errorf("redis: %w", err)
	}
	client, err := quota.NewRedisClient(cfg.RedisClientOptions())
	if err != nil {
		return nil, fmt.Errorf("redis: %w", err)
	}
	g.closers = append(g.closers, client.Close)
	fb := quota.NewFallbackStore(quota.NewRedisStore(client, policy, ro), policy, fo)
	g.fallback = fb
	// A cold start waits for Redis's first answer, unless local counts
	// from the start were asked for explicitly.
	coldLocal := cfg.Quota.OnStoreFailure == "local"
	g.health = func() (bool, string) {
		status := "quota store: " + fb.Status()
		if !fb.Answered() && !coldLocal {
			return false, "quota store has not answered yet: " + status
		}
		if fb.Degraded() {
			// Degraded but serving from the local count is ready (and
			// says so); rejecting every request is not.
			return !reject, "degraded, " + status
		}
		return true, status
	}
	return fb, nil
}

// limiterConfig is the admission queue's configuration for cfg: the
// file's values as they are, the limiter's defaults for the rest.
func limiterConfig(cfg config.Config, store quota.Store, m *metrics.Metrics) limiter.Config {
	r, burst := cfg.SmoothingRate()
	lc := limiter.DefaultConfig()
	lc.Store = store
	lc.Rate, lc.Burst = rate.Limit(r), burst
	lc.AnonymousRate, lc.AnonymousBurst = rate.Limit(cfg.Smoothing.AnonymousRate), cfg.Smoothing.AnonymousBurst
	lc.MaxWait = cfg.Queue.MaxWait.Duration
	lc.Late = cfg.QuotaMargin() / 2
	lc.MaxDepth, lc.MaxQueued = cfg.Queue.MaxDepth, cfg.Queue.MaxQueued
	// Kept idle at least until the smoother has refilled, so a sweep
	// never hands a key a fresh burst early.
	lc.IdleAfter = max(lc.IdleAfter, lc.RefillTime())
	lc.MaxKeys = cfg.Quota.MaxKeys
	lc.Observer = m
	if cfg.Quota.Store == "redis" {
		// A lease saves round trips to a shared store; the memory store
		// costs no more per slot than a lease would.
		lc.Lease, lc.LeaseMax = leaseTime(cfg), cfg.Redis.LeaseMax
	}
	return lc
}

// retryConfig is the retry policy's configuration for cfg: the file's
// retry.* values as they are, the policy's defaults for what the file has
// no key for (ConcurrentDelay, BudgetMinRetries, BudgetWindow).
func retryConfig(cfg config.Config, routes *fusioo.Routes, m *metrics.Metrics) retry.Config {
	rc := retry.DefaultConfig()
	rc.Routes = routes
	rc.MaxAttempts = cfg.Retry.MaxAttempts
	rc.BaseDelay, rc.MaxDelay = cfg.Retry.BaseDelay.Duration, cfg.Retry.MaxDelay.Duration
	rc.BudgetRatio = cfg.Retry.BudgetRatio
	rc.MaxBodyBytes, rc.MaxBufferBytes = cfg.Retry.MaxBodyBytes, cfg.Retry.MaxBufferBytes
	rc.IdempotentWrites = cfg.Retry.IdempotentWrites
	rc.SerializeCooldown = cfg.Retry.SerializeCooldown.Duration
	rc.MaxRetryAfter = cfg.Quota.Window.Duration
	rc.Observer = m
	return rc
}

// upstreamTransport is the base transport of every upstream attempt: the
// file's upstream.* values, the base transport's defaults for the rest.
func upstreamTransport(u config.Upstream) *http.Transport {
	o := retry.DefaultBaseOptions()
	o.DialTimeout = u.DialTimeout.Duration
	o.TLSHandshakeTimeout = u.DialTimeout.Duration
	o.ResponseHeaderTimeout = u.Timeout.Duration
	o.MaxIdleConnsPerHost = u.MaxIdleConnsPerHost
	// HTTP/1.1 only: Go's HTTP/2 client re-sends a bodiless request of any
	// method on its own after a stream reset that may come after the
	// upstream processed it (a bodiless create twice).
	o.DisableHTTP2 = true
	return retry.NewBaseTransport(o)
}

// Admin returns the admin listener's handler: /metrics, /healthz, /readyz.
func (g *Gateway) Admin() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g.Registry, promhttp.HandlerOpts{Registry: g.Registry}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		ok, detail := g.health()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		switch {
		case !g.ready.Load():
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, "not ready: shutting down or starting\n")
		case !ok:
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, "not ready: "+detail+"\n")
		default:
			_, _ = io.WriteString(w, "ready: "+detail+"\n")
		}
	})
	if g.Config.Server.Pprof {
		// Profiles of the running process (server.pprof), on the admin
		// listener only: how the hot path is profiled under real load.
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// Run does the gateway's background work (idle-key sweeps, the Redis
// fallback's probes and write-backs, returning memory a burst left, the
// collector's heap floor) until ctx is done.
func (g *Gateway) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { _ = g.Limiter.Run(ctx, 5*time.Second) })
	floor := uint64(g.Config.Server.GCHeapFloor)
	wg.Go(func() { newMemoryRelease(floor).Run(ctx, 30*time.Second) })
	if floor > 0 {
		wg.Go(func() { newHeapFloor(floor).Run(ctx) })
	}
	if g.mem != nil {
		wg.Go(func() { _ = g.mem.Run(ctx, time.Minute) })
	}
	if g.fallback != nil {
		wg.Go(func() { _ = g.fallback.Run(ctx) })
	}
	wg.Wait()
}

// Sweep runs the idle-key sweeps now, as Run does every few seconds: for
// benchmarks that measure what idle keys cost.
func (g *Gateway) Sweep() {
	g.Limiter.Sweep()
	if g.mem != nil {
		g.mem.Sweep()
	}
}

// SetReady sets what /readyz answers: false while starting and draining.
func (g *Gateway) SetReady(ready bool) { g.ready.Store(ready) }

// Abort ends a shutdown's grace period: every request still queued or in
// flight is answered 503/10004.
func (g *Gateway) Abort() {
	g.Handler.Abort()
	g.Limiter.Close()
}

// Close releases connections (Redis, idle upstream connections), after
// the limiter's lease refills still in flight have ended. Call it after Run
// has returned.
func (g *Gateway) Close() {
	g.Limiter.Close()
	if g.fallback != nil {
		// Out of the heartbeats: the other replicas need not hold this
		// one's share back (bounded by redis.timeout).
		_ = g.fallback.Leave(context.Background())
	}
	for _, c := range g.closers {
		_ = c()
	}
}

// SetRedisLogger sends go-redis's own log lines (dial failures) to log at
// debug level. go-redis has one global logger, so this is process-wide.
func SetRedisLogger(log *zap.Logger) { redis.SetLogger(redisLogger{log}) }

// storeObserver exports the quota store's failures as metrics and logs the
// switches to and from the local fallback (once each, not per request).
type storeObserver struct {
	m          *metrics.Metrics
	log        *zap.Logger
	every      *rate.Limiter // of error lines
	suppressed *atomic.Int64 // error lines not written since the last one
}

// StoreError counts the failure and logs it with its reason, at most
// about once a second (a Redis that is down fails every call): the lines
// in between are counted in the next one's "suppressed".
func (o storeObserver) StoreError(op string, err error) {
	o.m.StoreError(op)
	if !o.every.Allow() {
		o.suppressed.Add(1)
		return
	}
	o.log.Warn("quota store call failed", zap.String("op", op), zap.Error(err), zap.Int64("suppressed", o.suppressed.Swap(0)))
}

func (o storeObserver) FallbackActive(active bool) {
	o.m.FallbackActive(active)
	if active {
		o.log.Warn("quota store unavailable: counting locally with a share of the limit until it answers again")
	} else {
		o.log.Info("quota store available again: local counts written back")
	}
}

// redisLogger sends go-redis's own log lines (dial failures) to zap.
type redisLogger struct{ log *zap.Logger }

func (l redisLogger) Printf(_ context.Context, format string, v ...any) {
	l.log.Debug(fmt.Sprintf(format, v...))
}
