// Package limiter decides when a request may be sent upstream: a local
// smoother (x/time/rate) per key, a FIFO queue per key for requests that
// may wait a bounded time for their quota slot, and lease batching for a
// shared store. The slots themselves are counted by a quota.Store.
//
// It knows nothing of HTTP. Keys are opaque strings (the proxy passes a hash
// of the access token, never the token).
package limiter

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fusioo-gateway/gateway/internal/quota"

	"github.com/jonboulle/clockwork"
	"golang.org/x/time/rate"
)

// ErrClosed is returned to requests still waiting when the limiter is
// closed at the end of a shutdown.
var ErrClosed = errors.New("limiter: closed")

// Reasons a request is refused, as Decision.Reason and metric labels.
const (
	ReasonQuota     = "quota"      // no slot frees within the request's wait
	ReasonBlocked   = "blocked"    // the upstream said the quota is gone
	ReasonQueueFull = "queue_full" // max_depth for the key, or the global cap
	ReasonSmoothing = "smoothing"  // anonymous requests: the local rate would delay past max_wait
	ReasonKeysFull  = "keys_full"  // a new key, and quota.max_keys keys tracked that still matter
)

// Observer is told what the limiter does. internal/metrics implements it;
// a nil Observer in Config observes nothing.
type Observer interface {
	// QueueDepth is called with +1 when a request joins a queue and -1 when
	// it leaves.
	QueueDepth(delta int)
	// QueueWait is called when a request leaves a queue, admitted or not.
	QueueWait(d time.Duration)
	// Rejected is called for every refusal, with one of the Reason values.
	Rejected(reason string)
}

// Config holds the limiter's tunables.
//
// Zero values follow the convention of every Config and Options struct
// of retry, limiter, quota and proxy (docs/design.md): a zero field means
// none (the feature off, as the field says), never a hidden default; nil
// interfaces mean what the field says; Required fields are refused.
//
// DefaultConfig returns this package's defaults.
type Config struct {
	// Store counts attempts. Required: New panics without it.
	Store quota.Store
	Clock clockwork.Clock // nil: the real clock

	// Rate and Burst smooth each key locally (x/time/rate): a request's
	// turn is asked for in the same store call as its quota slot, so it
	// never waits for a turn the quota then refuses, and a turn later than
	// the request can wait is given up rather than refused: smoothing only
	// spreads what the quota serves. Rate 0: no smoothing. Burst 0 (or
	// 1): no burst, one request per turn.
	Rate  rate.Limit
	Burst int
	// AnonymousRate and AnonymousBurst limit requests that carry no token
	// (key ""), which are never charged to a quota: they all share one
	// local limiter, which refuses what it would delay past MaxWait.
	// AnonymousRate 0: no limit, they go through unlimited.
	// AnonymousBurst 0 (or 1): no burst.
	AnonymousRate  rate.Limit
	AnonymousBurst int

	// MaxWait bounds how long a request may wait for its slot. A request
	// whose slot frees later is refused at once, with the honest
	// RetryAfter. 0: no wait, a slot now or a refusal.
	MaxWait time.Duration
	// Late is how long past its end (quota.Result.Usable) a waiter woken late may
	// still use its slot: the part of quota.margin the gateway's own timers
	// may take (the rest covers the send to the upstream). 0: none.
	Late time.Duration
	// MaxDepth bounds each key's queue, MaxQueued all queues together;
	// 0: no queue, no request waits.
	MaxDepth  int
	MaxQueued int
	// IdleAfter is how long at most a key's local state outlives its last
	// use; Sweep drops it sooner once it is spent (holds no leased slot and
	// its smoother is full). 0: none kept idle, the first sweep after its
	// last use drops it, spent or not.
	IdleAfter time.Duration
	// MaxKeys bounds the keys whose local state is kept (quota.max_keys):
	// a new key beyond it takes the place of the least recently used key
	// no request is using, of its shard or else of another (its smoothing
	// and lease state only: its counts are the store's), or is refused (ReasonKeysFull) when every key is
	// in use. 0: no bound.
	MaxKeys int

	// Lease and LeaseMax let a busy key draw its admissions from small
	// batches of slots the store counts at once (quota.Take.Hold), so a shared
	// store is asked about once per batch instead of once per request, and
	// mostly off the request path: a batch half used is refilled in the
	// background. Batches are usable for Lease (redis.lease_time) and sized
	// to the key's demand at this replica over that time, up to LeaseMax
	// slots (redis.lease_max); the store shrinks them to single slots as
	// the quota runs low (see window.go). A slot not used within Lease
	// is dropped, never used late: it stays counted, so leases can only
	// waste quota (at most two batches per key and replica when its
	// traffic stops), never exceed it. Lease 0 or LeaseMax <= 1 disables
	// leasing. See lease.go.
	Lease    time.Duration
	LeaseMax int

	// Observer is told what the limiter does; nil observes nothing.
	Observer Observer
}

