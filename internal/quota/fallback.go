package quota

import (
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/sony/gobreaker/v2"
)

// ErrStoreUnavailable is wrapped by the errors a FallbackStore returns when
// Redis cannot answer and quota.on_store_failure is "reject".
var ErrStoreUnavailable = errors.New("limiter: quota store unavailable")

const (
	// MinForget is the least time the replicas hold a silent replica's
	// share back (three spans when longer): a replica cut off from Redis
	// counts locally until then, less a span for its counts to age out.
	MinForget = 10 * time.Minute

	// probeKey is the key a primary without Ping is probed with (a Peek
	// take); keys are hashes, which never look like it.
	probeKey = "fallback:probe"
)

// Operations a FallbackObserver's StoreError names (the op label of
// store_errors_total).
const (
	StoreOpTake      = "take"      // a Take through Redis
	StoreOpBlock     = "block"     // a Block through Redis
	StoreOpPing      = "ping"      // the recovery probe while degraded
	StoreOpReconcile = "reconcile" // a write-back of counts Redis does not hold
	StoreOpRelease   = "release"   // giving back a slot a client left unused
	StoreOpHeartbeat = "heartbeat" // a replica's heartbeat into Redis
)

// StoreOps lists every op StoreError may name, to pre-initialise metrics.
var StoreOps = []string{StoreOpTake, StoreOpBlock, StoreOpPing, StoreOpReconcile, StoreOpRelease, StoreOpHeartbeat}

// FallbackObserver is told when the quota store fails and when the local
// fallback takes over or hands back. cmd/gateway logs these and exports
// store_errors_total{op} and store_fallback_active. Calls are synchronous
// and may come from under the circuit breaker's lock: implementations must
// be quick and must not call back into the store.
type FallbackObserver interface {
	// StoreError is called for each failed Redis call with one of the
	// StoreOp constants and the error (which names no secret: go-redis
	// errors carry addresses and Redis's replies, never credentials).
	StoreError(op string, err error)
	// FallbackActive is called with true when takes start being answered
	// locally (Redis unavailable) and with false when Redis has them again.
	FallbackActive(active bool)
}

// FallbackOptions tunes a FallbackStore.
//
// Zero values follow the convention of every Config and Options struct
// of retry, limiter, quota and proxy (docs/design.md): a zero field means
// none (the feature off, as the field says), never a hidden default; nil
// interfaces mean what the field says; Required fields are refused.
//
// DefaultFallbackOptions returns this package's defaults.
type FallbackOptions struct {
	// Share is the fraction of the limit each replica may admit on its own
	// while Redis is away (quota.fallback_share): with n replicas, 1/n keeps
	// the total within the limit. Required: in (0, 1]; a replica that
	// must admit nothing on its own sets Reject.
	Share float64
	// Reject makes takes fail with an error wrapping ErrStoreUnavailable
	// instead of answering locally (quota.on_store_failure = "reject").
	Reject bool
	// Clock is the local clock (nil: the real clock) of the local store,
	// the shadow accounting and Run.
	Clock clockwork.Clock
	// Observer is told about errors and fallback changes (nil: nobody).
	Observer FallbackObserver

	// FailuresToOpen is how many consecutive Redis failures open the
	// circuit breaker. Required: at least 1.
	FailuresToOpen int
	// OpenFor is how long the breaker stays open before Run probes Redis
	// again. It runs on the real clock: gobreaker has no injectable one.
	// Required: positive (gobreaker would read 0 as a minute).
	OpenFor time.Duration
	// ProbeEvery is Run's tick: how often it looks whether a probe is due
	// and reconciles what is pending. Required: positive.
	ProbeEvery time.Duration
}

// DefaultFallbackOptions returns a FallbackStore's defaults: half the
// limit per replica while Redis is away, the breaker opened by 3
// consecutive failures for 1s, probed every 250ms (a quarter of OpenFor).
func DefaultFallbackOptions() FallbackOptions {
	return FallbackOptions{Share: 0.5, FailuresToOpen: 3, OpenFor: time.Second, ProbeEvery: 250 * time.Millisecond}
}

// Validate reports what NewFallbackStore refuses, naming the fields.
func (o FallbackOptions) Validate() error {
	var errs []error
	if !(o.Share > 0 && o.Share <= 1) {
		errs = append(errs, &OptionError{Option: "Share", Msg: fmt.Sprintf("must be in (0, 1], got %v", o.Share)})
	}
	if o.FailuresToOpen < 1 {
		errs = append(errs, &OptionError{Option: "FailuresToOpen", Msg: fmt.Sprintf("must be at least 1, got %d", o.FailuresToOpen)})
	}
	if o.OpenFor <= 0 {
		errs = append(errs, &OptionError{Option: "OpenFor", Msg: fmt.Sprintf("must be positive, got %s", o.OpenFor)})
	}
	if o.ProbeEvery <= 0 {
		errs = append(errs, &OptionError{Option: "ProbeEvery", Msg: fmt.Sprintf("must be positive, got %s", o.ProbeEvery)})
	}
	return errors.Join(errs...)
}

