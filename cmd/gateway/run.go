package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"runtime/debug"
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

	"github.com/fusioo-gateway/gateway/internal/config"
	"github.com/fusioo-gateway/gateway/internal/fusioo"
	"github.com/fusioo-gateway/gateway/internal/limiter"
	"github.com/fusioo-gateway/gateway/internal/metrics"
	"github.com/fusioo-gateway/gateway/internal/proxy"
	"github.com/fusioo-gateway/gateway/internal/retry"
)

// started reports the addresses the gateway listens on; tests use it.
type started struct {
	Addr, AdminAddr string
}

// run is the whole program, testable: it returns the exit code. ready, if
// not nil, receives the listen addresses once both listeners are up.
func run(ctx context.Context, args, env []string, stdout, stderr io.Writer, ready chan<- started) int {
	fs := flag.NewFlagSet("gateway", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "path to the TOML configuration file (see config.example.toml)")
	showVersion := fs.Bool("version", false, "print the version and exit")
	checkOnly := fs.Bool("check", false, "validate the configuration and exit")
	probe := fs.String("probe", "", "GET this URL (e.g. http://127.0.0.1:9090/healthz) and exit 0 if it answers 200: a HEALTHCHECK for images without a shell")
	if err := fs.Parse(args); err != nil {
		return exitConfig
	}
	if *probe != "" {
		return probeURL(*probe, stderr)
	}
	if *showVersion {
		printf(stdout, "fusioo-gateway %s\n", buildVersion())
		return exitOK
	}
	if *cfgPath == "" {
		printf(stderr, "gateway: -config is required (try -config config.example.toml)\n")
		return exitConfig
	}
	cfg, err := config.Load(*cfgPath, env)
	if err != nil {
		printf(stderr, "gateway: invalid configuration %s:\n", *cfgPath)
		var errs config.Errors
		if errors.As(err, &errs) {
			for _, e := range errs {
				printf(stderr, "  - %v\n", e)
			}
		} else {
			printf(stderr, "  - %v\n", err)
		}
		return exitConfig
	}
	if *checkOnly {
		printf(stdout, "configuration %s is valid\n", *cfgPath)
		return exitOK
	}
	log, err := newLogger(cfg.Log, stderr)
	if err != nil {
		printf(stderr, "gateway: %v\n", err)
		return exitConfig
	}
	defer func() { _ = log.Sync() }()
	if err := serve(ctx, cfg, log, ready); err != nil {
		log.Error("gateway stopped", zap.Error(err))
		return exitFailed
	}
	return exitOK
}

// probeURL is the container health check: one GET with a short timeout.
func probeURL(u string, stderr io.Writer) int {
	c := &http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get(u)
	if err != nil {
		printf(stderr, "probe %s: %v\n", u, err)
		return exitFailed
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		printf(stderr, "probe %s: %s\n", u, resp.Status)
		return exitFailed
	}
	return exitOK
}

func buildVersion() string {
	if version != "dev" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return version
}

func newLogger(c config.Log, w io.Writer) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(c.Level)
	if err != nil {
		return nil, fmt.Errorf("log.level: %w", err)
	}
	ec := zap.NewProductionEncoderConfig()
	ec.EncodeTime = zapcore.ISO8601TimeEncoder
	var enc zapcore.Encoder
	if c.Format == "console" {
		enc = zapcore.NewConsoleEncoder(ec)
	} else {
		enc = zapcore.NewJSONEncoder(ec)
	}
	return zap.New(zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(w)), lvl)), nil
}

// gateway is everything serve wires together.
type gateway struct {
	cfg      config.Config
	log      *zap.Logger
	reg      *prometheus.Registry
	handler  *proxy.Handler
	lim      *limiter.Limiter
	store    limiter.Store
	mem      *limiter.MemoryStore
	fallback *limiter.FallbackStore
	closers  []func() error
	ready    atomic.Bool
	health   func() (ok bool, detail string)
}