// DefaultConfig returns the limiter's defaults for the fields whose zero
// is not what a caller wants without a reason to: a key's state kept 10
// minutes idle. Store is required; every other field is a caller's choice
// (the gateway's are config.Default's).
func DefaultConfig() Config {
	return Config{IdleAfter: 10 * time.Minute}
}

// Decision is the limiter's answer for one attempt.
type Decision struct {
	Allowed bool
	// quota.Result is the store's answer that counted (or refused) the slot:
	// Limit, Remaining and ResetAfter feed the client's RateLimit headers,
	// RetryAfter its Retry-After.
	quota.Result
	Reason string        // why it was refused (a Reason constant)
	Waited time.Duration // time spent waiting for the slot
}

// Limiter admits attempts per key. Every attempt asks the quota store once,
// for a slot now or, when none is free, for the earliest slot that frees
// within its wait, reserved in the store in the same atomic call: every
// replica sharing the store sees it, so no two promise the same slot, and a
// request that cannot be served within its wait is refused at once.
//
// A key's waiters form a queue, in arrival order as long as they can wait
// as long (by deadline), holding their slots, earliest first: the i-th
// waiter holds the i-th slot, so a slot that turns up early (a
// lease, a slot another replica gave back) goes to the head, and a waiter
// that leaves gives back the latest slot while everybody behind it moves
// up. No goroutine runs per waiting request: the request's own goroutine
// sleeps until its slot.
type Limiter struct {
	cfg    Config
	clock  clockwork.Clock
	obs    Observer
	queued atomic.Int64
	closed chan struct{}
	close  sync.Once
	// refills are the lease refills running in the background (lease.go).
	refills sync.WaitGroup

	// shards hold the keys' local state: a request locks its key's
	// shard only, so tokens of different shards never wait for each
	// other. nkeys counts the keys of all shards, against MaxKeys.
	seed   maphash.Seed
	shards [keyShards]keyShard
	nkeys  atomic.Int64

	refillMu  sync.Mutex
	noRefills bool // set by Close, under refillMu
	anon      *keyState
}

// keyShards is the number of the limiter's shards.
const keyShards = 64

// keyShard is one part of the limiter's keys, with its own lock and its
// own least-recently-used order.
type keyShard struct {
	mu      sync.Mutex
	keys    map[string]*keyState
	lruHead *keyState // most recently used key (guarded by mu)
	lruTail *keyState
}

// keyState is one key's local state. refs counts the requests using it, so
// the sweeper never drops a state somebody holds.
type keyState struct {
	mu     sync.Mutex
	smooth *rate.Limiter
	// q is the key's queue, guarded by mu; nil until a request of the key
	// first waits, so a key that never queued costs no queue.
	q        *queue
	lease    *lease // guarded by mu; nil unless the limiter leases
	refs     int    // guarded by its shard's mu
	lastUsed int64  // unix ns on the limiter's clock; guarded by its shard's mu
	// key and the LRU links (most recently used at the shard's head),
	// guarded by its shard's mu.
	key        string
	prev, next *keyState
}

// queue holds a key's waiters (*waiter) in arrival order and their slots,
// earliest first: the i-th waiter holds slots[i].
type queue struct {
	waiters list.List
	slots   []*slot
}

// waiting is how many requests of the key wait (ks.mu held).
func (ks *keyState) waiting() int {
	if ks.q == nil {
		return 0
	}
	return ks.q.waiters.Len()
}

