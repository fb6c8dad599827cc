package limiter

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jonboulle/clockwork"
	"golang.org/x/time/rate"
)

// ErrClosed is returned to requests still waiting when the limiter is
// closed at the end of a shutdown.
var ErrClosed = errors.New("limiter: closed")

// Reasons a request is refused, as Decision.Reason and metric labels.
const (
	ReasonQuota     = "quota"      // the quota will not free within max_wait
	ReasonBlocked   = "blocked"    // the upstream said the quota is gone
	ReasonQueueFull = "queue_full" // max_depth for the key, or the global cap
	ReasonSmoothing = "smoothing"  // the local rate would delay it past max_wait
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
type Config struct {
	Store Store           // counts attempts; required
	Clock clockwork.Clock // nil: the real clock

	// Rate and Burst smooth each key locally before the quota is asked.
	// Rate 0 disables smoothing.
	Rate  rate.Limit
	Burst int
	// AnonymousRate and AnonymousBurst limit requests that carry no token
	// (key ""), which are never charged to a quota: they all share one
	// local limiter. AnonymousRate 0 lets them through unlimited.
	AnonymousRate  rate.Limit
	AnonymousBurst int

	// MaxWait bounds how long a request may wait for its turn (smoothing
	// and quota together). A request whose slot frees later is refused at
	// once, with the honest RetryAfter.
	MaxWait time.Duration
	// MaxDepth bounds each key's queue, MaxQueued all queues together.
	MaxDepth  int
	MaxQueued int
	// IdleAfter is how long a key's local state outlives its last use.
	IdleAfter time.Duration

	// Lease and LeaseMax let a busy key draw its admissions from small
	// batches of slots the store counts at once (Take.Hold), so a shared
	// store is asked about once per batch instead of once per request, and
	// mostly off the request path: a batch half used is refilled in the
	// background. Batches are usable for Lease (redis.lease_time) and sized
	// to the key's demand at this replica over that time, up to LeaseMax
	// slots (redis.lease_max); the store shrinks them to single slots as
	// the quota runs low (see redis_take.lua). A slot not used within Lease
	// is dropped, never used late: it stays counted, so leases can only
	// waste quota (at most two batches per key and replica when its
	// traffic stops), never exceed it. Lease 0 or LeaseMax <= 1 disables
	// leasing. See lease.go.
	Lease    time.Duration
	LeaseMax int

	Observer Observer
}

// Decision is the limiter's answer for one attempt.
type Decision struct {
	Allowed bool
	// Result is the store's last answer: Limit, Remaining and ResetAfter
	// feed the client's RateLimit headers, RetryAfter its Retry-After.
	Result
	Reason string        // why it was refused (a Reason constant)
	Waited time.Duration // time spent smoothing and queued
}

// Limiter admits attempts per key: smoothing, then the quota store, with a
// bounded FIFO queue per key for attempts that must wait. It keeps no
// goroutine per waiting request: the request's own goroutine waits, and the
// one at the head of a key's queue is the only one asking the store.
type Limiter struct {
	cfg    Config
	clock  clockwork.Clock
	obs    Observer
	queued atomic.Int64
	closed chan struct{}
	close  sync.Once
	// refills are the lease refills running in the background (lease.go).
	refills sync.WaitGroup

	mu        sync.Mutex
	keys      map[string]*keyState
	noRefills bool // set by Close
	anon      *keyState
}

// keyState is one key's local state. refs counts the requests using it, so
// the sweeper never drops a state somebody holds.
type keyState struct {
	mu       sync.Mutex
	smooth   *rate.Limiter
	queue    list.List // of *waiter, FIFO
	lease    lease     // guarded by mu
	refs     int       // guarded by Limiter.mu
	lastUsed time.Time // guarded by Limiter.mu
}

type waiter struct {
	ready chan struct{} // gets one value when the waiter becomes head
}

// New returns a limiter for cfg. It does no I/O and starts nothing; Run
// sweeps idle keys.
func New(cfg Config) *Limiter {
	if cfg.Clock == nil {
		cfg.Clock = clockwork.NewRealClock()
	}
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}
	if cfg.IdleAfter <= 0 {
		cfg.IdleAfter = 10 * time.Minute
	}
	l := &Limiter{cfg: cfg, clock: cfg.Clock, obs: cfg.Observer, closed: make(chan struct{}), keys: map[string]*keyState{}}
	l.anon = &keyState{}
	if cfg.AnonymousRate > 0 {
		l.anon.smooth = rate.NewLimiter(cfg.AnonymousRate, max(cfg.AnonymousBurst, 1))
	}
	return l
}

