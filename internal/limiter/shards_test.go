package limiter

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fusioo-gateway/gateway/internal/quota"
)

// checkShards fails t unless every shard's map and LRU list hold the
// same keys, with sound links and no reference held, and nkeys counts them.
func checkShards(t *testing.T, l *Limiter) {
	t.Helper()
	inMap, inList := 0, 0
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		inMap += len(sh.keys)
		seen := map[*keyState]bool{}
		var prev *keyState
		for ks := sh.lruHead; ks != nil; ks = ks.next {
			if ks.prev != prev {
				t.Errorf("shard %d: broken prev link at %q", i, ks.key)
			}
			if sh.keys[ks.key] != ks {
				t.Errorf("shard %d: %q in LRU but not map", i, ks.key)
			}
			if ks.refs != 0 {
				t.Errorf("shard %d: %q refs %d", i, ks.key, ks.refs)
			}
			seen[ks] = true
			inList++
			prev = ks
		}
		if sh.lruTail != prev {
			t.Errorf("shard %d: tail mismatch", i)
		}
		for k, ks := range sh.keys {
			if !seen[ks] {
				t.Errorf("shard %d: %q in map but not LRU", i, k)
			}
		}
		sh.mu.Unlock()
	}
	if n := l.nkeys.Load(); n != int64(inMap) || inMap != inList {
		t.Errorf("nkeys %d, maps %d, lists %d", n, inMap, inList)
	}
}

// TestNoSpuriousKeysFull: fewer goroutines than MaxKeys, each holding at
// most one key, so there is always an idle key to evict: a new key is
// never refused, however the shards' evictions interleave.
func TestNoSpuriousKeysFull(t *testing.T) {
	l, _, _ := newTestLimiter(nil, quota.Policy{Limit: 100, Window: 10 * time.Second, Buckets: 10}, func(c *Config) {
		c.MaxKeys, c.IdleAfter = 16, time.Hour
	})
	var refused atomic.Int64
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 5000 {
				k := fmt.Sprintf("g%d-%d", g, i)
				ks := l.acquire(k)
				if ks == nil {
					refused.Add(1)
					continue
				}
				l.release(k, ks)
			}
		})
	}
	wg.Wait()
	checkShards(t, l)
	if n := refused.Load(); n > 0 {
		t.Errorf("%d acquires refused with at most 8 of 16 keys in use", n)
	}
}

// TestShardInvariants: admissions, acquires, Forget, Exhaust and sweeps of
// 100 keys at once, with leases and a MaxKeys of 24, leave every shard
// consistent.
func TestShardInvariants(t *testing.T) {
	l, _, _ := newTestLimiter(nil, quota.Policy{Limit: 1000, Window: 10 * time.Second, Buckets: 10}, func(c *Config) {
		c.MaxKeys, c.IdleAfter = 24, 0
		c.Lease, c.LeaseMax = time.Second, 8
	})
	var sw, wg sync.WaitGroup
	stop := make(chan struct{})
	sw.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			l.Sweep()
		}
	})
	for g := range 6 {
		wg.Go(func() {
			for i := range 5000 {
				k := fmt.Sprintf("k%d", (g*7+i)%100)
				switch i % 5 {
				case 0:
					l.Forget(k)
				case 1:
					_ = l.Exhaust(context.Background(), k, time.Millisecond)
				case 2:
					_, _ = l.Admit(context.Background(), k, time.Time{})
				default:
					if ks := l.acquire(k); ks != nil {
						l.release(k, ks)
					}
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	sw.Wait()
	l.Close()
	checkShards(t, l)
}