// slot is one admission a request holds: counted by the store (or drawn
// from the key's lease) to be used from notBefore until notAfter.
type slot struct {
	notBefore, notAfter time.Time
	res                 quota.Result      // the store's answer that counted it
	give                quota.Reservation // what Release gives back when unused
}

type waiter struct {
	deadline time.Time
	slot     *slot // guarded by keyState.mu; nil: withdrawn, ask again
	// withdrawn is the slot taken away by Exhaust, for the waiter to give
	// back.
	withdrawn *slot
	wake      chan struct{} // cap 1: slot changed
}

// New returns a limiter for cfg, taken as it is (see Config for what a
// zero field means). It does no I/O and starts nothing; Run sweeps idle
// keys. It panics if cfg.Store is nil.
func New(cfg Config) *Limiter {
	if cfg.Store == nil {
		panic("limiter: Config.Store is nil")
	}
	if cfg.Clock == nil {
		cfg.Clock = clockwork.NewRealClock()
	}
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}
	cfg.IdleAfter = max(cfg.IdleAfter, 0)
	l := &Limiter{cfg: cfg, clock: cfg.Clock, obs: cfg.Observer, closed: make(chan struct{}), seed: maphash.MakeSeed()}
	for i := range l.shards {
		l.shards[i].keys = map[string]*keyState{}
	}
	l.anon = &keyState{}
	if cfg.AnonymousRate > 0 {
		l.anon.smooth = rate.NewLimiter(cfg.AnonymousRate, max(cfg.AnonymousBurst, 1))
	}
	return l
}

// Admit waits until key may send one attempt upstream, or decides it may
// not. A refusal is a Decision with Allowed false, not an error; the error
// is ctx's when the caller went away (its slot is given back), ErrClosed
// after Close, or the store's (wrapped) when it failed.
//
// The key "" stands for requests without a token: only the anonymous local
// limit applies to them.
//
// The wait ends by MaxWait from now, or by deadline when that is earlier
// (a retry gets what is left of its request's wait), or by ctx's deadline.
func (l *Limiter) Admit(ctx context.Context, key string, deadline time.Time) (Decision, error) {
	start := l.clock.Now()
	if limit := start.Add(l.cfg.MaxWait); deadline.IsZero() || limit.Before(deadline) {
		deadline = limit
	}
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	ks := l.acquire(key)
	if ks == nil {
		return l.keysFull(start), nil
	}
	defer l.release(key, ks)
	if key == "" {
		return l.admitAnonymous(ctx, ks, start, deadline)
	}
	for {
		var a attempt
		err := l.ask(ctx, ks, key, deadline, &a)
		d, again, err := l.answer(ctx, ks, key, &a, err, start, deadline)
		if !again {
			return d, err
		}
	}
}

// attempt is one ask of the store for a slot, from ask to answer.
type attempt struct {
	now  time.Time
	full bool              // no room to wait: a slot now, or a refusal
	ok   bool              // the store granted s
	turn *rate.Reservation // the smoother's turn, cancelled unless s is used
	s    slot
}

// ask asks the store for a slot for key into a: one now, or one that frees
// by deadline, after the smoother's turn.
//
// The store is called from here, at the deepest point of the request
// path, so this frame is kept small and what follows the answer is in
// answer: a handler goroutine's stack only grows (to 16 KB once the path
// needs more than 8) and keeps its size while the request waits or is
// forwarded. Every frame on the way down (the proxy's too) is that stack;
// TestStackStaysSmall measures it.
func (l *Limiter) ask(ctx context.Context, ks *keyState, key string, deadline time.Time, a *attempt) error {
	a.now = l.clock.Now()
	wait := max(deadline.Sub(a.now), 0)
	ks.mu.Lock()
	a.full = ks.waiting() >= l.cfg.MaxDepth || l.queued.Load() >= int64(l.cfg.MaxQueued)
	ks.mu.Unlock()
	if a.full {
		wait = 0 // no room to wait: a slot now, or a refusal
	}
	var turn time.Duration
	turn, a.turn = l.turn(ks, a.now, wait)
	var err error
	a.ok, err = l.obtain(ctx, ks, key, a.now, turn, wait, &a.s)
	return err
}

