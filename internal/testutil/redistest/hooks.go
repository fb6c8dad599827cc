package redistest

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"
)

// CommandCounter is a go-redis hook counting round trips: one per command
// and one per pipeline (client.AddHook).
type CommandCounter struct{ N atomic.Int64 }

// DialHook implements redis.Hook.
func (c *CommandCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

// ProcessHook implements redis.Hook.
func (c *CommandCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.N.Add(1)
		return next(ctx, cmd)
	}
}

// ProcessPipelineHook implements redis.Hook.
func (c *CommandCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.N.Add(1)
		return next(ctx, cmds)
	}
}

// BucketSum adds up the bucket fields of a quota store's HASH name (every
// field but the meta field "m"): what Redis counts for a key, for tests of
// the stores and of the limiter on them.
func BucketSum(tb testing.TB, c redis.UniversalClient, name string) int {
	tb.Helper()
	all, err := c.HGetAll(context.Background(), name).Result()
	if err != nil {
		tb.Fatal(err)
	}
	sum := 0
	for f, v := range all {
		if f == "m" {
			continue
		}
		n, err := strconv.Atoi(v)
		if err != nil {
			tb.Fatalf("field %s = %q", f, v)
		}
		sum += n
	}
	return sum
}