// FallbackStore makes a quota store safe against its outages: a decorator
// over any Store (see shared.go for what it does with what the store can
// tell). Over a RedisStore, the Shared store of a fleet, it promises this:
//
// # The quota bound: who may spend which slots, under which fault
//
// L is the limit, n the replicas sharing Redis, s = quota.fallback_share
// with n*s <= 1 (the operator's rule), h = floor(s*L) a replica's local
// share. Counts occupy slots as window.go says; what the upstream can see
// in a rolling window is at most the slots occupied at one moment, in
// Redis and in every replica's local store together.
//
//   - Redis answers every replica: only the take script places slots, on
//     one clock, so Redis's occupancy stays <= L - k*h, where k is the
//     number of replicas silent in the heartbeat registry (below). Leased
//     and reserved slots are counted when granted.
//   - One replica R cut off, the others not (a partition, timeouts under
//     load). R stops heartbeating. The others see it silent alive (4 probe
//     ticks) after its last heartbeat could have landed (a heartbeat that
//     reaches Redis after its own deadline is refused by the script), and
//     from their next heartbeat on leave h slots to it. R counts locally
//     only after that (localFrom; until then a take is told to ask again),
//     at most h, and, for the span after its last answer for a key, at most
//     s times the Remaining Redis gave it then. Sum: (L - h) + h = L. The
//     one thing not covered: slots the others placed, without knowing R
//     was cut off, in the second or so before they held its share back, if
//     they took more than (1-s) of what R was told remained; under demand
//     above the quota that remainder is about 0, and R's cap with it.
//   - The others forget a silent replica forget (three spans, at least
//     MinForget) after its last heartbeat; R stops counting locally a span
//     before that (localUntil; then it answers unavailable), so its local
//     counts have aged out when the others take its share back. A replica
//     that stops gracefully leaves the registry at once; one that crashed
//     is held back for until forgotten (quota lost, never exceeded).
//   - Every replica cut off (Redis down): none heartbeats, each counts
//     locally after the same wait, within h and the Remaining cap: n*h <= L.
//   - Alone (the last heartbeat found no other replica, or none was made):
//     local counting at once, within h, as no other admits.
//   - Redis loses data (restart without persistence, FLUSHALL, failover to
//     a replica that never got the key): a take that finds a key without
//     the epoch this replica holds counts of admits nothing; the replica
//     writes its counts back first. A missing instance key (RedisOptions
//     Settle) means everything was lost: no slot is placed for Settle while
//     every replica, told by its next take or probe, writes back all it
//     holds. After that, Redis holds every live count again.
//
// Every call to Redis has the RedisStore's short timeout and goes through a
// circuit breaker (github.com/sony/gobreaker): after FailuresToOpen
// consecutive failures it opens, and from then on takes are answered from a
// local MemoryStore at once, without touching Redis, so a Redis that stops
// answering without closing its sockets holds no request. A call that fails
// before the breaker opens is answered locally too: no request is lost.
//
// Local quota: each replica assumes Share of the limit
// (floor(Share*Limit), at least 1: rounding up would let n replicas with
// Share = 1/n exceed the limit together) and, for the span after Redis last
// answered for a key, no more than floor(Share * the Remaining Redis gave
// then) for that key, since the other replicas are spending the same
// remainder.
//
// Recovery: while degraded, Run probes Redis (PING through the half-open
// breaker) even without traffic; once Redis answers it reconciles, then
// hands takes back to Redis. Reconciliation writes back, per key and in one
// script call, what this replica admitted that Redis does not hold. For
// that the store keeps shadow counts of its own admissions in the current
// window, per Redis-time bucket, each tagged with the epoch of the Redis
// key that counted it, or with "" when it was admitted locally. Every key
// HASH carries an epoch created with it; when Redis restarted empty, was
// flushed, failed over to a replica that never got the key, or evicted it,
// the key is gone or has a new epoch, so the write-back script adds every
// live count whose tag differs from the key's current epoch: the counts
// made locally during the outage always, and those admitted through Redis
// before the outage exactly when Redis lost them. The epoch is per key, so
// the detection also works per node in a Redis Cluster, and a Take that
// sees an unexpected epoch (Redis restarted between two takes, the breaker
// never opened) schedules the same write-back. Local times are translated
// to Redis time with the offset seen on the last successful call, measured
// from before the call so the estimate errs late (a later bucket counts
// longer, never shorter). The shadow holds, per key, at most the live
// buckets of the epochs still in play and is dropped a window after the
// key's last use.
//
// Run must be running for recovery, reconciliation and sweeping; the
// constructor starts nothing.
type FallbackStore struct {
	primary Store
	// What primary can tell beyond Store (shared.go), nil when it cannot.
	shared   Shared
	sharded  Sharded
	pinger   Pinger
	local    *MemoryStore
	policy   Policy
	share    float64
	reject   bool
	clock    clockwork.Clock
	obs      FallbackObserver
	cb       *gobreaker.CircuitBreaker[struct{}]
	failures uint32        // consecutive failures that open a breaker
	openFor  time.Duration // how long a breaker stays open
	// nodes are the breakers of a sharded primary's domains (breakerFor).
	nodeMu     sync.Mutex
	nodes      map[string]*gobreaker.CircuitBreaker[struct{}]
	probeEvery time.Duration
	width      int64 // bucket width, ms
	span       int64 // span, ms
	capFor     time.Duration
	maxCounts  int // shadow entries per key before an inline prune

	degraded atomic.Bool
	answered atomic.Bool  // Redis answered a call (Answered)
	lostKeys atomic.Int64 // takes that found a key Redis had lost (LostKeys)
	// instance is the instance epoch last seen (a string), lostInstances
	// how often a new one followed another.
	instance      atomic.Value
	lostInstances atomic.Int64
	since         atomic.Int64 // local unix ns when the fallback became active
	lastErr       atomic.Pointer[errBox]
	offset        atomic.Int64 // Redis ms minus local ms, from the last success

	// The heartbeats (see the quota bound above): this replica's id, the
	// latest moment (local unix ns) one of its heartbeats may have reached
	// Redis, how many replicas its last heartbeat found (itself included),
	// how many of the others were silent, and, once degraded, the span of
	// local time in which it may count locally.
	id                    string
	alive, forget         time.Duration
	beatUntil, beatOK     atomic.Int64
	members, silent       atomic.Int64
	localFrom, localUntil atomic.Int64

	// switchMu is held shared by local takes and exclusively while the
	// last reconciliation pass hands takes back to Redis, so no local
	// admission slips in between the write-back and the switch.
	switchMu sync.RWMutex
	wake     chan struct{}

	dirtyMu sync.Mutex
	dirty   map[string]struct{} // keys with counts Redis does not hold

	seed   maphash.Seed
	shards [64]fbShard
}