// answer makes the store's answer in a (or its error err) the request's
// decision: a refusal, or the slot used now or after waiting in the key's
// queue. again is true when the slot was lost before use (withdrawn by
// Exhaust, or the process woke too late to use it) and the request must
// ask anew.
func (l *Limiter) answer(ctx context.Context, ks *keyState, key string, a *attempt, err error, start, deadline time.Time) (_ Decision, again bool, _ error) {
	if err != nil || !a.ok {
		cancelTurn(a.turn, l.clock.Now())
		if err != nil {
			return Decision{}, false, err
		}
		return l.refused(ctx, &a.s.res, a.full, a.now, start, deadline)
	}
	return l.hold(ctx, ks, key, &a.s, a.turn, a.full, start, deadline)
}

// refused answers a request the store gave no slot: once a settling store
// has taken the replicas' counts back, again; otherwise a refusal.
func (l *Limiter) refused(ctx context.Context, res *quota.Result, full bool, now, start, deadline time.Time) (_ Decision, again bool, _ error) {
	if res.Settling && fits(now, res.RetryAfter, deadline) {
		// The store is taking the replicas' counts back after losing
		// its data: wait for that, then ask again.
		if err := l.sleep(ctx, res.RetryAfter); err != nil {
			return Decision{}, false, err
		}
		return Decision{}, true, nil
	}
	reason := reasonFor(*res)
	if full && !res.Blocked && !res.Full && res.RetryAfter <= deadline.Sub(now) {
		reason = ReasonQueueFull
	}
	return l.refuse(res, reason, start), false, nil
}

// hold uses the slot s the store granted: now, or after waiting in the
// key's queue until it may be used (sr is the smoother's turn, cancelled
// when the slot is not used).
func (l *Limiter) hold(ctx context.Context, ks *keyState, key string, s *slot, sr *rate.Reservation, full bool, start, deadline time.Time) (_ Decision, again bool, _ error) {
	if s.res.Delay > 0 && s.notBefore.After(deadline) {
		// The answer came back too late for the slot to be waited for
		// (the store was slow): given back, refused with when it frees.
		l.giveBack(ctx, key, s)
		cancelTurn(sr, l.clock.Now())
		res := s.res
		res.RetryAfter = max(s.notBefore.Sub(l.clock.Now()), 0)
		return l.refuse(&res, ReasonQuota, start), false, nil
	}
	ks.mu.Lock()
	if !s.notBefore.After(l.clock.Now()) && (ks.waiting() == 0 || full) {
		ks.mu.Unlock()
		return l.admitted(s, start), false, nil
	}
	w := &waiter{wake: make(chan struct{}, 1), deadline: deadline}
	el := ks.enqueue(w)
	held := new(slot)
	*held = *s
	ks.insert(held)
	ks.mu.Unlock()
	l.queued.Add(1)
	l.obs.QueueDepth(1)
	defer func() {
		l.queued.Add(-1)
		l.obs.QueueDepth(-1)
		l.obs.QueueWait(l.clock.Since(start))
	}()
	d, again, err := l.wait(ctx, ks, key, el, w, start)
	if err != nil || again {
		cancelTurn(sr, l.clock.Now())
	}
	return d, again, err
}

// wait sleeps until the waiter's slot may be used, following it as it
// moves up, and leaves the queue.
func (l *Limiter) wait(ctx context.Context, ks *keyState, key string, el *list.Element, w *waiter, start time.Time) (_ Decision, again bool, _ error) {
	var timer clockwork.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		ks.mu.Lock()
		s := w.slot
		if s == nil {
			// Withdrawn by Exhaust: give it back and ask again, which
			// sees the block.
			gone := w.withdrawn
			ks.mu.Unlock()
			l.giveBack(ctx, key, gone)
			return Decision{}, true, nil
		}
		now := l.clock.Now()
		if !now.Before(s.notBefore) {
			ks.leave(el, s)
			ks.mu.Unlock()
			if now.Before(s.notAfter.Add(l.cfg.Late)) {
				return l.admitted(s, start), false, nil
			}
			// Woken too late to use it (a stalled process): it was never
			// used, so it is given back, and the request asks again.
			l.giveBack(ctx, key, s)
			return Decision{}, true, nil
		}
		ks.mu.Unlock()
		if timer == nil {
			timer = l.clock.NewTimer(s.notBefore.Sub(now))
		} else {
			timer.Reset(s.notBefore.Sub(now))
		}
		select {
		case <-timer.Chan():
		case <-w.wake:
		case <-ctx.Done():
			l.abandon(ctx, ks, key, el, w)
			return Decision{}, false, ctx.Err()
		case <-l.closed:
			l.abandon(ctx, ks, key, el, w)
			return Decision{}, false, ErrClosed
		}
	}
}

