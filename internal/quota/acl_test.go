package quota

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fusioo-gateway/gateway/internal/testutil/redistest"
)

// TestRedisLeastPrivilegeACL: the ACL line deploy/README.md gives for the
// gateway's Redis user is enough for everything the quota store does
// (takes, reservations, leases, releases, blocks, write-backs after a
// flush, the instance key, pings, EVAL after SCRIPT FLUSH), and keys
// outside its prefix are refused.
func TestRedisLeastPrivilegeACL(t *testing.T) {
	readme, err := os.ReadFile("../../deploy/README.md")
	if err != nil {
		t.Fatal(err)
	}
	var acl string
	for _, line := range strings.Split(string(readme), "\n") {
		if l := strings.TrimSpace(line); strings.HasPrefix(l, "ACL SETUSER fusioo-gateway ") {
			acl = l
		}
	}
	if acl == "" {
		t.Fatal("deploy/README.md has no ACL SETUSER fusioo-gateway line")
	}
	srv := redistest.Start(t)
	admin := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer admin.Close()
	ctx := context.Background()
	args := []any{}
	for _, f := range strings.Fields(strings.Replace(acl, ">PASSWORD", ">gw-secret", 1)) {
		args = append(args, f)
	}
	if err := admin.Do(ctx, args...).Err(); err != nil {
		t.Fatalf("%s: %v", acl, err)
	}
	for _, ap := range []bool{false, true} {
		c, err := NewRedisClient(RedisClientOptions{URL: "redis://fusioo-gateway:gw-secret@" + srv.Addr(), Timeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		p := Policy{Limit: 3, Window: time.Minute, Buckets: DefaultBuckets}
		// A prefix of its own per run (within fgw:*): the first run's flush
		// leaves its instance key settling.
		rs := NewRedisStore(c, p, RedisOptions{KeyPrefix: fmt.Sprintf("fgw:%v", ap), Timeout: time.Second, AutoPipeline: ap, MaxHold: time.Second, Settle: 50 * time.Millisecond})
		f := NewFallbackStore(rs, p, DefaultFallbackOptions())
		key := redisTestKey(t, fmt.Sprintf("acl-%v", ap))
		must := func(what string, err error) {
			t.Helper()
			if err != nil {
				t.Fatalf("auto_pipeline=%v, %s: %v", ap, what, err)
			}
		}
		_, err = f.Take(ctx, key, Take{Want: 2, Hold: 100 * time.Millisecond})
		must("lease", err)
		_, err = f.Take(ctx, key, Take{})
		must("take", err)
		res, err := f.Take(ctx, key, Take{Wait: 2 * time.Minute})
		must("reservation", err)
		must("release", f.Release(ctx, key, res.Slot))
		_, err = f.Take(ctx, key, Take{Peek: true})
		must("peek", err)
		must("block", f.Block(ctx, key, time.Second))
		must("ping", rs.Ping(ctx))
		_, err = rs.Heartbeat(ctx, Beat{ID: "replica-1", ValidUntil: 1 << 50, Alive: time.Second, Forget: time.Minute})
		must("heartbeat", err)
		must("leave", rs.Leave(ctx, "replica-1"))
		_, _, err = rs.InstanceEpoch(ctx)
		must("instance key", err)
		must("flush", admin.Do(ctx, "flushall").Err())
		must("script flush", admin.Do(ctx, "script", "flush").Err())
		_, err = f.Take(ctx, key, Take{Wait: time.Second}) // lost: written back first, then EVAL
		must("take after the flush", err)
		if f.LostKeys() != 1 || f.Degraded() {
			t.Fatalf("auto_pipeline=%v: lost keys %d, degraded %v", ap, f.LostKeys(), f.Degraded())
		}
		if err := c.Set(ctx, "other:key", "x", 0).Err(); err == nil || !strings.Contains(err.Error(), "NOPERM") {
			t.Fatalf("a key outside the prefix: %v, want NOPERM", err)
		}
	}
}
