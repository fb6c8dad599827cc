// Package quota holds the quota stores: each counts attempts per key in a
// rolling window (window.go states the algorithm once): MemoryStore in
// this process, RedisStore shared by every replica (its Lua scripts mirror
// window.go), and FallbackStore, a decorator over any Store that puts it
// behind a circuit breaker with local counts while it is away (and, for a
// Shared store such as Redis, writes them back: shared.go). internal/limiter
// drives them through Store.
//
// It knows nothing of HTTP or of the gateway above it. Keys are opaque
// strings (the proxy passes a hash of the access token, never the token).
package quota

import (
	"context"
	"fmt"
	"time"

	"github.com/jonboulle/clockwork"
)

// Policy is the quota every key gets: never more than Limit attempts in any
// rolling Window. A counted attempt occupies its slot for Window+Margin after
// admission, because the upstream counts it when it receives it, some time
// after the gateway admitted it; Margin must cover that delay.
//
// Zero values follow the convention of every Config and Options struct
// of retry, limiter, quota and proxy (docs/design.md): a zero field means
// none (the feature off, as the field says), never a hidden default; nil
// interfaces mean what the field says; Required fields are refused.
//
// A policy has no Default function: Limit and Window are the caller's,
// and Buckets' default is the constant DefaultBuckets. The stores' New
// functions panic on a policy Validate refuses.
type Policy struct {
	// Limit and Window are the quota. Required: both positive.
	Limit  int
	Window time.Duration
	// Margin is how much longer than Window a slot stays counted; 0: none.
	Margin time.Duration
	// Buckets is how many sub-buckets a window is cut into (see
	// DefaultBuckets). Required: between 1 and 3600.
	Buckets int
	// MaxKeys bounds the keys a memory store tracks (quota.max_keys), so
	// made-up tokens cannot grow its memory without bound; 0: no bound. A
	// key still counting something is never dropped to make room: a new
	// key is refused (Result.Full) until one frees.
	MaxKeys int
}

// DefaultBuckets is the default number of sub-buckets a window is cut
// into. Each store counts the oldest live bucket whole, which can never
// over-admit and costs at most one bucket (1/DefaultBuckets) of the quota.
const DefaultBuckets = 60

// Validate reports a policy that cannot be enforced, naming the field.
func (p Policy) Validate() error {
	switch {
	case p.Limit <= 0:
		return &OptionError{Option: "Limit", Msg: fmt.Sprintf("must be positive, got %d", p.Limit)}
	case p.Window <= 0:
		return &OptionError{Option: "Window", Msg: fmt.Sprintf("must be positive, got %s", p.Window)}
	case p.Margin < 0:
		return &OptionError{Option: "Margin", Msg: fmt.Sprintf("must not be negative, got %s", p.Margin)}
	case p.Buckets < 1 || p.Buckets > 3600:
		return &OptionError{Option: "Buckets", Msg: fmt.Sprintf("must be between 1 and 3600, got %d", p.Buckets)}
	case p.MaxKeys < 0:
		return &OptionError{Option: "MaxKeys", Msg: fmt.Sprintf("must not be negative, got %d", p.MaxKeys)}
	}
	return nil
}

// mustValidate panics, naming the constructor, if Validate refuses p: a
// store cannot count under a policy it cannot enforce (a zero Buckets
// would divide by zero on the first take instead).
func (p Policy) mustValidate(constructor string) {
	if err := p.Validate(); err != nil {
		panic("quota: " + constructor + ": Policy." + err.Error())
	}
}

// Span is how long one counted attempt occupies its slot.
func (p Policy) Span() time.Duration { return p.Window + p.Margin }

// BucketWidth is the width of one sub-bucket: Span cut into Buckets parts,
// rounded up to a whole millisecond so Redis (which counts in milliseconds)
// and memory agree. (Buckets below 1, which Validate refuses, cut nothing:
// one bucket, not a division by zero.)
func (p Policy) BucketWidth() time.Duration {
	n := time.Duration(max(p.Buckets, 1))
	w := (p.Span() + n - 1) / n
	if r := w % time.Millisecond; r != 0 {
		w += time.Millisecond - r
	}
	if w <= 0 {
		w = time.Millisecond
	}
	return w
}