// abandon takes a waiter that will not send out of the queue: the key's
// latest slot is given back to the store and everybody behind the waiter
// moves up into the slot of the one before.
func (l *Limiter) abandon(ctx context.Context, ks *keyState, key string, el *list.Element, w *waiter) {
	ks.mu.Lock()
	if w.slot == nil {
		gone := w.withdrawn
		ks.mu.Unlock()
		l.giveBack(ctx, key, gone)
		return
	}
	last := ks.q.slots[len(ks.q.slots)-1]
	ks.q.slots[len(ks.q.slots)-1] = nil
	ks.q.slots = ks.q.slots[:len(ks.q.slots)-1]
	ks.q.waiters.Remove(el)
	ks.reassign()
	ks.mu.Unlock()
	l.giveBack(ctx, key, last)
}

// giveBack releases an unused slot in the store. It runs after the client
// left, bounded by the store's own timeout; a release that fails leaves the
// slot counted until it ages out, which only costs quota.
func (l *Limiter) giveBack(ctx context.Context, key string, s *slot) {
	if s == nil || !s.give.Held() {
		return
	}
	_ = l.cfg.Store.Release(context.WithoutCancel(ctx), key, s.give)
}

// enqueue adds w to the key's queue, in order of deadline and, for equal
// ones, of arrival: with every request's wait the same, that is arrival
// order. Handing the i-th slot to the i-th waiter then never gives one a
// slot later than its deadline (the i-th deadline has at least i slots
// before it: the waiters' own); a waiter with a shorter wait (a retry, a
// client deadline) goes before those that can wait longer. ks.mu is held.
func (ks *keyState) enqueue(w *waiter) *list.Element {
	if ks.q == nil {
		ks.q = new(queue)
	}
	for el := ks.q.waiters.Back(); el != nil; el = el.Prev() {
		if !el.Value.(*waiter).deadline.After(w.deadline) {
			return ks.q.waiters.InsertAfter(w, el)
		}
	}
	return ks.q.waiters.PushFront(w)
}

// insert adds s to the key's slots, earliest first, and hands the slots
// to the waiters in order; ks.mu is held.
func (ks *keyState) insert(s *slot) {
	i := sort.Search(len(ks.q.slots), func(i int) bool { return ks.q.slots[i].notBefore.After(s.notBefore) })
	ks.q.slots = append(ks.q.slots, nil)
	copy(ks.q.slots[i+1:], ks.q.slots[i:])
	ks.q.slots[i] = s
	ks.reassign()
}

// leave takes an admitted waiter and its own slot out of the queue; the
// others keep theirs. ks.mu is held.
func (ks *keyState) leave(el *list.Element, s *slot) {
	ks.q.waiters.Remove(el)
	for i, x := range ks.q.slots {
		if x == s {
			ks.q.slots = append(ks.q.slots[:i], ks.q.slots[i+1:]...)
			break
		}
	}
}

// reassign gives the i-th waiter the i-th slot, waking those whose slot
// changed; ks.mu is held.
func (ks *keyState) reassign() {
	i := 0
	for el := ks.q.waiters.Front(); el != nil; el = el.Next() {
		w := el.Value.(*waiter)
		if w.slot != ks.q.slots[i] {
			w.slot = ks.q.slots[i]
			w.notify()
		}
		i++
	}
}

