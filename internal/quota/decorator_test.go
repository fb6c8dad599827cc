package quota

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
)

// flakyStore is a plain Store (none of Shared, Sharded, Pinger): a
// MemoryStore that fails every call while down.
type flakyStore struct {
	*MemoryStore
	down  atomic.Bool
	calls atomic.Int64
}

var errDown = errors.New("store down")

func (s *flakyStore) Take(ctx context.Context, key string, t Take) (Result, error) {
	s.calls.Add(1)
	if s.down.Load() {
		return Result{}, errDown
	}
	return s.MemoryStore.Take(ctx, key, t)
}

func (s *flakyStore) Block(ctx context.Context, key string, d time.Duration) error {
	if s.down.Load() {
		return errDown
	}
	return s.MemoryStore.Block(ctx, key, d)
}

func (s *flakyStore) Release(ctx context.Context, key string, r Reservation) error {
	if s.down.Load() {
		return errDown
	}
	return s.MemoryStore.Release(ctx, key, r)
}

// TestFallbackDecoratesAPlainStore: FallbackStore over a Store that can
// tell it nothing more. While the store answers, it counts every take;
// once it fails, the breaker opens and takes are answered locally within
// Share of the limit and Share of the Remaining it last gave; when it
// answers again (probed with a Peek take, having no Ping), what was
// admitted locally is replayed into it before takes go back, so it counts
// everything the upstream saw.
func TestFallbackDecoratesAPlainStore(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	clock := clockwork.NewFakeClock()
	p := Policy{Limit: 20, Window: time.Minute, Buckets: DefaultBuckets}
	primary := &flakyStore{MemoryStore: NewMemoryStore(p, clock)}
	f := NewFallbackStore(primary, p, FallbackOptions{
		Share: 0.5, Clock: clock, FailuresToOpen: 2, OpenFor: time.Nanosecond, ProbeEvery: time.Second,
	})
	if f.shared != nil || f.sharded != nil || f.pinger != nil {
		t.Fatal("a plain store was taken for more than a Store")
	}
	take := func() Result {
		t.Helper()
		res, err := f.Take(ctx, "k", Take{})
		if err != nil {
			t.Fatalf("take: %v", err)
		}
		return res
	}

	for range 4 {
		if !take().Allowed {
			t.Fatal("refused while the store had room")
		}
	}
	if got, _ := primary.MemoryStore.Take(ctx, "k", Take{Peek: true}); got.Remaining != 16 {
		t.Fatalf("the store counts %d, want 4", 20-got.Remaining)
	}
	if f.Leave(ctx) != nil || f.Degraded() {
		t.Fatal("degraded (or Leave failed) while the store answers")
	}

	// Down: the failures before the breaker opens are answered locally
	// too; Share of the 16 remaining caps the local admissions at 8.
	primary.down.Store(true)
	local := 0
	for range 20 {
		if take().Allowed {
			local++
		}
	}
	if !f.Degraded() {
		t.Fatal("not degraded after 20 failed takes")
	}
	if local != 8 {
		t.Fatalf("admitted %d locally, want 8 (half of the 16 the store gave last)", local)
	}
	calls := primary.calls.Load()
	take()
	if primary.calls.Load() != calls {
		t.Fatal("a take reached the store while the breaker was open")
	}

	// Back: probed, replayed, handed back.
	primary.down.Store(false)
	if !f.recover(ctx) {
		t.Fatal("no recovery once the store answers")
	}
	if f.Degraded() {
		t.Fatal("still degraded after the recovery")
	}
	got, _ := primary.MemoryStore.Take(ctx, "k", Take{Peek: true})
	if counted := 20 - got.Remaining; counted != 4+local {
		t.Fatalf("the store counts %d after the recovery, want %d (4 before, %d local)", counted, 4+local, local)
	}
	// The store decides again: 8 slots left, then refused.
	allowed := 0
	for range 10 {
		if take().Allowed {
			allowed++
		}
	}
	if allowed != 20-4-local {
		t.Fatalf("admitted %d after the recovery, want %d", allowed, 20-4-local)
	}
}