// Take asks a store for one slot: now, or reserved for later.
type Take struct {
	// Wait is how long the caller can wait for its slot. When no slot is
	// free now, the store reserves the earliest one that frees within
	// Wait (Result.Delay), counted at once in the same atomic call, so
	// every replica sees it and none promises it again. 0: now or never.
	Wait time.Duration
	// NotBefore is when the caller would rather send (its smoothing turn):
	// a slot at or after it is chosen when one fits in Wait, an earlier one
	// otherwise. Smoothing never makes the quota refuse.
	NotBefore time.Duration
	// Hold > 0 asks for a lease: up to Want slots (at least one) counted at
	// once, for the caller and for requests of the same key that follow
	// within Hold. The store counts every slot of a lease as if used Hold
	// after the call, so a slot used at any moment within Hold of the call
	// is held for a whole Span after that use, like any admission, and
	// says in Result.Granted how many it counted. A lease is granted only
	// for a slot free now (no NotBefore, no reservation); a store that does
	// not lease (MemoryStore) answers an ordinary take with Granted 0.
	Want int
	Hold time.Duration
	// Peek counts nothing: the answer only reports the key's quota (the
	// RateLimit headers of a request that is not charged).
	Peek bool
}

// Result is a store's answer. A denial is a result, not an error.
type Result struct {
	// Allowed: a slot was counted for the caller, to be used from Delay
	// after the answer arrived until Usable after the call was sent.
	Allowed bool
	// Blocked is set when the key was refused because the upstream said its
	// quota is exhausted (see Store.Block), not because of local counting.
	Blocked bool
	// Settling is set when the store cannot place any slot until
	// RetryAfter: it lost its data and waits for the replicas' counts to
	// be written back. The caller asks again then, if it can wait.
	Settling bool
	// Full is set when the key is new and the store tracks Policy.MaxKeys
	// keys that still count something: RetryAfter is when the first of
	// them frees. Nothing was counted.
	Full bool
	// (The flags are together: a Result is copied by value on every
	// admission, and padding is stack the request's goroutine keeps.)
	Limit int
	// Remaining is how many more slots the key could be granted now
	// without taking one counted or reserved for later (by any replica).
	Remaining int
	// RetryAfter is, when Allowed is false, how long until a slot could be
	// reserved, counting everything counted and reserved for the key.
	RetryAfter time.Duration
	// ResetAfter is how long until the oldest counted attempt stops
	// counting, that is until Remaining next grows (0 when nothing counts).
	ResetAfter time.Duration
	// Granted is how many slots an allowed lease counted (see Take.Hold);
	// 0 for an ordinary take.
	Granted int
	// Delay is how long after the answer the slot may be used (0: now; a
	// reservation otherwise), and Usable how long after the call it must
	// have been used: the end of the sub-bucket it is counted in (of
	// Take.Hold for a lease). A slot used later than that is not covered.
	Delay, Usable time.Duration
	// Slot names what was counted, for Store.Release.
	Slot Reservation
}

// Reservation names one slot a store counted for a caller, so that a caller
// who does not use it can give it back (Store.Release). Only the store that
// made it reads its fields.
type Reservation struct {
	at       int64  // taken: its sub-bucket; reserved: its start (store units)
	epoch    string // Redis: the key's incarnation that counted it
	shadow   int64  // FallbackStore: the Redis-time bucket of a local count
	reserved bool   // a reservation (counted from its start) or a take
	local    bool   // FallbackStore: counted by the local store
	ok       bool   // zero Reservation: nothing to release
}

// Held reports whether r names a slot to give back (the zero Reservation
// names none).
func (r Reservation) Held() bool { return r.ok }

// Store counts attempts per key. Implementations are safe for concurrent
// use, make one atomic check-and-count per Take, and use one clock of their
// own (the injected clock in memory, Redis TIME in Redis) so that clock skew
// between replicas cannot over-admit.
type Store interface {
	Take(ctx context.Context, key string, t Take) (Result, error)
	// Release gives back a slot a Take counted that was never used (the
	// client left while waiting for it). It only ever lowers a count, and
	// only one this store made: a release that fails leaves the slot
	// counted until it ages out, which costs quota, never exceeds it.
	Release(ctx context.Context, key string, r Reservation) error
	// Block refuses every Take for key for d: the upstream answered 20005
	// (or asked to pause with Retry-After) although the count said there was
	// room.
	Block(ctx context.Context, key string, d time.Duration) error
}

// Forgetter is a Store that can drop a key's counts at once: the upstream
// answered its token 10003 or 20007, so the counts guard no quota, and a
// stream of made-up tokens leaves nothing behind. The limiter asks for it
// when the store has it.
type Forgetter interface {
	Forget(key string)
}

// Every calls fn every interval on clock until ctx is done: the one loop
// behind the sweepers' Run methods.
func Every(ctx context.Context, clock clockwork.Clock, interval time.Duration, fn func()) {
	t := clock.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.Chan():
			fn()
		}
	}
}