// withdraw takes every waiter's slot away (the key was blocked): each
// gives its slot back and asks again. ks.mu is held.
func (ks *keyState) withdraw() {
	if ks.q == nil {
		return
	}
	for el := ks.q.waiters.Front(); el != nil; {
		next := el.Next()
		w := ks.q.waiters.Remove(el).(*waiter)
		w.withdrawn, w.slot = w.slot, nil
		w.notify()
		el = next
	}
	clear(ks.q.slots)
	ks.q.slots = ks.q.slots[:0]
}

func (w *waiter) notify() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// turn reserves the request's smoothing turn: how long until the key's
// local rate lets it go. A turn later than the request can wait is given
// up: the quota decides, smoothing only spreads what it serves.
func (l *Limiter) turn(ks *keyState, now time.Time, wait time.Duration) (time.Duration, *rate.Reservation) {
	if ks.smooth == nil {
		return 0, nil
	}
	r := ks.smooth.ReserveN(now, 1)
	if !r.OK() {
		return 0, nil
	}
	d := r.DelayFrom(now)
	if d > wait {
		r.CancelAt(now)
		return 0, nil
	}
	return d, r
}

func cancelTurn(r *rate.Reservation, now time.Time) {
	if r != nil {
		r.CancelAt(now)
	}
}

// admitAnonymous applies the anonymous local limit: there is no quota to
// ask, so a turn beyond the wait is refused.
func (l *Limiter) admitAnonymous(ctx context.Context, ks *keyState, start, deadline time.Time) (Decision, error) {
	if ks.smooth == nil {
		return Decision{Allowed: true}, nil
	}
	r := ks.smooth.ReserveN(start, 1)
	d := r.DelayFrom(start)
	if !r.OK() || !fits(start, d, deadline) {
		r.CancelAt(start)
		return l.refuse(&quota.Result{RetryAfter: max(d, time.Second)}, ReasonSmoothing, start), nil
	}
	if d > 0 {
		if err := l.sleep(ctx, d); err != nil {
			r.CancelAt(l.clock.Now())
			return Decision{}, err
		}
	}
	return Decision{Allowed: true, Waited: l.clock.Since(start)}, nil
}

// sleep waits d on the limiter's clock, or until ctx is done or the limiter
// closes. Its timer is always stopped.
func (l *Limiter) sleep(ctx context.Context, d time.Duration) error {
	t := l.clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.Chan():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-l.closed:
		return ErrClosed
	}
}

func (l *Limiter) admitted(s *slot, start time.Time) Decision {
	return Decision{Allowed: true, Result: s.res, Waited: l.clock.Since(start)}
}

// refuse is the refusal for the store's answer res. res is passed by
// pointer: every copy of a Result on the way to the store is stack the
// handler goroutine keeps (see ask).
func (l *Limiter) refuse(res *quota.Result, reason string, start time.Time) Decision {
	l.obs.Rejected(reason)
	d := Decision{Result: *res, Reason: reason, Waited: l.clock.Since(start)}
	d.Result.Allowed = false
	return d
}

// keysFull refuses a new key when the limiter tracks MaxKeys keys. It is
// kept out of Admit (go:noinline) so its temporaries are not in Admit's
// frame while the store is called (see ask).
//
//go:noinline
func (l *Limiter) keysFull(start time.Time) Decision {
	return l.refuse(&quota.Result{RetryAfter: time.Second}, ReasonKeysFull, start)
}

func reasonFor(res quota.Result) string {
	switch {
	case res.Full:
		return ReasonKeysFull
	case res.Blocked:
		return ReasonBlocked
	}
	return ReasonQuota
}

// fits reports whether waiting d from now ends by deadline.
func fits(now time.Time, d time.Duration, deadline time.Time) bool {
	return !now.Add(d).After(deadline)
}