type errBox struct{ err error }

type fbShard struct {
	mu   sync.Mutex
	keys map[string]*fbKey
}

// fbKey is what the fallback remembers of one key.
type fbKey struct {
	epoch   string // the Redis key's epoch in its latest answer
	retired string // the epoch before: late answers carrying it were lost
	// counts are this replica's admissions per tag (epoch or "" for
	// local) and Redis-time bucket.
	counts        map[countKey]int
	lastRemaining int   // Remaining of Redis's last unblocked answer
	lastAt        int64 // local unix ns of that answer (0: none)
	localSince    int   // local admissions since lastAt
	blockUntil    int64 // Redis ms: a block Redis has not seen (0: none)
	lastUsed      int64 // local unix ns
}

// countKey names shadow counts: tag as above, and where they are counted
// on Redis's clock: a bucket, or a reservation's start in ms.
type countKey struct {
	tag      string
	bucket   int64
	reserved bool
}

// NewFallbackStore wraps primary with a local store and a circuit breaker,
// and uses what primary can tell beyond Store (Shared, Sharded, Pinger:
// see shared.go). p must be primary's policy. It does no I/O and starts
// nothing: call Run. It panics if p or opts does not Validate.
func NewFallbackStore(primary Store, p Policy, opts FallbackOptions) *FallbackStore {
	p.mustValidate("NewFallbackStore")
	if err := opts.Validate(); err != nil {
		panic("quota: NewFallbackStore: FallbackOptions." + strings.ReplaceAll(err.Error(), "\n", "; FallbackOptions."))
	}
	if opts.Clock == nil {
		opts.Clock = clockwork.NewRealClock()
	}
	if opts.Observer == nil {
		opts.Observer = nopFallbackObserver{}
	}
	lp := p
	lp.Limit = max(int(math.Floor(opts.Share*float64(p.Limit))), 1)
	f := &FallbackStore{
		primary:    primary,
		local:      NewMemoryStore(lp, opts.Clock),
		policy:     p,
		share:      opts.Share,
		reject:     opts.Reject,
		clock:      opts.Clock,
		obs:        opts.Observer,
		probeEvery: opts.ProbeEvery,
		width:      p.BucketWidth().Milliseconds(),
		span:       ceilMillis(p.Span()),
		capFor:     p.Span() + p.BucketWidth(),
		maxCounts:  4 * (int((p.Span()+p.BucketWidth()-1)/p.BucketWidth()) + 2),
		wake:       make(chan struct{}, 1),
		dirty:      map[string]struct{}{},
		seed:       maphash.MakeSeed(),
		id:         rand.Text(),
		alive:      4 * opts.ProbeEvery,
		forget:     max(3*p.Span(), MinForget),
	}
	for i := range f.shards {
		f.shards[i].keys = map[string]*fbKey{}
	}
	f.failures, f.openFor = uint32(opts.FailuresToOpen), opts.OpenFor
	f.shared, _ = primary.(Shared)
	f.pinger, _ = primary.(Pinger)
	if sh, ok := primary.(Sharded); ok && sh.Sharded() {
		f.sharded, f.nodes = sh, map[string]*gobreaker.CircuitBreaker[struct{}]{}
	}
	f.cb = gobreaker.NewCircuitBreaker[struct{}](f.breakerSettings("redis-quota", func(to gobreaker.State) {
		if to == gobreaker.StateOpen {
			f.enterDegraded()
		}
	}))
	return f
}

// breakerSettings are the settings of every breaker of the store.
func (f *FallbackStore) breakerSettings(name string, changed func(to gobreaker.State)) gobreaker.Settings {
	return gobreaker.Settings{
		Name:          name,
		MaxRequests:   1,
		Timeout:       f.openFor,
		ReadyToTrip:   func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= f.failures },
		IsExcluded:    func(err error) bool { return err != nil && errors.As(err, new(callerGone)) },
		OnStateChange: func(_ string, _, to gobreaker.State) { changed(to) },
	}
}

// callerGone marks an error caused by the caller's context, not by Redis:
// the breaker ignores it.
type callerGone struct{ err error }

func (e callerGone) Error() string { return e.err.Error() }
func (e callerGone) Unwrap() error { return e.err }

// Local returns the local store used while Redis is away.
func (f *FallbackStore) Local() *MemoryStore { return f.local }

// Degraded reports whether takes are answered without Redis (locally, or
// refused in reject mode): /readyz detail and the store_fallback_active
// gauge.
func (f *FallbackStore) Degraded() bool { return f.degraded.Load() }

// Status describes the store for /readyz: "redis", or "local (redis
// unavailable since …)", or "reject (redis unavailable since …)".
func (f *FallbackStore) Status() string {
	if !f.degraded.Load() {
		if !f.answered.Load() {
			return "redis (not answered yet" + f.lastReason() + ")"
		}
		return "redis"
	}
	mode := "local"
	if f.reject {
		mode = "reject"
	}
	return mode + " (redis unavailable since " + time.Unix(0, f.since.Load()).UTC().Format(time.RFC3339) + f.lastReason() + ")"
}

// Answered reports whether Redis has answered a call since the store was
// made: until then /readyz is not ready, unless a cold start on local
// counts was asked for (quota.on_store_failure = "local").
func (f *FallbackStore) Answered() bool { return f.answered.Load() }

// lastReason is ": <last Redis error>" for Status, or "".
func (f *FallbackStore) lastReason() string {
	if e := f.lastErr.Load(); e != nil {
		return "; last error: " + e.err.Error()
	}
	return ""
}