// build wires the concrete types. It does no I/O.
func build(cfg config.Config, log *zap.Logger) (*gateway, error) {
	g := &gateway{cfg: cfg, log: log, reg: prometheus.NewRegistry()}
	upstream, err := url.Parse(cfg.Upstream.URL)
	if err != nil {
		return nil, fmt.Errorf("upstream.url: %w", err)
	}
	table := fusioo.DefaultRoutes()
	for _, r := range cfg.Routes {
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
	routeNames := make([]string, 0)
	for _, r := range routes.All() {
		routeNames = append(routeNames, r.Name())
	}

	g.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	g.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: metrics.Namespace, Name: "build_info",
		Help:        "Always 1; the labels say which build runs.",
		ConstLabels: prometheus.Labels{"version": buildVersion()},
	}, func() float64 { return 1 }))
	m := metrics.New(g.reg, metrics.Options{
		Routes:           routeNames,
		RetryReasons:     retry.Reasons(),
		RejectReasons:    []string{limiter.ReasonQuota, limiter.ReasonBlocked, limiter.ReasonQueueFull, limiter.ReasonSmoothing},
		StoreOps:         limiter.StoreOps,
		ClientStatuses:   []int{200, 400, 404, 413, 429, 499, 503, 504},
		UpstreamStatuses: []int{200, 400, 401, 404, 429, 500, 503, 504},
	})

	policy := limiter.Policy{
		Limit:   cfg.Quota.Limit,
		Window:  cfg.Quota.Window.Duration,
		Margin:  cfg.Quota.Margin.Duration,
		Buckets: cfg.Quota.Buckets,
	}
	switch cfg.Quota.Store {
	case "memory":
		g.mem = limiter.NewMemoryStore(policy, nil)
		g.store = g.mem
		g.health = func() (bool, string) { return true, "quota store: memory" }
	case "redis":
		client, err := limiter.NewRedisClient(limiter.RedisClientOptions{
			URL:              cfg.Redis.URL,
			SentinelMaster:   cfg.Redis.SentinelMaster,
			SentinelAddrs:    cfg.Redis.SentinelAddrs,
			SentinelPassword: cfg.Redis.SentinelPassword,
			ClusterAddrs:     cfg.Redis.ClusterAddrs,
			Username:         cfg.Redis.Username,
			Password:         cfg.Redis.Password,
			TLS:              cfg.Redis.TLS,
			PoolSize:         cfg.Redis.PoolSize,
			Timeout:          cfg.Redis.Timeout.Duration,
		})
		if err != nil {
			return nil, fmt.Errorf("redis: %w", err)
		}
		g.closers = append(g.closers, client.Close)
		primary := limiter.NewRedisStore(client, policy, limiter.RedisOptions{
			KeyPrefix: cfg.Redis.KeyPrefix,
			Timeout:   cfg.Redis.Timeout.Duration,
		})
		reject := cfg.Quota.OnStoreFailure == "reject"
		fb := limiter.NewFallbackStore(primary, policy, limiter.FallbackOptions{
			Share:    cfg.Quota.FallbackShare,
			Reject:   reject,
			Observer: storeObserver{m: m, log: log.Named("quota")},
		})
		g.store, g.fallback = fb, fb
		g.health = func() (bool, string) {
			status := "quota store: " + fb.Status()
			if fb.Degraded() {
				// Degraded but serving from the local count is ready (and
				// says so); rejecting every request is not.
				return !reject, "degraded, " + status
			}
			return true, status
		}
	}

	r, burst := cfg.SmoothingRate()
	g.lim = limiter.New(limiter.Config{
		Store:          g.store,
		Rate:           rate.Limit(r),
		Burst:          burst,
		AnonymousRate:  rate.Limit(cfg.Smoothing.AnonymousRate),
		AnonymousBurst: cfg.Smoothing.AnonymousBurst,
		MaxWait:        cfg.Queue.MaxWait.Duration,
		MaxDepth:       cfg.Queue.MaxDepth,
		MaxQueued:      cfg.Queue.MaxQueued,
		IdleAfter:      max(10*time.Minute, time.Duration(float64(burst)/r*float64(time.Second))),
		Observer:       m,
	})

	base := retry.NewBaseTransport(retry.BaseOptions{
		DialTimeout:           cfg.Upstream.DialTimeout.Duration,
		TLSHandshakeTimeout:   cfg.Upstream.DialTimeout.Duration,
		ResponseHeaderTimeout: cfg.Upstream.Timeout.Duration,
		MaxIdleConnsPerHost:   cfg.Upstream.MaxIdleConnsPerHost,
	})
	g.closers = append(g.closers, func() error { base.CloseIdleConnections(); return nil })
	transport := retry.New(retry.Config{
		Base:        base,
		Routes:      routes,
		MaxAttempts: cfg.Retry.MaxAttempts,
		BaseDelay:   cfg.Retry.BaseDelay.Duration,
		MaxDelay:    cfg.Retry.MaxDelay.Duration,
		// retry.Config reads zero as "default": the file's explicit zeros
		// mean "none" and are passed as the transport's "off" values.
		BudgetRatio:       offIfZero(cfg.Retry.BudgetRatio, math.SmallestNonzeroFloat64),
		MaxBodyBytes:      offIfZero(cfg.Retry.MaxBodyBytes, -1),
		MaxBufferBytes:    max(cfg.Retry.MaxBufferBytes, 1),
		IdempotentWrites:  cfg.Retry.IdempotentWrites,
		SerializeCooldown: offIfZero(cfg.Retry.SerializeCooldown.Duration, -1),
		MaxRetryAfter:     cfg.Quota.Window.Duration,
		Observer:          m,
	})

	g.handler = proxy.New(proxy.Config{
		Upstream:     upstream,
		Transport:    transport,
		Limiter:      g.lim,
		Routes:       routes,
		Identifier:   proxy.NewIdentifier([]byte(cfg.Quota.KeySecret)),
		Logger:       log.Named("access"),
		Observer:     m,
		MaxBodyBytes: cfg.Server.MaxBodyBytes,
		MaxWait:      cfg.Queue.MaxWait.Duration,
		Limit:        cfg.Quota.Limit,
		Window:       cfg.Quota.Window.Duration,
		PolicyName:   cfg.Quota.PolicyName,
	})
	return g, nil
}

