package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime/debug"
	"sync"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/fusioo-gateway/gateway/cmd/gateway/app"
	"github.com/fusioo-gateway/gateway/internal/config"
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
		if errors.Is(err, flag.ErrHelp) {
			return exitOK // -h asked for the usage, which is printed
		}
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
	invalid := func(err error) int {
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
	cfg, err := config.Load(*cfgPath, env)
	if err != nil {
		return invalid(err)
	}
	if *checkOnly {
		// Everything startup checks, without starting: the assembly does
		// no I/O (but for reading the TLS files).
		g, err := app.New(cfg, zap.NewNop(), buildVersion())
		if err != nil {
			return invalid(err)
		}
		g.Close()
		printf(stdout, "configuration %s is valid\n", *cfgPath)
		return exitOK
	}
	// One access log line per request: buffered, so a request costs no
	// write(2) of its own; flushed every second and when the gateway stops.
	logw := &zapcore.BufferedWriteSyncer{WS: zapcore.AddSync(stderr), Size: 256 << 10, FlushInterval: time.Second}
	defer func() { _ = logw.Stop() }()
	log, err := app.NewLogger(cfg.Log, logw)
	if err != nil {
		printf(stderr, "gateway: %v\n", err)
		return exitConfig
	}
	defer func() { _ = log.Sync() }()
	g, err := app.New(cfg, log, buildVersion())
	if err != nil {
		return invalid(err)
	}
	if err := serve(ctx, g, cfg, *cfgPath, log, ready); err != nil {
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

// serve runs the gateway until ctx is done, then shuts down gracefully.
func serve(ctx context.Context, g *app.Gateway, cfg config.Config, path string, log *zap.Logger, ready chan<- started) error {
	log.Info("starting", zap.String("version", buildVersion()), zap.String("config_file", path), zap.Any("config", cfg.Redacted().Settings()))
	app.SetRedisLogger(log.Named("redis"))

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
		Handler: g.Handler,
		// Abort cancels every request through it (cause ErrShutdown).
		BaseContext:       g.Handler.BaseContext,
		ReadHeaderTimeout: cfg.Server.ReadHeaderTimeout.Duration,
		IdleTimeout:       cfg.Server.IdleTimeout.Duration,
		MaxHeaderBytes:    cfg.Server.MaxHeaderBytes,
		ErrorLog:          zap.NewStdLog(log.Named("http")),
	}
	admin := &http.Server{Handler: g.Admin(), ReadHeaderTimeout: 5 * time.Second}

	bg, cancelBG := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { g.Run(bg) })
	errc := make(chan error, 2)
	wg.Go(func() { errc <- ignoreClosed(srv.Serve(ln)) })
	wg.Go(func() { errc <- ignoreClosed(admin.Serve(aln)) })
	g.SetReady(true)
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
	g.SetReady(false)
	log.Info("shutting down", zap.Duration("grace", cfg.Server.ShutdownTimeout.Duration))
	sctx, cancel := context.WithTimeout(context.Background(), cfg.Server.ShutdownTimeout.Duration)
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("grace period over: answering the remaining requests 503", zap.Int("queued", g.Limiter.Queued()))
		g.Abort()
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
	g.Close()
	log.Info("stopped")
	return runErr
}

func ignoreClosed(err error) error {
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