// Take implements Store: through Redis while it answers, locally (or with
// an error in reject mode) otherwise. A caller whose context ends gets its
// context's error and nothing is counted locally.
func (f *FallbackStore) Take(ctx context.Context, key string, t Take) (Result, error) {
	if f.degraded.Load() {
		if f.reject {
			return Result{}, f.unavailable(gobreaker.ErrOpenState)
		}
		return f.takeLocal(ctx, key, t, true)
	}
	var (
		res  Result
		info Answer
		sent time.Time
		err  error
	)
	// A key Redis lost while this replica holds counts of it admits
	// nothing until they are written back (the script says lost): one
	// write-back, then the take again, on the key as it is now.
	for range 2 {
		known, pending := f.held(key)
		if pending && !f.writeBack(ctx, key) {
			// Counts Redis may not hold are written back before anything
			// more is admitted on the key; failing that, locally.
			err = fmt.Errorf("write-back before a take: %w", f.lastError())
			break
		}
		instance, _ := f.instance.Load().(string)
		sent = f.clock.Now()
		k := Known{Epoch: known, Instance: instance, HoldBack: f.holdBack()}
		_, err = f.breakerFor(ctx, key).Execute(func() (struct{}, error) {
			// Asked here, not in a function of its own: the call is on
			// the request path's deepest way, whose every frame the
			// handler goroutine's stack keeps (see limiter's ask). A
			// Shared primary is told what this replica holds of the key.
			var err error
			if f.shared != nil {
				err = f.shared.TakeKnowing(ctx, key, t, k, &res, &info)
			} else {
				res, err = f.primary.Take(ctx, key, t)
				info = Answer{Now: sent.UnixMilli()}
			}
			return struct{}{}, f.classify(ctx, err)
		})
		if err == nil {
			f.sawInstance(info.Instance)
		}
		if err != nil || !info.Lost {
			break
		}
		f.lostKeys.Add(1)
		if !f.writeBack(ctx, key) {
			err = fmt.Errorf("write-back of a key Redis lost: %w", f.lastError())
			break
		}
	}
	if err == nil && info.Lost {
		// Lost again at once (another flush): answered locally this time.
		err = errors.New("redis lost the key twice in a row")
	}
	if err == nil {
		f.recordRedis(key, &res, &info, sent)
		return res, nil
	}
	if ctx.Err() != nil {
		return Result{}, fmt.Errorf("quota take: %w", err)
	}
	if f.sharded != nil {
		// One shard failing (a master died and its replica is not promoted
		// yet, or the slot moved): its tokens wait for it rather than count
		// locally, and the slot map is reloaded. Tokens on the other shards
		// keep their Redis counts; only when every shard fails does the
		// store go local.
		f.sharded.Refresh(ctx)
		if !isOpenState(err) {
			f.lastErr.Store(&errBox{err})
			f.obs.StoreError(StoreOpTake, err)
		}
		if !f.degraded.Load() {
			return Result{Limit: f.policy.Limit, Settling: true, RetryAfter: f.probeEvery, ResetAfter: f.probeEvery}, nil
		}
	} else {
		f.failed(StoreOpTake, err)
	}
	if f.reject {
		return Result{}, f.unavailable(err)
	}
	return f.takeLocal(ctx, key, t, false)
}

func isOpenState(err error) bool {
	return errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests)
}

// breakerFor is the circuit breaker guarding calls for key ("": the
// replica registry): the store's one breaker, or for a sharded primary
// (a Redis Cluster) the breaker of the domain serving key, so one failing
// shard does not open the breaker of the others. When every shard's
// breaker is open, the store is degraded as with a single Redis down.
func (f *FallbackStore) breakerFor(ctx context.Context, key string) *gobreaker.CircuitBreaker[struct{}] {
	if f.sharded == nil {
		return f.cb
	}
	node := f.sharded.Domain(ctx, key)
	f.nodeMu.Lock()
	defer f.nodeMu.Unlock()
	cb := f.nodes[node]
	if cb == nil {
		cb = gobreaker.NewCircuitBreaker[struct{}](f.breakerSettings("redis-quota "+node, func(to gobreaker.State) {
			if to == gobreaker.StateOpen {
				// Called under this breaker's lock: the others (and this
				// one) are looked at once it is released.
				go func() {
					if f.allNodesOpen() {
						f.enterDegraded()
					}
				}()
			}
		}))
		f.nodes[node] = cb
	}
	return cb
}

// allNodesOpen reports whether every shard's breaker is open.
func (f *FallbackStore) allNodesOpen() bool {
	f.nodeMu.Lock()
	defer f.nodeMu.Unlock()
	for _, cb := range f.nodes {
		if cb.State() != gobreaker.StateOpen {
			return false
		}
	}
	return len(f.nodes) > 0
}

// held returns the epoch of key's incarnation in Redis that this replica
// holds live counts of ("" when none), what a take tells the script so that
// a key Redis lost is written back before anything is admitted on it; and
// whether it holds counts Redis is known not to hold (pending: tagged with
// another epoch, or admitted locally), which are written back first.
func (f *FallbackStore) held(key string) (known string, pending bool) {
	sh := f.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	k := sh.keys[key]
	if k == nil {
		return "", false
	}
	for ck := range k.counts {
		if ck.tag == k.epoch && k.epoch != "" {
			known = k.epoch
		} else {
			pending = true
		}
	}
	return known, pending
}

