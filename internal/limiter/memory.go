package limiter

import (
	"context"
	"hash/maphash"
	"math"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
)

// MemoryStore keeps each key's window in this process: the quota store of a
// single gateway, and the fallback of every replica while Redis is away.
// It runs window.go's algorithm on its clock, in nanoseconds.
//
// A key holds only its live counts (at most one per sub-bucket for takes,
// one per distinct start for reservations, which are as many as the
// requests waiting), so an idle key costs nothing once Sweep has dropped it.
type MemoryStore struct {
	policy Policy
	geo    geometry
	clock  clockwork.Clock
	seed   maphash.Seed
	shards [64]memShard
}

type memShard struct {
	mu   sync.Mutex
	keys map[string]*counts
	// fullUntil (unix ns) is, once the shard was found full of keys that
	// count something, when the first of them frees: new keys are refused
	// until then without scanning again (0: not full).
	fullUntil int64
}

// NewMemoryStore returns a store enforcing p with clock (nil: the real
// clock). It starts nothing; call Sweep (or Run) to drop idle keys.
func NewMemoryStore(p Policy, clock clockwork.Clock) *MemoryStore {
	if clock == nil {
		clock = clockwork.NewRealClock()
	}
	s := &MemoryStore{
		policy: p,
		geo:    geometry{limit: p.Limit, width: int64(p.BucketWidth()), span: int64(p.Span())},
		clock:  clock,
		seed:   maphash.MakeSeed(),
	}
	for i := range s.shards {
		s.shards[i].keys = map[string]*counts{}
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
	c := sh.keys[key]
	if c == nil {
		if t.Peek {
			return Result{Limit: s.policy.Limit, Remaining: s.policy.Limit}, nil
		}
		if free := s.room(sh, now); free > 0 {
			return Result{Limit: s.policy.Limit, Full: true, RetryAfter: time.Duration(free)}, nil
		}
		c = &counts{}
		sh.keys[key] = c
	}
	c.prune(s.geo, now)
	// A memory store does not lease: a take is one slot counted now.
	v := decide(s.geo, c, ask{now: now, wait: int64(max(t.Wait, 0)), notBefore: int64(max(t.NotBefore, 0)), peek: t.Peek})
	return s.result(v), nil
}

func (s *MemoryStore) result(v verdict) Result {
	res := Result{
		Allowed:    v.allowed,
		Limit:      s.policy.Limit,
		Remaining:  v.remaining,
		RetryAfter: time.Duration(v.retry),
		ResetAfter: time.Duration(v.reset),
		Blocked:    v.blocked,
	}
	if v.allowed {
		res.Delay, res.Usable = time.Duration(v.delay), time.Duration(v.usable)
		res.Slot = Reservation{at: v.at, reserved: v.reserved, ok: true}
	}
	return res
}

// room makes room for a new key in sh (locked) when it holds its share of
// Policy.MaxKeys: keys that count nothing and are not blocked are dropped.
// It returns 0 when there is room, else how long until a key frees.
func (s *MemoryStore) room(sh *memShard, now int64) int64 {
	if s.policy.MaxKeys <= 0 || len(sh.keys) < s.perShard() {
		return 0
	}
	if sh.fullUntil > now {
		return sh.fullUntil - now
	}
	first := int64(math.MaxInt64)
	for k, c := range sh.keys {
		c.prune(s.geo, now)
		if c.blockedUntil <= now && c.empty() {
			delete(sh.keys, k)
			continue
		}
		first = min(first, s.freeAt(c))
	}
	if len(sh.keys) < s.perShard() {
		sh.fullUntil = 0
		return 0
	}
	sh.fullUntil = max(first, now+int64(time.Second))
	return sh.fullUntil - now
}

// perShard is each shard's share of Policy.MaxKeys.
func (s *MemoryStore) perShard() int {
	return max(1, (s.policy.MaxKeys+len(s.shards)-1)/len(s.shards))
}

// freeAt is when c will count nothing and block nothing.
func (s *MemoryStore) freeAt(c *counts) int64 {
	t := c.blockedUntil
	for _, x := range c.taken {
		t = max(t, s.geo.end(x.at))
	}
	for _, x := range c.reserved {
		t = max(t, s.geo.end(s.geo.bucket(x.at)))
	}
	return t
}

// Forget implements Forgetter.
func (s *MemoryStore) Forget(key string) {
	sh := s.shard(key)
	sh.mu.Lock()
	delete(sh.keys, key)
	sh.fullUntil = 0
	sh.mu.Unlock()
}

// Release implements Store.
func (s *MemoryStore) Release(_ context.Context, key string, r Reservation) error {
	if !r.ok {
		return nil
	}
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if c := sh.keys[key]; c != nil {
		if r.reserved {
			c.reserved, _ = sub(c.reserved, r.at, 1)
		} else {
			c.taken, _ = sub(c.taken, r.at, 1)
		}
	}
	return nil
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
	c := sh.keys[key]
	if c == nil {
		c = &counts{}
		sh.keys[key] = c
	}
	c.blockedUntil = max(c.blockedUntil, until)
	return nil
}

// Sweep drops every key that counts nothing and is not blocked, and
// returns how many keys remain. Idle tokens therefore cost nothing.
func (s *MemoryStore) Sweep() int {
	now := s.clock.Now().UnixNano()
	left := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		for k, c := range sh.keys {
			c.prune(s.geo, now)
			if c.blockedUntil <= now && c.empty() {
				delete(sh.keys, k)
			}
		}
		left += len(sh.keys)
		sh.mu.Unlock()
	}
	return left
}

// Run sweeps idle keys every interval until ctx is done.
func (s *MemoryStore) Run(ctx context.Context, interval time.Duration) error {
	every(ctx, s.clock, interval, func() { s.Sweep() })
	return nil
}

// Counted returns, per key, the slots counted and still occupied at the
// store's clock: takes per sub-bucket, then reservations per start, in
// time order (tests read what a scenario spent).
func (s *MemoryStore) Counted() map[string][]BucketCount {
	now := s.clock.Now().UnixNano()
	out := map[string][]BucketCount{}
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		for k, c := range sh.keys {
			c.prune(s.geo, now)
			for _, x := range c.taken {
				out[k] = append(out[k], BucketCount{Start: time.Unix(0, x.at*s.geo.width), Count: x.n})
			}
			for _, x := range c.reserved {
				out[k] = append(out[k], BucketCount{Start: time.Unix(0, x.at), Count: x.n, Reserved: true})
			}
		}
		sh.mu.Unlock()
	}
	return out
}

// BucketCount is how many slots one sub-bucket (starting at Start) took,
// or, when Reserved, how many were reserved to start at Start.
type BucketCount struct {
	Start    time.Time
	Count    int
	Reserved bool
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if (a%b != 0) && ((a < 0) != (b < 0)) {
		q--
	}
	return q
}
