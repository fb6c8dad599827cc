// Command fusioo-sim serves the Fusioo API simulator (internal/fusioosim)
// for benchmarks, fault scripts and the demo.
//
// Usage:
//
//	fusioo-sim -listen 127.0.0.1:8081 -limit 100 -window 1m -fault-503 0.05
//
// When it is ready it prints one line, "fusioo-sim listening on ADDR", to
// stderr (ADDR is the bound address, so -listen 127.0.0.1:0 works). Faults
// can be changed at run time with PUT /_sim/faults, the ledger read with GET
// /_sim/ledger and everything cleared with POST /_sim/reset. SIGINT or
// SIGTERM shut it down gracefully.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/fusioo-gateway/gateway/internal/fusioosim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "fusioo-sim:", err)
		os.Exit(2)
	}
}

// shutdownTimeout is how long in-flight requests get to finish on a signal
// before their connections are closed (hanging requests never finish).
const shutdownTimeout = 5 * time.Second

// run parses args, serves until ctx is done, and shuts down.
func run(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("fusioo-sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		listen     = fs.String("listen", "127.0.0.1:8081", "address to listen on")
		limit      = fs.Int("limit", 0, "charged requests per scope per window (0 = unlimited)")
		window     = fs.Duration("window", time.Hour, "quota window")
		fixed      = fs.Bool("fixed", false, "fixed windows aligned to -window instead of a rolling window")
		retryAfter = fs.Bool("retry-after", false, "send Retry-After with 20005 answers (Fusioo does not)")
		seed       = fs.Int64("seed", 1, "seed of the fault dice")
		shared     = fs.Bool("shared-quota", false, "all tokens share one quota scope")
		history    = fs.Bool("history", false, "keep every charge time for /_sim/history (memory grows per request)")
		f          fusioosim.Faults
	)
	fs.Float64Var(&f.Unavailable, "fault-503", 0, "fraction of requests answered 503/10004")
	fs.DurationVar(&f.UnavailableRetryAfter, "fault-503-retry-after", 0, "Retry-After sent with injected 503s (0 = none)")
	fs.Float64Var(&f.Concurrent, "fault-30054", 0, "fraction of creates answered 30054 at random")
	fs.Float64Var(&f.GatewayTimeout, "fault-504", 0, "fraction of requests answered 504 without being applied")
	fs.Float64Var(&f.TimeoutAfterApply, "fault-504-after-apply", 0, "fraction of creates applied, then answered 504")
	fs.Float64Var(&f.ResetAfterApply, "fault-reset-after-apply", 0, "fraction of creates applied, then reset without an answer")
	fs.DurationVar(&f.Latency, "latency", 0, "latency added to every answer")
	fs.DurationVar(&f.Jitter, "jitter", 0, "uniform jitter added to the latency, below this")
	fs.DurationVar(&f.CreateHold, "create-hold", 0, "how long a create holds its App's lock (0 = the request's latency)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	for _, p := range []struct {
		name string
		v    float64
	}{{"fault-503", f.Unavailable}, {"fault-30054", f.Concurrent}, {"fault-504", f.GatewayTimeout},
		{"fault-504-after-apply", f.TimeoutAfterApply}, {"fault-reset-after-apply", f.ResetAfterApply}} {
		if !(p.v >= 0 && p.v <= 1) {
			return fmt.Errorf("-%s: %v is not a fraction in [0,1]", p.name, p.v)
		}
	}
	if *limit < 0 || *window <= 0 {
		return fmt.Errorf("-limit must be >= 0 and -window > 0")
	}

	cfg := fusioosim.Config{
		Limit:      *limit,
		Window:     *window,
		Fixed:      *fixed,
		RetryAfter: *retryAfter,
		Seed:       *seed,
		Faults:     f,
		History:    *history,
	}
	if *shared {
		cfg.Scope = func(string) string { return "shared" }
	}
	sim := fusioosim.New(cfg)

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: sim, ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintf(stderr, "fusioo-sim listening on %s\n", ln.Addr())

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