// sawInstance records the instance epoch a take returned. A new one after
// another means Redis lost all its data: every key this replica holds
// counts of is written back (the script holds admissions off meanwhile,
// for RedisOptions.Settle).
func (f *FallbackStore) sawInstance(instance string) {
	if instance == "" {
		return
	}
	prev, _ := f.instance.Swap(instance).(string)
	if prev == "" || prev == instance {
		return
	}
	f.lostInstances.Add(1)
	for i := range f.shards {
		sh := &f.shards[i]
		sh.mu.Lock()
		keys := make([]string, 0, len(sh.keys))
		for key, k := range sh.keys {
			if len(k.counts) > 0 || k.blockUntil != 0 {
				keys = append(keys, key)
			}
		}
		sh.mu.Unlock()
		for _, key := range keys {
			f.markDirty(key)
		}
	}
}

// probe pings the primary through the breaker (a Peek take of probeKey
// when it has no Ping).
func (f *FallbackStore) probe(ctx context.Context) bool {
	_, err := f.cb.Execute(func() (struct{}, error) {
		if f.pinger != nil {
			return struct{}{}, f.classify(ctx, f.pinger.Ping(ctx))
		}
		_, err := f.primary.Take(ctx, probeKey, Take{Peek: true})
		return struct{}{}, f.classify(ctx, err)
	})
	if err != nil {
		if ctx.Err() == nil {
			f.failed(StoreOpPing, err)
		}
		return false
	}
	f.answered.Store(true)
	return true
}

// checkInstance looks, between takes, whether Redis lost all its data, so
// that a replica holding counts of keys it does not take any more writes
// them back too.
func (f *FallbackStore) checkInstance(ctx context.Context) {
	prev, _ := f.instance.Load().(string)
	if prev == "" || f.shared == nil {
		return
	}
	var (
		epoch string
		ok    bool
	)
	_, err := f.cb.Execute(func() (struct{}, error) {
		var err error
		epoch, ok, err = f.shared.InstanceEpoch(ctx)
		return struct{}{}, f.classify(ctx, err)
	})
	if err != nil {
		if ctx.Err() == nil {
			f.failed(StoreOpPing, err)
		}
		return
	}
	if ok && epoch != prev {
		// Gone ("") or replaced: the next take settles the new instance.
		f.sawInstance(cmp.Or(epoch, "lost"))
	}
}

// LostInstances counts the times Redis was seen to have lost all its data.
func (f *FallbackStore) LostInstances() int64 { return f.lostInstances.Load() }

// LostKeys counts the takes that found a key Redis had lost while this
// replica held counts of it (each written back before any admission).
func (f *FallbackStore) LostKeys() int64 { return f.lostKeys.Load() }

func (f *FallbackStore) lastError() error {
	if e := f.lastErr.Load(); e != nil {
		return e.err
	}
	return errors.New("unknown")
}

// Block implements Store: in Redis when it answers, and always in the
// local store, so the block holds if Redis goes away. A block Redis did not
// Forget implements Forgetter: the local count (the outage's) of key goes;
// Redis's ages out with its TTL.
func (f *FallbackStore) Forget(key string) { f.local.Forget(key) }

// get is written back when it returns.
func (f *FallbackStore) Block(ctx context.Context, key string, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	_ = f.local.Block(ctx, key, d) // never fails
	if !f.degraded.Load() {
		_, err := f.breakerFor(ctx, key).Execute(func() (struct{}, error) {
			return struct{}{}, f.classify(ctx, f.primary.Block(ctx, key, d))
		})
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("quota block: %w", err)
		}
		f.failed(StoreOpBlock, err)
		if f.reject {
			return f.unavailable(err)
		}
	} else if f.reject {
		return f.unavailable(gobreaker.ErrOpenState)
	}
	now := f.clock.Now()
	until := f.redisMillis(now) + ceilMillis(d)
	sh := f.shard(key)
	sh.mu.Lock()
	k := sh.get(key, now)
	k.blockUntil = max(k.blockUntil, until)
	sh.mu.Unlock()
	f.markDirty(key)
	return nil
}

// Release implements Store: a slot counted locally is given back to the
// local store and its shadow; one counted by Redis to Redis, if it answers
// (otherwise it stays counted until it ages out, and in the shadow, so a
// Redis that lost it gets it written back).
func (f *FallbackStore) Release(ctx context.Context, key string, r Reservation) error {
	if !r.ok {
		return nil
	}
	ck := countKey{r.epoch, r.at, r.reserved}
	if r.local {
		_ = f.local.Release(ctx, key, r) // never fails
		ck = countKey{bucket: r.shadow, reserved: r.reserved}
	} else {
		if f.degraded.Load() {
			return nil
		}
		_, err := f.breakerFor(ctx, key).Execute(func() (struct{}, error) {
			return struct{}{}, f.classify(ctx, f.primary.Release(ctx, key, r))
		})
		if err != nil {
			if ctx.Err() == nil {
				f.failed(StoreOpRelease, err)
			}
			return fmt.Errorf("quota release: %w", err)
		}
	}
	sh := f.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if k := sh.keys[key]; k != nil && k.counts[ck] > 0 {
		if k.counts[ck]--; k.counts[ck] == 0 {
			delete(k.counts, ck)
		}
	}
	return nil
}