// Admit waits until key may send one attempt upstream, or decides it may
// not. A refusal is a Decision with Allowed false, not an error; the error
// is ctx's when the caller went away (nothing is counted then), ErrClosed
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
	defer l.release(key, ks)

	if d, ok, err := l.smooth(ctx, ks, start, deadline); !ok || err != nil {
		return d, err
	}
	if key == "" {
		return Decision{Allowed: true, Waited: l.clock.Since(start)}, nil
	}

	var res Result
	ks.mu.Lock()
	if ks.queue.Len() == 0 {
		// Fast path: nobody is waiting for this key, so asking the store
		// directly keeps FIFO order.
		ks.mu.Unlock()
		d, r, done, err := l.ask(ctx, ks, key, start, deadline)
		if done || err != nil {
			return d, err
		}
		res = r
		ks.mu.Lock()
	}
	ahead := ks.queue.Len()
	if ahead >= l.cfg.MaxDepth || l.queued.Load() >= int64(l.cfg.MaxQueued) {
		ks.mu.Unlock()
		if est, err := l.take(ctx, key, ahead); err == nil {
			res = est
		}
		return l.refuse(res, ReasonQueueFull, start), nil
	}
	if ahead > 0 {
		// Joining behind others: only worth it if ahead+1 slots free in time.
		ks.mu.Unlock()
		var err error
		if res, err = l.take(ctx, key, ahead); err != nil {
			return Decision{}, err
		}
		if !fits(l.clock.Now(), res.RetryAfter, deadline) {
			return l.refuse(res, reasonFor(res), start), nil
		}
		ks.mu.Lock()
	}
	w := &waiter{ready: make(chan struct{}, 1)}
	el := ks.queue.PushBack(w)
	head := ks.queue.Front() == el
	ks.mu.Unlock()
	l.queued.Add(1)
	l.obs.QueueDepth(1)
	defer func() {
		ks.mu.Lock()
		if ks.queue.Front() == el {
			if next := el.Next(); next != nil {
				next.Value.(*waiter).ready <- struct{}{}
			}
		}
		ks.queue.Remove(el)
		ks.mu.Unlock()
		l.queued.Add(-1)
		l.obs.QueueDepth(-1)
		l.obs.QueueWait(l.clock.Since(start))
	}()

	expire := l.clock.NewTimer(max(deadline.Sub(l.clock.Now()), 0))
	defer expire.Stop()
	for {
		if !head {
			select {
			case <-w.ready:
				head = true
			case <-expire.Chan():
				res.RetryAfter = max(res.RetryAfter-l.clock.Since(start), 0)
				return l.refuse(res, reasonFor(res), start), nil
			case <-ctx.Done():
				return Decision{}, ctx.Err()
			case <-l.closed:
				return Decision{}, ErrClosed
			}
		}
		d, r, done, err := l.ask(ctx, ks, key, start, deadline)
		if done || err != nil {
			return d, err
		}
		res = r
		// The head sleeps until its slot frees, then asks once more: no
		// polling, one store call per expected free slot.
		if err := l.sleep(ctx, max(res.RetryAfter, time.Millisecond)); err != nil {
			return Decision{}, err
		}
	}
}

// ask asks the store for one slot for key. done is true when the answer is
// final: admitted, or refused because the slot frees after deadline.
// Otherwise res.RetryAfter says how long until it frees.
func (l *Limiter) ask(ctx context.Context, ks *keyState, key string, start, deadline time.Time) (d Decision, res Result, done bool, err error) {
	if res, err = l.takeOne(ctx, ks, key); err != nil {
		return Decision{}, res, true, err
	}
	if res.Allowed {
		return Decision{Allowed: true, Result: res, Waited: l.clock.Since(start)}, res, true, nil
	}
	if !fits(l.clock.Now(), res.RetryAfter, deadline) {
		return l.refuse(res, reasonFor(res), start), res, true, nil
	}
	return Decision{}, res, false, nil
}

