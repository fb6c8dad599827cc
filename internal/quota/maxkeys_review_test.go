package quota

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// TestMaxKeysIsTheStores: no new key is refused before max_keys keys are
// tracked (a per-shard bound refused them from a few percent of it on;
// found by review).
func TestMaxKeysIsTheStores(t *testing.T) {
	for _, max := range []int{64, 1000} {
		s := NewMemoryStore(Policy{Limit: 10, Window: time.Hour, MaxKeys: max, Buckets: DefaultBuckets}, nil)
		full := 0
		firstFull := -1
		for i := range max {
			res, err := s.Take(context.Background(), fmt.Sprintf("key-%d", i), Take{})
			if err != nil {
				t.Fatal(err)
			}
			if res.Full {
				full++
				if firstFull < 0 {
					firstFull = i
				}
			}
		}
		if full > 0 {
			t.Errorf("max_keys=%d: %d of the first %d new keys refused Full (first at key #%d, %d tracked)", max, full, max, firstFull, s.Sweep())
		}
	}
}