// takeLocal answers from the local store. recheck: the caller saw the
// store degraded; if Redis came back meanwhile, ask it instead.
func (f *FallbackStore) takeLocal(ctx context.Context, key string, t Take, recheck bool) (Result, error) {
	f.switchMu.RLock()
	if recheck && !f.degraded.Load() {
		f.switchMu.RUnlock()
		return f.Take(ctx, key, t)
	}
	defer f.switchMu.RUnlock()

	now := f.clock.Now()
	if wait, ok, err := f.localGate(now); !ok {
		if err != nil {
			return Result{}, err
		}
		return Result{Limit: f.policy.Limit, Settling: true, RetryAfter: wait, ResetAfter: wait}, nil
	}
	sh := f.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	k := sh.get(key, now)

	// Until everything Redis counted at its last answer has aged out, this
	// replica's share of the Remaining it gave then caps local admissions.
	capLeft := -1
	if k.lastAt != 0 && now.UnixNano()-k.lastAt < int64(f.capFor) {
		capLeft = max(int(math.Floor(f.share*float64(k.lastRemaining)))-k.localSince, 0)
		if capLeft == 0 {
			d := time.Duration(k.lastAt + int64(f.capFor) - now.UnixNano())
			if lr, _ := f.local.Take(ctx, key, Take{Peek: true}); lr.Blocked {
				return f.localResult(lr), nil
			}
			return Result{Limit: f.policy.Limit, RetryAfter: d, ResetAfter: d}, nil
		}
	}
	// The local store does not lease: a lease asked for is one slot now.
	res, err := f.local.Take(ctx, key, Take{Wait: t.Wait, NotBefore: t.NotBefore, Peek: t.Peek})
	if err != nil {
		return Result{}, fmt.Errorf("local quota: %w", err)
	}
	if res.Allowed {
		k.localSince++
		ck := countKey{bucket: f.redisBucket(now)}
		if res.Slot.reserved {
			// Its start on Redis's clock, estimated (late, see redisMillis).
			ck = countKey{bucket: f.redisMillis(now.Add(res.Delay)), reserved: true}
		}
		k.counts[ck]++
		res.Slot.local, res.Slot.shadow = true, ck.bucket
		if capLeft > 0 {
			capLeft--
		}
		f.markDirty(key)
	}
	res = f.localResult(res)
	if capLeft >= 0 {
		res.Remaining = min(res.Remaining, capLeft)
	}
	return res, nil
}

// localResult reports the global limit to clients: the local share is an
// implementation detail of the outage.
func (f *FallbackStore) localResult(r Result) Result {
	r.Limit = f.policy.Limit
	return r
}

// recordRedis updates the shadow after Redis answered a take.
func (f *FallbackStore) recordRedis(key string, res *Result, info *Answer, sent time.Time) {
	f.answered.Store(true)
	f.offset.Store(info.Now - sent.UnixMilli())
	now := f.clock.Now()
	sh := f.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	k := sh.get(key, now)
	if res.Blocked {
		// Another replica (or this one) blocked the key: keep the block
		// locally in case Redis goes away before it ends.
		_ = f.local.Block(context.Background(), key, res.RetryAfter)
	} else {
		k.lastRemaining, k.lastAt, k.localSince = res.Remaining, now.UnixNano(), 0
	}
	if f.shared == nil {
		return // no shadow: a plain primary cannot be written back to
	}
	tag := info.Epoch
	lost := false
	switch {
	case tag == k.epoch:
	case k.retired != "" && tag == k.retired:
		// A late answer from an incarnation of the key that is already
		// gone: what it counted is not held by Redis any more.
		tag, lost = "", true
	default:
		// The key is new, or was lost and re-created: counts tagged with
		// the old epoch are not in Redis any more.
		k.retired, k.epoch = k.epoch, tag
		k.prune(floorDiv(info.Now-f.span, f.width), f.width)
		for ck := range k.counts {
			if ck.tag != tag {
				lost = true
				break
			}
		}
	}
	if res.Allowed {
		k.counts[countKey{tag, info.At, info.Reserved}] += max(res.Granted, 1)
		if len(k.counts) > f.maxCounts {
			// Sweep does this too; here the shadow stays bounded even
			// without Run.
			k.prune(floorDiv(info.Now-f.span, f.width), f.width)
		}
	}
	if lost {
		f.markDirty(key)
	}
}

// Run probes Redis while degraded (so recovery happens without traffic),
// reconciles, hands takes back to Redis, and sweeps idle keys, until ctx is
// done.
func (f *FallbackStore) Run(ctx context.Context) error {
	tick := f.clock.NewTicker(f.probeEvery)
	defer tick.Stop()
	sweepEvery := max(f.policy.BucketWidth(), time.Second)
	lastSweep := f.clock.Now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.Chan():
		case <-f.wake:
		}
		switch {
		case f.degraded.Load():
			f.recover(ctx)
		case !f.answered.Load():
			f.beat(ctx) // a cold start learns Redis answers without traffic
		default:
			f.beat(ctx)
			f.checkInstance(ctx)
			f.reconcile(ctx)
		}
		if now := f.clock.Now(); now.Sub(lastSweep) >= sweepEvery {
			f.Sweep()
			lastSweep = now
		}
	}
}

// recover probes Redis when the breaker allows it, reconciles, and ends the
// fallback. It reports whether takes go to Redis again.
func (f *FallbackStore) recover(ctx context.Context) bool {
	switch f.cb.State() {
	case gobreaker.StateOpen:
		return false // not yet time to probe: Redis is not touched
	case gobreaker.StateHalfOpen:
		if !f.probe(ctx) {
			return false
		}
	}
	// Two passes: the first writes back the outage while takes still go
	// to the local store; the second, holding local takes off, writes back
	// what they admitted meanwhile, then takes go to Redis.
	if !f.reconcile(ctx) {
		return false
	}
	f.switchMu.Lock()
	defer f.switchMu.Unlock()
	if !f.reconcile(ctx) || f.cb.State() != gobreaker.StateClosed {
		return false
	}
	if f.degraded.CompareAndSwap(true, false) {
		f.since.Store(0)
		f.obs.FallbackActive(false)
	}
	return true
}

// Reconcile writes back, now, every count Redis does not hold (Run does it
// on its own; cmd/gateway may call it at shutdown). It reports whether
// everything pending was written.
func (f *FallbackStore) Reconcile(ctx context.Context) bool { return f.reconcile(ctx) }