// adminHandler serves /metrics, /healthz and /readyz.
func (g *gateway) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g.reg, promhttp.HandlerOpts{Registry: g.reg}))
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
	return mux
}

// serve runs the gateway until ctx is done, then shuts down gracefully.
func serve(ctx context.Context, cfg config.Config, log *zap.Logger, ready chan<- started) error {
	g, err := build(cfg, log)
	if err != nil {
		return err
	}
	log.Info("starting", zap.String("version", buildVersion()), zap.Any("config", cfg.Redacted()))
	redis.SetLogger(redisLogger{log.Named("redis")})

	ln, err := net.Listen("tcp", cfg.Server.Listen)
	if err != nil {
		return fmt.Errorf("server.listen: %w", err)
	}
	aln, err := net.Listen("tcp", cfg.Server.AdminListen)
	if err != nil {
		_ = ln.Close()
		return fmt.Errorf("server.admin_listen: %w", err)
	}
	srv := &http.Server{
		Handler:           g.handler,
		ReadHeaderTimeout: cfg.Server.ReadHeaderTimeout.Duration,
		IdleTimeout:       cfg.Server.IdleTimeout.Duration,
		MaxHeaderBytes:    cfg.Server.MaxHeaderBytes,
		ErrorLog:          zap.NewStdLog(log.Named("http")),
	}
	admin := &http.Server{Handler: g.adminHandler(), ReadHeaderTimeout: 5 * time.Second}

	bg, cancelBG := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = g.lim.Run(bg, time.Minute) })
	if g.mem != nil {
		wg.Go(func() { _ = g.mem.Run(bg, time.Minute) })
	}
	if g.fallback != nil {
		wg.Go(func() { _ = g.fallback.Run(bg) })
	}
	errc := make(chan error, 2)
	wg.Go(func() { errc <- ignoreClosed(srv.Serve(ln)) })
	wg.Go(func() { errc <- ignoreClosed(admin.Serve(aln)) })
	g.ready.Store(true)
	log.Info("listening", zap.String("addr", ln.Addr().String()), zap.String("admin_addr", aln.Addr().String()),
		zap.String("upstream", cfg.Upstream.URL))
	if ready != nil {
		ready <- started{Addr: ln.Addr().String(), AdminAddr: aln.Addr().String()}
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	// Shutdown: not ready at once, stop accepting, let in-flight and queued
	// requests finish within shutdown_timeout, then answer the rest 503/10004.
	g.ready.Store(false)
	log.Info("shutting down", zap.Duration("grace", cfg.Server.ShutdownTimeout.Duration))
	sctx, cancel := context.WithTimeout(context.Background(), cfg.Server.ShutdownTimeout.Duration)
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("grace period over: answering the remaining requests 503", zap.Int("queued", g.lim.Queued()))
		g.handler.Abort()
		g.lim.Close()
		fctx, fcancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := srv.Shutdown(fctx); err != nil {
			_ = srv.Close()
		}
		fcancel()
	}
	cancel()
	actx, acancel := context.WithTimeout(context.Background(), time.Second)
	_ = admin.Shutdown(actx)
	acancel()
	cancelBG()
	wg.Wait()
	for _, c := range g.closers {
		_ = c()
	}
	log.Info("stopped")
	return runErr
}

// offIfZero maps a configured zero to the value that means "none" where
// the zero value of a config struct means "default".
func offIfZero[T int64 | float64 | time.Duration](v, off T) T {
	if v == 0 {
		return off
	}
	return v
}

func ignoreClosed(err error) error {
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// storeObserver exports the quota store's failures as metrics and logs the
// switches to and from the local fallback (once each, not per request).
type storeObserver struct {
	m   *metrics.Metrics
	log *zap.Logger
}

func (o storeObserver) StoreError(op string) { o.m.StoreError(op) }

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
