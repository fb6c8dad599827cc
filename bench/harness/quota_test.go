package harness

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestFleetFollowsFailover is the fleet run on real topologies while a
// master is killed (-9), in a Redis Cluster of 3 masters and 3 replicas
// (cluster-node-timeout 2000) and a Sentinel-managed master with its
// replica; and while a Cluster master fails over gracefully (CLUSTER
// FAILOVER) and while a slot moves to another master (a reshard). The
// upstream never answers 20005, no request fails, and within 2 s of the
// replica's promotion the tokens it serves are decided by Redis again (a
// request answered at once); in the Cluster, the tokens of the other
// shards never leave Redis. It is first in the file: the longest of the
// fleet runs starts first, and the others fill the slots beside it.
func TestFleetFollowsFailover(t *testing.T) {
	fleetTest(t, "four runs of 25 s of load")
	for _, tc := range []struct {
		topology, name string
		fault          func(QuotaTargets) error
	}{
		{"cluster", "kill -9 of a master", KillShardOf(0)},
		{"cluster", "CLUSTER FAILOVER", FailoverShardOf(0)},
		{"cluster", "a slot moved to another master", ReshardSlotOf(0)},
		{"sentinel", "kill -9 of the master", KillSentinelMaster},
	} {
		t.Run(tc.topology+", "+tc.name, func(t *testing.T) {
			r := runFleet(t, QuotaOptions{
				Topology: tc.topology, Duration: 25 * time.Second,
				Faults: []QuotaFault{{8 * time.Second, tc.name, tc.fault}},
			})
			killed, promoted := r.Notes["killed"], r.Notes["promoted"]
			t.Logf("promoted %s after the kill", promoted.Sub(killed))
			on, off := r.ShardTokens(5)
			if d, ok := r.RecoveredAfter(on, promoted); !ok || d > 2*time.Second {
				t.Errorf("tokens %v back on Redis %s after the promotion (found %v), want within 2s", on, d, ok)
			} else {
				t.Logf("tokens %v (on the killed master) back on Redis %s after the promotion", on, d)
			}
			if len(off) > 0 {
				slow, all := r.SlowAnswers(off, killed, promoted)
				t.Logf("tokens %v (other shards): %d of %d refusals waited during the failover", off, slow, all)
				if slow > all/50 {
					t.Errorf("tokens on healthy shards waited for %d of %d refusals during the failover", slow, all)
				}
			}
		})
	}
}

// TestFleetIsOneLimiter is issue 12's run as a test, in process on a real
// redis-server: 5 tokens of 60 requests per 10 s each, demanded at three
// times the quota for 40 s, every token sent to every replica; 3 replicas,
// then 1 (both with the default smoothing). What the upstream saw decides:
// no 20005, at least 97% of the quota used in every rolling window on
// average; and 98% of the refusals come at once, no 200 later than
// max_wait. (It is the fleet's one quota-use test: cmd/gateway's older
// TestReplicasShareQuotaInRedis asked the same of 3 replicas at 95%,
// judged by the clients' clocks under -race.)
func TestFleetIsOneLimiter(t *testing.T) {
	fleetTest(t, "two runs of 40 s of load")
	for _, tc := range []struct {
		name string
		o    QuotaOptions
	}{
		{"3 replicas", QuotaOptions{Replicas: 3}},
		{"1 replica", QuotaOptions{Replicas: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			runFleet(t, tc.o)
		})
	}
}

// TestDerivedMarginFitsTheWindow: a file that sets only quota.limit and
// quota.window = "6s" (the memory store, the derived margin of 120 ms, the
// default smoothing) uses at least 95% of the quota, as the upstream
// counts it, and never breaches it.
func TestDerivedMarginFitsTheWindow(t *testing.T) {
	fleetTest(t, "30 s of load")
	runFleet(t, QuotaOptions{
		Memory: true, DeriveMargin: true, Tokens: 3, Limit: 30, Window: 6 * time.Second, Duration: 30 * time.Second,
		Target: 0.95,
	})
}

// TestFleetSurvivesRedisDataLoss: the fleet run while Redis loses its data
// mid-run: FLUSHALL + SCRIPT FLUSH twice, or kill -9 and an empty restart.
// Every replica holds counts of every token; none admits on a key Redis
// lost before writing them back, so the upstream never answers 20005.
// (scripts/faults.sh redis-loss repeats each 10 times.)
func TestFleetSurvivesRedisDataLoss(t *testing.T) {
	fleetTest(t, "two runs of 20 s of load")
	for _, tc := range DataLosses {
		t.Run(tc.Name, func(t *testing.T) {
			runFleet(t, QuotaOptions{Duration: 20 * time.Second, Faults: tc.Faults})
		})
	}
}

// TestFleetSurvivesAPartition: one of 3 replicas blackholed from Redis for
// 25 s (its proxy stops forwarding, sockets open) under 3x the quota: the
// others hold its share back once it is silent, it counts locally only
// after that, so the upstream never answers 20005, and the cut-off replica
// still serves its share meanwhile.
func TestFleetSurvivesAPartition(t *testing.T) {
	fleetTest(t, "40 s of load")
	r := runFleet(t, QuotaOptions{
		Duration: 40 * time.Second, ViaProxy: true, Faults: CutOff(0, 5*time.Second, 30*time.Second),
		Env: []string{"FUSIOO_GATEWAY_QUOTA_FALLBACK_SHARE=0.33"},
	})
	if len(r.OKByReplica) != 3 || r.OKByReplica[0] == 0 {
		t.Errorf("200s by replica %v: the cut-off replica served nothing", r.OKByReplica)
	}
}

// fleetTest skips a fleet run (load says how long it takes) in -short
// mode, and otherwise runs it in parallel with the others (go test's
// -parallel, GOMAXPROCS by default, bounds how many go at once). The runs
// judge the gateway's own timing (margins of 100 ms, 200s within max_wait
// + 250 ms), so scripts/test.sh runs this package without the race
// detector, whose CPU cost would be what they measure: two runs side by
// side under -race cost a breach on an idle 2-core machine, while without
// it they hold beside `stress --cpu 2`. Every package they drive is
// race-tested by its own tests.
func fleetTest(t *testing.T, load string) {
	t.Helper()
	if testing.Short() {
		t.Skip(load)
	}
	t.Parallel()
}

// runFleet runs the quota run with o, logs its figures, and fails t on
// every criterion not met.
func runFleet(t *testing.T, o QuotaOptions) *QuotaReport {
	t.Helper()
	var out strings.Builder
	o.Out = &out
	r, err := RunQuota(context.Background(), &InprocLauncher{Logs: t.TempDir()}, o)
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range r.Verdicts {
		if !v.Pass {
			t.Errorf("%s: %s", v.Name, v.Got)
		}
	}
	return r
}