func (f *FallbackStore) reconcile(ctx context.Context) bool {
	f.dirtyMu.Lock()
	keys := make([]string, 0, len(f.dirty))
	for k := range f.dirty {
		keys = append(keys, k)
	}
	clear(f.dirty)
	f.dirtyMu.Unlock()
	for i, key := range keys {
		if !f.writeBack(ctx, key) {
			for _, k := range keys[i:] {
				f.markDirty(k)
			}
			return false
		}
	}
	return true
}

// writeBack sends key's live shadow counts to Redis, which adds those it
// does not hold (see redis_writeback.lua), and retags them with the key's
// epoch. It reports success.
func (f *FallbackStore) writeBack(ctx context.Context, key string) bool {
	now := f.clock.Now()
	rnow := f.redisMillis(now)
	sh := f.shard(key)
	sh.mu.Lock()
	k := sh.keys[key]
	if k == nil {
		sh.mu.Unlock()
		return true
	}
	// One bucket of slack: the Redis-time estimate errs late.
	k.prune(floorDiv(rnow-f.span, f.width)-1, f.width)
	snap := make([]Count, 0, len(k.counts))
	for ck, c := range k.counts {
		snap = append(snap, Count{Tag: ck.tag, At: ck.bucket, Reserved: ck.reserved, N: c})
	}
	block := k.blockUntil
	if block <= rnow {
		block, k.blockUntil = 0, 0
	}
	sh.mu.Unlock()
	if len(snap) == 0 && block == 0 {
		return true
	}

	var epoch string
	_, err := f.breakerFor(ctx, key).Execute(func() (struct{}, error) {
		var err error
		if f.shared != nil {
			epoch, err = f.shared.WriteBack(ctx, key, snap, block)
		} else {
			err = f.replay(ctx, key, snap, block-rnow)
		}
		return struct{}{}, f.classify(ctx, err)
	})
	if err != nil {
		if ctx.Err() == nil {
			f.failed(StoreOpReconcile, err)
		}
		return false
	}

	sh.mu.Lock()
	defer sh.mu.Unlock()
	for _, c := range snap {
		if c.Tag == epoch && f.shared != nil {
			continue // Redis held it already
		}
		ck := countKey{c.Tag, c.At, c.Reserved}
		if k.counts[ck] -= c.N; k.counts[ck] <= 0 {
			delete(k.counts, ck)
		}
		if epoch != "" {
			k.counts[countKey{epoch, c.At, c.Reserved}] += c.N
		}
	}
	if epoch != k.epoch {
		k.retired, k.epoch = k.epoch, epoch
	}
	if k.blockUntil == block {
		k.blockUntil = 0
	}
	if k.blockUntil != 0 || k.pending() {
		f.markDirty(key) // admitted or blocked meanwhile
	}
	return true
}

// replay hands a plain primary (not Shared) what this replica admitted
// locally: a take per count, now, and the block still due (blockFor ms).
// Each is counted from now rather than from its admission, so it holds its
// slot longer than the upstream does: quota spent, never exceeded. Alone
// on the primary every take fits (local admissions were capped by the
// Remaining it gave last); a take refused because other replicas filled
// the primary meanwhile leaves its count to age out unrecorded, which is
// why a fleet's store must be Shared.
func (f *FallbackStore) replay(ctx context.Context, key string, counts []Count, blockFor int64) error {
	for _, c := range counts {
		for range c.N {
			if _, err := f.primary.Take(ctx, key, Take{}); err != nil {
				return fmt.Errorf("replay a local count: %w", err)
			}
		}
	}
	if blockFor > 0 {
		if err := f.primary.Block(ctx, key, time.Duration(blockFor)*time.Millisecond); err != nil {
			return fmt.Errorf("replay a block: %w", err)
		}
	}
	return nil
}

// Sweep drops dead buckets from the shadow and keys nobody used for a span
// (whose last Redis answer no longer caps anything), in the shadow and in
// the local store. It returns how many keys the shadow still tracks.
func (f *FallbackStore) Sweep() int {
	now := f.clock.Now()
	rnow := f.redisMillis(now)
	first := floorDiv(rnow-f.span, f.width) - 1
	idle := now.Add(-f.capFor).UnixNano()
	f.dirtyMu.Lock()
	dirty := make(map[string]struct{}, len(f.dirty))
	for k := range f.dirty {
		dirty[k] = struct{}{}
	}
	f.dirtyMu.Unlock()
	left := 0
	for i := range f.shards {
		sh := &f.shards[i]
		sh.mu.Lock()
		for key, k := range sh.keys {
			k.prune(first, f.width)
			if k.blockUntil != 0 && k.blockUntil <= rnow {
				k.blockUntil = 0
			}
			_, isDirty := dirty[key]
			if len(k.counts) == 0 && k.blockUntil == 0 && !isDirty && k.lastUsed < idle {
				delete(sh.keys, key)
			}
		}
		left += len(sh.keys)
		sh.mu.Unlock()
	}
	f.local.Sweep()
	return left
}

// classify marks errors caused by the caller's context so the breaker does
// not count them against Redis.
func (f *FallbackStore) classify(ctx context.Context, err error) error {
	if err != nil && ctx.Err() != nil {
		return callerGone{err}
	}
	return err
}

// failed records a Redis failure (not a refusal by the open breaker).
func (f *FallbackStore) failed(op string, err error) {
	if isOpenState(err) {
		// The breaker refused without asking Redis; make sure the store
		// knows it is degraded even if it raced with a recovery (in a
		// Cluster, a shard's breaker says nothing of the others).
		if f.sharded == nil {
			f.enterDegraded()
		}
		return
	}
	f.lastErr.Store(&errBox{err})
	f.obs.StoreError(op, err)
}

