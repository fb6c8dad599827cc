package quota

import (
	"context"
	"hash/maphash"
	"math"
	"sync"
	"sync/atomic"
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

	// n is the number of keys in all shards; Policy.MaxKeys bounds it.
	n atomic.Int64
	// fullUntil (unix ns) is, once every tracked key was found to count
	// something with n at the bound, when the first of them frees: new
	// keys are refused until then without scanning again.
	fullUntil atomic.Int64
	reclaimMu sync.Mutex // one reclaiming scan at a time
}

type memShard struct {
	mu   sync.Mutex
	keys map[string]*counts
}

// NewMemoryStore returns a store enforcing p with clock (nil: the real
// clock). It starts nothing; call Sweep (or Run) to drop idle keys. It
// panics if p does not Validate.
func NewMemoryStore(p Policy, clock clockwork.Clock) *MemoryStore {
	p.mustValidate("NewMemoryStore")
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
	c := sh.keys[key]
	if c == nil && t.Peek {
		sh.mu.Unlock()
		return Result{Limit: s.policy.Limit, Remaining: s.policy.Limit}, nil
	}
	if c == nil && !s.reserveKey() {
		// At the bound: make room among all keys (without this shard's
		// lock, which the scan takes in turn), then try once more.
		sh.mu.Unlock()
		if free := s.reclaim(now); free > 0 {
			return Result{Limit: s.policy.Limit, Full: true, RetryAfter: time.Duration(free)}, nil
		}
		sh.mu.Lock()
		if c = sh.keys[key]; c == nil && !s.reserveKey() {
			sh.mu.Unlock()
			return Result{Limit: s.policy.Limit, Full: true, RetryAfter: time.Second}, nil
		}
	}
	defer sh.mu.Unlock()
	if c == nil {
		c = &counts{}
		sh.keys[key] = c
	}
	c.prune(s.geo, now)
	// A memory store does not lease: a take is one slot counted now.
	v := decide(s.geo, c, ask{now: now, wait: int64(max(t.Wait, 0)), notBefore: int64(max(t.NotBefore, 0)), peek: t.Peek})
	return s.result(&v), nil
}

func (s *MemoryStore) result(v *verdict) Result {
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

// reserveKey counts one more key if Policy.MaxKeys allows it.
func (s *MemoryStore) reserveKey() bool {
	if s.n.Add(1) <= int64(s.policy.MaxKeys) || s.policy.MaxKeys <= 0 {
		return true
	}
	s.n.Add(-1)
	return false
}

// reclaim drops every key that counts nothing and is not blocked, when
// the store holds Policy.MaxKeys keys. It returns 0 when there is room
// now, else how long until the first tracked key frees (at least 1 s, the
// time before the next scan).
func (s *MemoryStore) reclaim(now int64) int64 {
	if until := s.fullUntil.Load(); until > now {
		return until - now
	}
	s.reclaimMu.Lock()
	defer s.reclaimMu.Unlock()
	if until := s.fullUntil.Load(); until > now {
		return until - now // another scan just ran
	}
	first := s.sweep(now)
	if s.n.Load() < int64(s.policy.MaxKeys) {
		return 0
	}
	until := max(first, now+int64(time.Second))
	s.fullUntil.Store(until)
	return until - now
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
	if _, ok := sh.keys[key]; ok {
		delete(sh.keys, key)
		s.n.Add(-1)
		s.fullUntil.Store(0) // room now: the next new key need not wait
	}
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
		// Beyond MaxKeys if need be: the upstream said the quota is gone.
		c = &counts{}
		sh.keys[key] = c
		s.n.Add(1)
	}
	c.blockedUntil = max(c.blockedUntil, until)
	return nil
}

// Sweep drops every key that counts nothing and is not blocked, and
// returns how many keys remain. Idle tokens therefore cost nothing.
func (s *MemoryStore) Sweep() int {
	s.sweep(s.clock.Now().UnixNano())
	return int(s.n.Load())
}

// sweep drops, at now, every key that counts nothing and is not blocked,
// and returns when the first of the others frees (math.MaxInt64: none).
func (s *MemoryStore) sweep(now int64) int64 {
	first := int64(math.MaxInt64)
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		for k, c := range sh.keys {
			c.prune(s.geo, now)
			if c.blockedUntil <= now && c.empty() {
				delete(sh.keys, k)
				s.n.Add(-1)
				continue
			}
			first = min(first, s.freeAt(c))
		}
		sh.mu.Unlock()
	}
	return first
}

// Run sweeps idle keys every interval until ctx is done.
func (s *MemoryStore) Run(ctx context.Context, interval time.Duration) error {
	Every(ctx, s.clock, interval, func() { s.Sweep() })
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