// Exhaust marks key's quota as gone for d: the upstream answered 20005 (or
// asked for a pause with Retry-After) and nothing more should be sent for
// the key until then, by any replica sharing the store. The key's waiters
// here give their slots back and ask again, which the block answers.
func (l *Limiter) Exhaust(ctx context.Context, key string, d time.Duration) error {
	if key == "" || d <= 0 {
		return nil
	}
	// Slots leased here must not be used either: dropped at once. The
	// waiters are woken once the store has the block, so they see it.
	sh := l.shard(key)
	sh.mu.Lock()
	ks := sh.keys[key]
	if ks != nil {
		ks.refs++ // kept while this runs
		ks.mu.Lock()
		if ks.lease != nil {
			ks.lease.drop()
		}
		ks.mu.Unlock()
	}
	sh.mu.Unlock()
	err := l.cfg.Store.Block(ctx, key, d)
	if ks != nil {
		ks.mu.Lock()
		ks.withdraw()
		ks.mu.Unlock()
		l.release(key, ks)
	}
	if err != nil {
		return fmt.Errorf("quota store: %w", err)
	}
	return nil
}

// Status reports key's quota without counting anything: what the
// RateLimit headers of an uncharged request show.
func (l *Limiter) Status(ctx context.Context, key string) (quota.Result, error) {
	res, err := l.cfg.Store.Take(ctx, key, quota.Take{Peek: true})
	if err != nil {
		return res, fmt.Errorf("quota store: %w", err)
	}
	res.Allowed, res.RetryAfter = false, 0
	return res, nil
}

// Queued returns how many requests wait in all queues.
func (l *Limiter) Queued() int { return int(l.queued.Load()) }

// Close wakes every waiting request with ErrClosed, the end of a shutdown
// whose grace period ran out, and waits for lease refills in flight (each
// bounded by the store's own timeout).
func (l *Limiter) Close() {
	l.close.Do(func() { close(l.closed) })
	l.refillMu.Lock()
	l.noRefills = true // refills start under refillMu: none after this
	l.refillMu.Unlock()
	l.refills.Wait()
}

// shard is key's shard.
func (l *Limiter) shard(key string) *keyShard {
	return &l.shards[maphash.String(l.seed, key)%keyShards]
}

func (l *Limiter) acquire(key string) *keyState {
	if key == "" {
		return l.anon
	}
	sh := l.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	ks := sh.keys[key]
	if ks == nil {
		reserved := l.reserveKey(sh)
		// reserveKey may have let sh's lock go: another request of key
		// may have added it meanwhile.
		switch ks = sh.keys[key]; {
		case ks != nil && reserved:
			l.nkeys.Add(-1)
		case ks == nil && !reserved:
			return nil
		case ks == nil:
			ks = &keyState{key: key}
			if l.leasing() {
				ks.lease = new(lease)
			}
			if l.cfg.Rate > 0 {
				ks.smooth = rate.NewLimiter(l.cfg.Rate, max(l.cfg.Burst, 1))
			}
			sh.keys[key] = ks
		}
	}
	sh.unlink(ks) // a new key is in no list yet: nothing to unlink
	sh.pushFront(ks)
	ks.refs++
	return ks
}

// reserveKey counts one more key against MaxKeys (sh.mu held), making
// room when at the bound: the least recently used key no request is using,
// of sh or, when sh has none, of another shard (each locked in turn, sh's
// lock let go meanwhile, so that no two shard locks are ever held). It
// reports false only when no key is idle in any shard: one that was freed
// and taken by another new key meanwhile is no reason to refuse.
func (l *Limiter) reserveKey(sh *keyShard) bool {
	if l.cfg.MaxKeys <= 0 {
		l.nkeys.Add(1)
		return true
	}
	for {
		if l.nkeys.Add(1) <= int64(l.cfg.MaxKeys) {
			return true
		}
		l.nkeys.Add(-1)
		if l.evictIdle(sh) {
			continue
		}
		sh.mu.Unlock()
		found := false
		for i := range l.shards {
			if o := &l.shards[i]; o != sh {
				o.mu.Lock()
				found = l.evictIdle(o)
				o.mu.Unlock()
				if found {
					break
				}
			}
		}
		sh.mu.Lock()
		if !found {
			return false
		}
	}
}

// evictIdle drops the least recently used key of sh no request is using
// (sh.mu held) and reports whether there was one.
func (l *Limiter) evictIdle(sh *keyShard) bool {
	for ks := sh.lruTail; ks != nil; ks = ks.prev {
		if ks.refs == 0 {
			l.drop(sh, ks)
			return true
		}
	}
	return false
}