func (f *FallbackStore) enterDegraded() {
	if f.degraded.CompareAndSwap(false, true) {
		f.since.Store(f.clock.Now().UnixNano())
		// The others hold this replica's share back from alive after its
		// last heartbeat could have landed, once they have beaten again
		// (a heartbeat period, and one more for slack); they forget it
		// forget after that, by when its local counts must have aged out.
		// A heartbeat still in flight started before now.
		if until := f.beatUntil.Load(); until != 0 {
			until = max(until, f.clock.Now().Add(f.shared.CallTimeout()).UnixNano())
			f.localFrom.Store(until + int64(f.alive+2*f.probeEvery))
			f.localUntil.Store(f.beatOK.Load() + int64(f.forget-f.policy.Span()-f.alive))
		}
		f.obs.FallbackActive(true)
	}
}

// localGate says whether a take may be answered locally now. Alone on
// Redis, at once. When other replicas share it: only once the store is
// degraded (a failure before the breaker opens is asked again shortly),
// after they have surely started holding this replica's share back, and
// until they forget it. Otherwise it says how long to wait, or errs when local
// counting is over.
func (f *FallbackStore) localGate(now time.Time) (time.Duration, bool, error) {
	if f.members.Load() <= 1 {
		// Alone on this Redis at the last heartbeat (or none made yet):
		// nobody else admits, as a sidecar's.
		return 0, true, nil
	}
	if !f.degraded.Load() {
		return f.probeEvery, false, nil
	}
	n := now.UnixNano()
	if from := f.localFrom.Load(); n < from {
		return time.Duration(from - n), false, nil
	}
	if n >= f.localUntil.Load() {
		return 0, false, f.unavailable(errors.New("cut off from Redis longer than the other replicas hold this one's share back"))
	}
	return 0, true, nil
}

// holdBack is how many slots of the limit are left to silent replicas.
func (f *FallbackStore) holdBack() int {
	return int(f.silent.Load()) * f.local.Policy().Limit
}

// beat heartbeats into Redis (Run calls it every tick while Redis answers):
// a replica in the registry is held back for by the others as soon as it
// goes silent. Not while degraded: a heartbeat says "I count through
// Redis".
func (f *FallbackStore) beat(ctx context.Context) {
	if f.shared == nil {
		return
	}
	sent := f.clock.Now()
	// Counted as landed up to the call's timeout, which the script
	// enforces on Redis's clock.
	timeout := f.shared.CallTimeout()
	f.beatUntil.Store(sent.Add(timeout).UnixNano())
	var b Beats
	_, err := f.breakerFor(ctx, "").Execute(func() (struct{}, error) {
		var err error
		b, err = f.shared.Heartbeat(ctx, Beat{ID: f.id, ValidUntil: f.redisMillis(sent) + timeout.Milliseconds(), Alive: f.alive, Forget: f.forget})
		return struct{}{}, f.classify(ctx, err)
	})
	if err != nil {
		if ctx.Err() == nil {
			f.failed(StoreOpHeartbeat, err)
		}
		return
	}
	f.answered.Store(true)
	f.offset.Store(b.Now - sent.UnixMilli())
	f.members.Store(int64(b.Members))
	if !b.Stale {
		f.silent.Store(int64(b.Silent))
		f.beatOK.Store(sent.UnixNano())
	}
}

// Leave takes this replica out of the heartbeats (a graceful stop), so the
// others do not hold its share back.
func (f *FallbackStore) Leave(ctx context.Context) error {
	if f.shared == nil {
		return nil
	}
	return f.shared.Leave(ctx, f.id)
}

// unavailable is reject mode's error: ErrStoreUnavailable, the cause, and
// the last Redis error when the cause is the open breaker.
func (f *FallbackStore) unavailable(cause error) error {
	if errors.Is(cause, gobreaker.ErrOpenState) {
		if last := f.lastErr.Load(); last != nil {
			return fmt.Errorf("%w: %w (last error: %w)", ErrStoreUnavailable, cause, last.err)
		}
	}
	return fmt.Errorf("%w: %w", ErrStoreUnavailable, cause)
}

func (f *FallbackStore) markDirty(key string) {
	f.dirtyMu.Lock()
	f.dirty[key] = struct{}{}
	f.dirtyMu.Unlock()
	if f.degraded.Load() {
		return // Run reconciles once Redis is back, not per local admission
	}
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// redisMillis estimates Redis TIME (ms) at local time now.
func (f *FallbackStore) redisMillis(now time.Time) int64 { return now.UnixMilli() + f.offset.Load() }

func (f *FallbackStore) redisBucket(now time.Time) int64 {
	return floorDiv(f.redisMillis(now), f.width)
}

func (f *FallbackStore) shard(key string) *fbShard {
	return &f.shards[maphash.String(f.seed, key)%uint64(len(f.shards))]
}

// get returns key's entry, creating it; sh is locked.
func (sh *fbShard) get(key string, now time.Time) *fbKey {
	k := sh.keys[key]
	if k == nil {
		k = &fbKey{counts: map[countKey]int{}}
		sh.keys[key] = k
	}
	k.lastUsed = now.UnixNano()
	return k
}

// prune drops counts in buckets before first (width: the bucket width in
// ms, to place a reservation's start in its bucket).
func (k *fbKey) prune(first, width int64) {
	for ck := range k.counts {
		b := ck.bucket
		if ck.reserved {
			b = floorDiv(b, width)
		}
		if b < first {
			delete(k.counts, ck)
		}
	}
}

// pending reports whether some count is not known to be held by Redis.
func (k *fbKey) pending() bool {
	for ck := range k.counts {
		if ck.tag != k.epoch {
			return true
		}
	}
	return false
}

type nopFallbackObserver struct{}

func (nopFallbackObserver) StoreError(string, error) {}
func (nopFallbackObserver) FallbackActive(bool)      {}
