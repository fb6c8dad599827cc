package quota

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
)

// TestMemoryStoreMaxKeys: a full store refuses new keys (Full, with when
// the first tracked key frees) and never drops a key that still counts;
// keys that count nothing make room, and a forgotten key's place is free
// at once.
func TestMemoryStoreMaxKeys(t *testing.T) {
	clk := clockwork.NewFakeClockAt(epoch)
	p := Policy{Limit: 3, Window: 10 * time.Second, Buckets: 10, MaxKeys: 100}
	s := NewMemoryStore(p, clk)
	ctx := context.Background()

	var kept []string
	var full string
	for i := 0; full == "" && i < 10000; i++ {
		k := fmt.Sprintf("key-%d", i)
		res, err := s.Take(ctx, k, Take{})
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case res.Full:
			if res.Allowed || res.RetryAfter != 11*time.Second-time.Duration(i)*time.Millisecond {
				t.Fatalf("full answer %+v: want refused, RetryAfter when the first key frees (11s)", res)
			}
			full = k
		case !res.Allowed:
			t.Fatalf("%s refused: %+v", k, res)
		default:
			kept = append(kept, k)
		}
		clk.Advance(time.Millisecond)
	}
	// The bound is the whole store's, not a shard's: exactly MaxKeys
	// keys, then the first refusal.
	if full == "" || len(kept) != p.MaxKeys {
		t.Fatalf("%d keys kept before a refusal (%q), want exactly %d", len(kept), full, p.MaxKeys)
	}
	// Every key kept still has its count: two more each, then refused.
	for _, k := range kept {
		for n := range 3 {
			res, _ := s.Take(ctx, k, Take{})
			if res.Allowed != (n < 2) || res.Full {
				t.Fatalf("%s take %d: %+v (a key that counts was dropped)", k, n+2, res)
			}
		}
	}
	// A forgotten key's place is free at once.
	s.Forget(kept[0])
	freed := false
	for i := 0; i < 10000 && !freed; i++ {
		res, _ := s.Take(ctx, fmt.Sprintf("new-%d", i), Take{})
		freed = res.Allowed
	}
	if !freed {
		t.Fatalf("no new key admitted after Forget")
	}
	// Once the counts age out, the refused key fits.
	clk.Advance(12 * time.Second)
	if res, _ := s.Take(ctx, full, Take{}); !res.Allowed {
		t.Fatalf("after the window: %+v", res)
	}
}
