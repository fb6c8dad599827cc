package limiter

import (
	"context"
	"hash/maphash"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
)

// MemoryStore keeps each key's window in this process: the quota store of a
// single gateway, and the fallback of every replica while Redis is away.
//
// Each key has a ring of Buckets+2 counters, so memory per tracked key is
// bounded whatever the limit; Sweep drops keys that count nothing.
type MemoryStore struct {
	policy Policy
	clock  clockwork.Clock
	width  int64 // bucket width in ns
	span   int64 // Policy.Span in ns
	ring   int   // counters per key
	seed   maphash.Seed
	shards [64]memShard
}

type memShard struct {
	mu   sync.Mutex
	keys map[string]*memWindow
}

// memWindow is one key's counters. idx[i] is the absolute bucket number
// counts[i] belongs to, so a stale slot of the ring is recognised and reset.
type memWindow struct {
	idx          []int64
	counts       []int
	blockedUntil int64 // unix ns; 0 = not blocked
}

// NewMemoryStore returns a store enforcing p with clock (nil: the real
// clock). It starts nothing; call Sweep (or Run) to drop idle keys.
func NewMemoryStore(p Policy, clock clockwork.Clock) *MemoryStore {
	if clock == nil {
		clock = clockwork.NewRealClock()
	}
	w := p.BucketWidth()
	s := &MemoryStore{
		policy: p,
		clock:  clock,
		width:  int64(w),
		span:   int64(p.Span()),
		ring:   int((p.Span()+w-1)/w) + 2,
		seed:   maphash.MakeSeed(),
	}
	for i := range s.shards {
		s.shards[i].keys = map[string]*memWindow{}
	}
	return s
}

// Policy returns the policy the store enforces.
func (s *MemoryStore) Policy() Policy { return s.policy }

func (s *MemoryStore) shard(key string) *memShard {
	return &s.shards[maphash.String(s.seed, key)%uint64(len(s.shards))]
}

// Take implements Store.
func (s *MemoryStore) Take(_ context.Context, key string, t Take) (Result, error) {
	now := s.clock.Now().UnixNano()
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	w := s.window(sh, key)
	return s.take(w, now, t.Ahead), nil
}

// take is the whole algorithm: count the live buckets, admit one more if
// there is room and nobody is ahead, and say when slots free.
func (s *MemoryStore) take(w *memWindow, now int64, ahead int) Result {
	limit := s.policy.Limit
	cur := now / s.width
	// A bucket b stops counting at (b+1)*width + span: counted whole until
	// its last possible member has aged out.
	first := floorDiv(now-s.span, s.width)
	used := 0
	for b := first; b <= cur; b++ {
		if i := s.slot(b); w.idx[i] == b {
			used += w.counts[i]
		}
	}
	res := Result{Limit: limit}
	if w.blockedUntil > now {
		res.Remaining = 0
		res.RetryAfter = time.Duration(w.blockedUntil - now)
		res.ResetAfter = res.RetryAfter
		res.Blocked = true
		return res
	}
	if ahead == 0 && used < limit {
		i := s.slot(cur)
		if w.idx[i] != cur {
			w.idx[i], w.counts[i] = cur, 0
		}
		w.counts[i]++
		used++
		res.Allowed = true
	}
	res.Remaining = max(limit-used, 0)
	res.ResetAfter = s.freeAfter(w, now, first, cur, 1)
	if !res.Allowed {
		need := used - limit + 1 + ahead
		if need <= 0 {
			res.RetryAfter = 0
		} else {
			res.RetryAfter = s.freeAfter(w, now, first, cur, need)
		}
	}
	return res
}

// freeAfter returns how long until need counted slots have aged out. When
// fewer are counted it extrapolates a whole span per limit still missing.
func (s *MemoryStore) freeAfter(w *memWindow, now, first, cur int64, need int) time.Duration {
	freed := 0
	var last int64 = -1
	for b := first; b <= cur; b++ {
		i := s.slot(b)
		if w.idx[i] != b || w.counts[i] == 0 {
			continue
		}
		freed += w.counts[i]
		last = b
		if freed >= need {
			return time.Duration((b+1)*s.width + s.span - now)
		}
	}
	if last < 0 {
		return 0
	}
	extra := (need - freed + s.policy.Limit - 1) / s.policy.Limit
	return time.Duration((last+1)*s.width+s.span-now) + time.Duration(extra)*time.Duration(s.span)
}

// window returns key's counters, creating them; sh is locked.
func (s *MemoryStore) window(sh *memShard, key string) *memWindow {
	w := sh.keys[key]
	if w == nil {
		w = &memWindow{idx: make([]int64, s.ring), counts: make([]int, s.ring)}
		for i := range w.idx {
			w.idx[i] = -1
		}
		sh.keys[key] = w
	}
	return w
}

func (s *MemoryStore) slot(b int64) int {
	i := b % int64(s.ring)
	if i < 0 {
		i += int64(s.ring)
	}
	return int(i)
}

// Block implements Store.
func (s *MemoryStore) Block(_ context.Context, key string, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	until := s.clock.Now().Add(d).UnixNano()
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	w := s.window(sh, key)
	if until > w.blockedUntil {
		w.blockedUntil = until
	}
	return nil
}

// Sweep drops every key that counts nothing and is not blocked, and
// returns how many keys remain. Idle tokens therefore cost nothing.
func (s *MemoryStore) Sweep() int {
	now := s.clock.Now().UnixNano()
	first := floorDiv(now-s.span, s.width)
	cur := now / s.width
	left := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		for k, w := range sh.keys {
			if w.blockedUntil <= now && !s.live(w, first, cur) {
				delete(sh.keys, k)
			}
		}
		left += len(sh.keys)
		sh.mu.Unlock()
	}
	return left
}

func (s *MemoryStore) live(w *memWindow, first, cur int64) bool {
	for b := first; b <= cur; b++ {
		if i := s.slot(b); w.idx[i] == b && w.counts[i] > 0 {
			return true
		}
	}
	return false
}

// Run sweeps idle keys every interval until ctx is done.
func (s *MemoryStore) Run(ctx context.Context, interval time.Duration) error {
	every(ctx, s.clock, interval, func() { s.Sweep() })
	return nil
}

// Counted returns, per key, the attempts counted in the current window
// (buckets still live at the store's clock). The Redis store's fallback uses
// it to write back what was admitted while Redis was away.
func (s *MemoryStore) Counted() map[string][]BucketCount {
	now := s.clock.Now().UnixNano()
	first := floorDiv(now-s.span, s.width)
	cur := now / s.width
	out := map[string][]BucketCount{}
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		for k, w := range sh.keys {
			for b := first; b <= cur; b++ {
				if j := s.slot(b); w.idx[j] == b && w.counts[j] > 0 {
					out[k] = append(out[k], BucketCount{Start: time.Unix(0, b*s.width), Count: w.counts[j]})
				}
			}
		}
		sh.mu.Unlock()
	}
	return out
}

// BucketCount is how many attempts one sub-bucket, starting at Start,
// counted.
type BucketCount struct {
	Start time.Time
	Count int
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if (a%b != 0) && ((a < 0) != (b < 0)) {
		q--
	}
	return q
}