// smooth applies the key's local rate. ok is false when the request was
// refused or failed.
func (l *Limiter) smooth(ctx context.Context, ks *keyState, now, deadline time.Time) (Decision, bool, error) {
	if ks.smooth == nil {
		return Decision{}, true, nil
	}
	r := ks.smooth.ReserveN(now, 1)
	if !r.OK() {
		return l.refuse(Result{RetryAfter: time.Second}, ReasonSmoothing, now), false, nil
	}
	d := r.DelayFrom(now)
	if d == 0 {
		return Decision{}, true, nil
	}
	if !fits(now, d, deadline) {
		r.CancelAt(now)
		return l.refuse(Result{RetryAfter: d}, ReasonSmoothing, now), false, nil
	}
	if err := l.sleep(ctx, d); err != nil {
		r.CancelAt(l.clock.Now())
		return Decision{}, false, err
	}
	return Decision{}, true, nil
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

func (l *Limiter) take(ctx context.Context, key string, ahead int) (Result, error) {
	res, err := l.cfg.Store.Take(ctx, key, Take{Ahead: ahead})
	if err != nil {
		return res, fmt.Errorf("quota store: %w", err)
	}
	return res, nil
}

func (l *Limiter) refuse(res Result, reason string, start time.Time) Decision {
	l.obs.Rejected(reason)
	res.Allowed = false
	return Decision{Result: res, Reason: reason, Waited: l.clock.Since(start)}
}

func reasonFor(res Result) string {
	if res.Blocked {
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
// the key until then, by any replica sharing the store.
func (l *Limiter) Exhaust(ctx context.Context, key string, d time.Duration) error {
	if key == "" || d <= 0 {
		return nil
	}
	// Slots leased here must not be used either.
	l.mu.Lock()
	if ks := l.keys[key]; ks != nil {
		ks.mu.Lock()
		ks.lease.drop()
		ks.mu.Unlock()
	}
	l.mu.Unlock()
	if err := l.cfg.Store.Block(ctx, key, d); err != nil {
		return fmt.Errorf("quota store: %w", err)
	}
	return nil
}

// Status reports key's quota without counting anything (a store question
// with one request ahead never counts): what the RateLimit headers of an
// uncharged request show.
func (l *Limiter) Status(ctx context.Context, key string) (Result, error) {
	res, err := l.take(ctx, key, 1)
	res.Allowed, res.RetryAfter = false, 0
	return res, err
}

// Queued returns how many requests wait in all queues.
func (l *Limiter) Queued() int { return int(l.queued.Load()) }

// Close wakes every waiting request with ErrClosed, the end of a shutdown
// whose grace period ran out, and waits for lease refills in flight (each
// bounded by the store's own timeout).
func (l *Limiter) Close() {
	l.close.Do(func() { close(l.closed) })
	l.mu.Lock()
	l.noRefills = true // refills start under mu: none after this
	l.mu.Unlock()
	l.refills.Wait()
}

func (l *Limiter) acquire(key string) *keyState {
	if key == "" {
		return l.anon
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	ks := l.keys[key]
	if ks == nil {
		ks = &keyState{}
		if l.cfg.Rate > 0 {
			ks.smooth = rate.NewLimiter(l.cfg.Rate, max(l.cfg.Burst, 1))
		}
		l.keys[key] = ks
	}
	ks.refs++
	return ks
}

func (l *Limiter) release(key string, ks *keyState) {
	if key == "" {
		return
	}
	now := l.clock.Now()
	l.mu.Lock()
	ks.refs--
	ks.lastUsed = now
	l.mu.Unlock()
}

// Sweep drops the local state of keys unused for IdleAfter and returns how
// many remain.
func (l *Limiter) Sweep() int {
	cutoff := l.clock.Now().Add(-l.cfg.IdleAfter)
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, ks := range l.keys {
		if ks.refs == 0 && ks.lastUsed.Before(cutoff) {
			delete(l.keys, k)
		}
	}
	return len(l.keys)
}

// Run sweeps idle keys every interval until ctx is done.
func (l *Limiter) Run(ctx context.Context, interval time.Duration) error {
	every(ctx, l.clock, interval, func() { l.Sweep() })
	return nil
}

type nopObserver struct{}

func (nopObserver) QueueDepth(int)          {}
func (nopObserver) QueueWait(time.Duration) {}
func (nopObserver) Rejected(string)         {}