// drop forgets ks's local state (sh.mu held).
func (l *Limiter) drop(sh *keyShard, ks *keyState) {
	sh.unlink(ks)
	delete(sh.keys, ks.key)
	l.nkeys.Add(-1)
}

func (sh *keyShard) pushFront(ks *keyState) {
	ks.prev, ks.next = nil, sh.lruHead
	if sh.lruHead != nil {
		sh.lruHead.prev = ks
	}
	sh.lruHead = ks
	if sh.lruTail == nil {
		sh.lruTail = ks
	}
}

func (sh *keyShard) unlink(ks *keyState) {
	if ks.prev != nil {
		ks.prev.next = ks.next
	} else if sh.lruHead == ks {
		sh.lruHead = ks.next
	}
	if ks.next != nil {
		ks.next.prev = ks.prev
	} else if sh.lruTail == ks {
		sh.lruTail = ks.prev
	}
	ks.prev, ks.next = nil, nil
}

// Forget drops key's local state, if no request is using it, and its
// store counts when the store is a Forgetter: the upstream answered its
// token 10003 or 20007, so they guard no quota.
func (l *Limiter) Forget(key string) {
	if key == "" {
		return
	}
	sh := l.shard(key)
	sh.mu.Lock()
	if ks := sh.keys[key]; ks != nil && ks.refs == 0 {
		l.drop(sh, ks)
	}
	sh.mu.Unlock()
	if f, ok := l.cfg.Store.(quota.Forgetter); ok {
		f.Forget(key)
	}
}

func (l *Limiter) release(key string, ks *keyState) {
	if key == "" {
		return
	}
	now := l.clock.Now()
	sh := l.shard(key)
	sh.mu.Lock()
	ks.refs--
	ks.lastUsed = now.UnixNano()
	sh.mu.Unlock()
}

// Sweep drops the local state of the keys no request is using that hold
// nothing a fresh state would not (spent), or were unused for IdleAfter,
// and returns how many remain. It walks each shard from its least recently
// used key and stops at the first used within the smoother's refill time
// (and IdleAfter): neither idle nor, from empty, spent yet. A sweep so
// costs what it drops, not what the limiter tracks.
func (l *Limiter) Sweep() int {
	now := l.clock.Now()
	idle := now.Add(-l.cfg.IdleAfter).UnixNano()
	recent := now.Add(-min(l.cfg.RefillTime(), l.cfg.IdleAfter)).UnixNano()
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		for ks := sh.lruTail; ks != nil; {
			prev := ks.prev
			if ks.refs == 0 {
				if ks.lastUsed >= recent {
					break
				}
				if ks.lastUsed < idle || ks.spent(now) {
					l.drop(sh, ks)
				}
			}
			ks = prev
		}
		sh.mu.Unlock()
	}
	return int(l.nkeys.Load())
}

// RefillTime is how long an unused key's smoother takes to refill from
// empty: a wiring that wants no sweep to hand a key a fresh burst early
// keeps IdleAfter at least this long. 0 without smoothing.
func (c Config) RefillTime() time.Duration {
	if c.Rate <= 0 || c.Rate == rate.Inf {
		return 0
	}
	return time.Duration(float64(max(c.Burst, 1)) / float64(c.Rate) * float64(time.Second))
}

// spent reports whether ks, which no request uses, holds nothing a fresh
// state would not: no usable leased slot and a full smoother. Dropping it
// then changes no decision (only the next batch's size, which starts from
// the demand anew).
func (ks *keyState) spent(now time.Time) bool {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if ks.lease != nil && (ks.lease.fetching || ks.lease.cur.usable(now) || ks.lease.next.usable(now)) {
		return false
	}
	return ks.smooth == nil || ks.smooth.TokensAt(now) >= float64(ks.smooth.Burst())
}

// Run sweeps idle keys every interval until ctx is done.
func (l *Limiter) Run(ctx context.Context, interval time.Duration) error {
	quota.Every(ctx, l.clock, interval, func() { l.Sweep() })
	return nil
}

type nopObserver struct{}

func (nopObserver) QueueDepth(int)          {}
func (nopObserver) QueueWait(time.Duration) {}
func (nopObserver) Rejected(string)         {}
