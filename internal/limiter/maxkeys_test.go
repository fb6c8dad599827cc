package limiter

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/fusioo-gateway/gateway/internal/quota"
)

// TestLimiterMaxKeys: the limiter keeps at most MaxKeys keys' local state,
// dropping the least recently used idle one; with every key in use, a new
// key is refused ReasonKeysFull at once.
func TestLimiterMaxKeys(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		l, _, obs := newTestLimiter(nil, quota.Policy{Limit: 1, Window: 10 * time.Second, Buckets: 10}, func(c *Config) {
			c.MaxKeys, c.IdleAfter = 3, time.Hour
		})
		ctx := context.Background()
		for i := range 10 {
			d, err := l.Admit(ctx, fmt.Sprintf("k%d", i), time.Time{})
			if err != nil || !d.Allowed {
				t.Fatalf("k%d: %+v %v", i, d, err)
			}
		}
		if n := l.Sweep(); n != 3 {
			t.Fatalf("%d keys tracked, want 3", n)
		}
		// Three keys in use (each waits for its next slot), then a new
		// key is refused.
		out := make(chan outcome, 3)
		for i := range 3 {
			admitAsync(ctx, l, fmt.Sprintf("k%d", 7+i), i, out)
		}
		if l.Queued() != 3 {
			t.Fatalf("queued %d, want 3", l.Queued())
		}
		d, err := l.Admit(ctx, "k-new", time.Time{})
		if err != nil || d.Allowed || d.Reason != ReasonKeysFull || d.RetryAfter <= 0 || obs.rejections(ReasonKeysFull) != 1 {
			t.Fatalf("new key with every key in use: %+v %v", d, err)
		}
		for range 3 {
			if o := <-out; !o.d.Allowed {
				t.Fatalf("waiter %d: %+v", o.i, o.d)
			}
		}
		// Idle again: a new key takes the least recently used one's place.
		if d, err := l.Admit(ctx, "k-new", time.Time{}); err != nil || !d.Allowed {
			t.Fatalf("new key once idle: %+v %v", d, err)
		}
	})
}

// TestLimiterMaxKeysConcurrent: requests of many new keys at once, over
// every shard, never leave more than MaxKeys keys tracked, and the count
// the bound is checked against is the keys the shards hold.
func TestLimiterMaxKeysConcurrent(t *testing.T) {
	t.Parallel()
	l, _, _ := newTestLimiter(nil, quota.Policy{Limit: 100, Window: 10 * time.Second, Buckets: 10}, func(c *Config) {
		c.MaxKeys, c.IdleAfter = 20, time.Hour
	})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 500 {
				if _, err := l.Admit(context.Background(), fmt.Sprintf("k%d", (g*500+i)%300), time.Time{}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	checkShards(t, l) // the count is what the shards hold
	if n := l.nkeys.Load(); n > 20 {
		t.Fatalf("%d keys held; bound 20", n)
	}
}
