// Command gwbench is the load driver behind scripts/bench.sh and
// scripts/faults.sh. It runs the built binaries (gateway, fusioo-sim,
// bareproxy from -bin) and redis-server as child processes on loopback
// ports it picks, drives them, and prints tables of ratios and pass/fail
// lines. It exits 1 when a pass/fail criterion failed, 2 on a usage or
// set-up error.
//
//	gwbench -bin DIR bench        throughput and latency vs a bare ReverseProxy
//	gwbench -bin DIR quota        3 replicas on one Redis, strict rolling quota, 3x demand
//	gwbench -bin DIR redis-kill   Redis SIGKILLed for 10 s under load, then restarted empty
//	gwbench -bin DIR redis-delay  Redis answering 200 ms late under load
//	gwbench -bin DIR upstream-errors  5% 503 + 5% 30054 + 1% 504 upstream
//	gwbench -bin DIR upstream-hang    an upstream that never answers
//	gwbench -bin DIR disconnect   10k queued clients that go away
//	gwbench -bin DIR faults       every fault run above, in turn
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fusioo-gateway/gateway/bench/harness"
)

func main() {
	os.Exit(run())
}

func run() int {
	fs := flag.NewFlagSet("gwbench", flag.ContinueOnError)
	bin := fs.String("bin", "", "directory holding the built gateway, fusioo-sim and bareproxy binaries (required)")
	logs := fs.String("logs", "", "directory for logs and generated configs (default: a new temporary directory)")
	// bench
	rounds := fs.Int("rounds", 3, "bench, wrk: alternating rounds")
	closedFor := fs.Duration("closed", 5*time.Second, "bench: closed-loop run per target per round")
	conc := fs.Int("concurrency", 32, "bench: closed-loop workers; wrk: connections")
	openFor := fs.Duration("open", 6*time.Second, "bench: constant-rate run per target, round and load level")
	rate := fs.Float64("rate", 0, "bench: one constant rate in req/s (0: the -rate-fractions of the bare proxy's max)")
	fracs := fs.String("rate-fractions", "0.25,0.6", "bench: constant rates as fractions of the bare proxy's closed-loop max, comma-separated")
	warmup := fs.Duration("warmup", 2*time.Second, "bench: closed-loop warm-up per target")
	targets := fs.String("targets", "bare,memory,redis", "bench: targets, bare first")
	simLatency := fs.Duration("sim-latency", 0, "bench: latency the simulator adds to every answer")
	logLevel := fs.String("log-level", "info", "bench: the gateways' log.level")
	tokens := fs.Int("tokens", 16, "bench: distinct client tokens the load is spread over")
	var gwEnv envList
	var baseEnv envList
	fs.Var(&baseEnv, "wrk-base-env", "wrk: KEY=VALUE added to the environment of the -wrk-base gateways only (repeatable), e.g. to pair two settings of one build; the harness's own settings (listen addresses, Redis URL) come after it and win")
	fs.Var(&gwEnv, "env", "bench, quota: KEY=VALUE added to the gateways' environment (repeatable), e.g. FUSIOO_GATEWAY_REDIS_LEASE_TIME=0s")
	profile := fs.String("profile", "", "bench, wrk: save a CPU profile of each gateway's first round in this directory")
	enforce := fs.Bool("enforce", true, "bench: fail unless the Redis gateway meets the issue's targets (closed loop: >= 0.9x throughput, <= 1.2x p99)")
	// wrk
	wrkScript := fs.String("wrk-script", "bench/wrk/bench.lua", "wrk: the Lua script of the requests")
	wrkBase := fs.String("wrk-base", "", "wrk: directory with another build of the gateway, whose Redis-store workloads run too")
	wrkLoads := fs.String("wrk-workloads", "", "wrk: comma-separated workloads (bare always runs; empty: all)")
	wrkSim := fs.Bool("wrk-sim-upstream", false, "wrk: forward to the simulator itself, not nginx serving its page")
	wrkFor := fs.Duration("wrk-duration", 4*time.Second, "wrk: run per workload and round")
	// quota
	qDuration := fs.Duration("quota-duration", 40*time.Second, "quota: how long clients demand")
	qDemand := fs.Float64("quota-demand", 3, "quota: demand as a multiple of the quota")
	qReplicas := fs.Int("quota-replicas", 3, "quota: gateway replicas on the one Redis")
	// saving
	sDuration := fs.Duration("saving-duration", time.Minute, "saving: how long each configuration runs")
	// faults
	short := fs.Bool("short", false, "faults: shorter phases (a quick check, not the documented run)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: gwbench -bin DIR [flags] bench|wrk|quota|saving|redis-kill|redis-delay|redis-loss|upstream-errors|upstream-hang|disconnect|faults")
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	if *bin == "" || fs.NArg() != 1 {
		fs.Usage()
		return 2
	}
	if *logs == "" {
		d, err := os.MkdirTemp("", "gwbench-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		*logs = d
	} else if err := os.MkdirAll(*logs, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Printf("logs and configs: %s\n", *logs)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	l := &harness.ProcLauncher{BinDir: *bin, Logs: *logs}
	out := os.Stdout

	fo := harness.FaultOptions{Short: *short, Out: out}
	var v harness.Verdicts
	var err error
	switch cmd := fs.Arg(0); cmd {
	case "bench":
		var fractions []float64
		for _, f := range strings.Split(*fracs, ",") {
			v, perr := strconv.ParseFloat(strings.TrimSpace(f), 64)
			if perr != nil || v <= 0 {
				fmt.Fprintf(os.Stderr, "gwbench: -rate-fractions: bad value %q\n", f)
				return 2
			}
			fractions = append(fractions, v)
		}
		var r *harness.BenchResult
		r, err = harness.RunBench(ctx, l, harness.BenchOptions{
			Targets: strings.Split(*targets, ","), Rounds: *rounds, ClosedFor: *closedFor, Concurrency: *conc,
			OpenFor: *openFor, Rate: *rate, RateFractions: fractions, Warmup: *warmup, SimLatency: *simLatency,
			LogLevel: *logLevel, Enforce: *enforce, ProfileDir: *profile, Tokens: *tokens, GatewayEnv: gwEnv, Out: out,
		})
		if r != nil {
			v = r.Verdicts
		}
	case "wrk":
		if len(baseEnv) > 0 && *wrkBase == "" {
			fmt.Fprintln(os.Stderr, "gwbench: -wrk-base-env needs -wrk-base (scripts/bench.sh wrk REV …)")
			return 2
		}
		var loads []string
		if *wrkLoads != "" {
			loads = strings.Split(*wrkLoads, ",")
		}
		var r *harness.WrkResult
		r, err = harness.RunWrk(ctx, l, harness.WrkOptions{Rounds: *rounds, Duration: *wrkFor, Connections: *conc,
			Script: *wrkScript, BaseBin: *wrkBase, BaseEnv: baseEnv, SimUpstream: *wrkSim, ProfileDir: *profile, Workloads: loads, Out: out})
		if r != nil {
			v = r.Verdicts
		}
	case "quota":
		var r *harness.QuotaReport
		r, err = harness.RunQuota(ctx, l, harness.QuotaOptions{Duration: *qDuration, Demand: *qDemand, Replicas: *qReplicas, Env: gwEnv, Out: out})
		if r != nil {
			v = r.Verdicts
		}
	case "saving":
		_, err = harness.RunSaving(ctx, l, harness.SavingOptions{Duration: *sDuration}, out)
	case "faults":
		for _, name := range harness.FaultNames {
			fmt.Fprintf(out, "\n===== %s\n", name)
			fv, ferr := harness.RunFault(ctx, l, name, fo)
			if ferr != nil {
				fmt.Fprintf(out, "FAIL %s: %v\n", name, ferr)
				err = ferr
			}
			v = append(v, fv...)
		}
	default:
		v, err = harness.RunFault(ctx, l, cmd, fo)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gwbench:", err)
		return 2
	}
	if !v.Passed() {
		return 1
	}
	return 0
}

// envList is a repeatable KEY=VALUE flag.
type envList []string

func (e *envList) String() string { return strings.Join(*e, " ") }

func (e *envList) Set(v string) error {
	if !strings.HasPrefix(v, "FUSIOO_GATEWAY_") || !strings.Contains(v, "=") {
		return fmt.Errorf("want FUSIOO_GATEWAY_KEY=VALUE, got %q", v)
	}
	*e = append(*e, v)
	return nil
}
