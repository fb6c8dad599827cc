package quota

import (
	"context"
	"time"
)

// What a FallbackStore asks of the store it protects.
//
// A FallbackStore decorates any Store: its calls go through a circuit
// breaker, and while they fail takes are answered by a local MemoryStore
// within a share of the limit. What more it can promise depends on what
// the store can tell it, each an optional interface it looks for once, in
// NewFallbackStore, the way net/http looks for a Flusher:
//
//   - Shared: a store that the replicas share and that can lose its data
//     (Redis: per-key and instance epochs, a heartbeat registry). The
//     fallback keeps shadow counts of what it admitted and writes back
//     what the store does not hold after an outage or a loss; the replicas
//     hold a silent one's share back, and a cut-off replica counts locally
//     only once they surely do. Without it, a replica counts locally at
//     once and nothing is written back: right for a store of one process.
//   - Sharded: a store of several failure domains (a Redis Cluster's
//     masters): a breaker per domain, and a failing domain's keys wait for
//     it rather than count locally while the others keep their counts.
//   - Pinger: a store with a cheap probe; without one the recovery probe is
//     a Peek take.
//
// RedisStore implements all three; MemoryStore none.

// Shared is a Store shared by replicas, on a clock of its own, that can
// lose its data and says so. Times are the store's, in milliseconds.
type Shared interface {
	Store
	// TakeKnowing is Take by a caller that holds counts of the key (see
	// Known), answering into res and, with what the store did beyond it,
	// info. The answer is written, not returned: this call is at the
	// bottom of the request path, and every copy of a Result on the way is
	// stack the request's goroutine keeps while it is in flight (see the
	// limiter's ask).
	TakeKnowing(ctx context.Context, key string, t Take, k Known, res *Result, info *Answer) error
	// WriteBack adds to key the counts the store does not hold (those
	// whose Tag is not the key's epoch) and a block until blockUntil (0:
	// none), and returns the key's epoch after the call ("" when nothing
	// was live to write and the key is gone).
	WriteBack(ctx context.Context, key string, counts []Count, blockUntil int64) (epoch string, err error)
	// InstanceEpoch reads the store's instance epoch: "" when the store
	// lost everything (or nothing made it yet), ok false when the store
	// keeps none.
	InstanceEpoch(ctx context.Context) (epoch string, ok bool, err error)
	// Heartbeat records a replica as alive (see Beat) and says what the
	// registry holds.
	Heartbeat(ctx context.Context, b Beat) (Beats, error)
	// Leave takes replica id out of the registry.
	Leave(ctx context.Context, id string) error
	// CallTimeout bounds every call: a call sent at t has landed by
	// t+CallTimeout or never.
	CallTimeout() time.Duration
}

// Known is what a Shared store's caller holds of a key: the epoch of the
// key's incarnation it holds counts of ("" when none), so that a key the
// store lost admits nothing until they are written back; the instance
// epoch it last saw; and HoldBack, the slots of the limit left to
// replicas that went silent (they may be counting locally).
type Known struct {
	Epoch, Instance string
	HoldBack        int
}

// Answer is what a Shared store's take did beyond its Result, for the
// shadow accounting.
type Answer struct {
	At       int64  // the bucket taken in, or the start reserved from
	Now      int64  // the store's time of the call, ms
	Epoch    string // the key's epoch ("" when the key does not exist)
	Instance string // the instance epoch ("" without one)
	Reserved bool   // At is a reservation's start (ms)
	Lost     bool   // the epoch the caller knew is gone: nothing was admitted
}

// Count is one replica's count at one place (a bucket, or a reservation's
// start), tagged with the epoch of the key it was admitted through (""
// when admitted locally).
type Count struct {
	Tag      string
	At       int64
	Reserved bool
	N        int
}

// Beat is one heartbeat of replica ID: refused (Beats.Stale) if it reaches
// the store after ValidUntil; the others count as silent when not heard
// from for Alive, and are forgotten after Forget.
type Beat struct {
	ID            string
	ValidUntil    int64
	Alive, Forget time.Duration
}

// Beats is what a heartbeat found: how many other replicas are silent,
// how many the registry holds (the caller included), the store's time,
// and whether the beat came too late to count.
type Beats struct {
	Silent, Members int
	Now             int64
	Stale           bool
}

// Sharded is a store of several failure domains.
type Sharded interface {
	// Sharded reports whether the store has more than one domain now (a
	// Redis Cluster client; false for one server).
	Sharded() bool
	// Domain names the domain serving key ("" for the replica registry),
	// looking it up without I/O when it can ("?" when it cannot say).
	Domain(ctx context.Context, key string) string
	// Refresh re-reads where the keys live after a domain failed.
	Refresh(ctx context.Context)
}

// Pinger is a store with a cheap probe.
type Pinger interface {
	Ping(ctx context.Context) error
}

// Every store of this package says what it is.
var (
	_ Shared  = (*RedisStore)(nil)
	_ Sharded = (*RedisStore)(nil)
	_ Pinger  = (*RedisStore)(nil)
	_ Store   = (*MemoryStore)(nil)
	_ Store   = (*FallbackStore)(nil)
)
