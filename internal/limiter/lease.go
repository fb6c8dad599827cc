package limiter

import (
	"context"
	"fmt"
	"time"

	"github.com/fusioo-gateway/gateway/internal/quota"
)

// lease is what a key holds at this replica of slots the store counted
// ahead (quota.Take.Hold) but that no request has used yet: the batch being used
// and, once it is half used or half expired, the next one, fetched in the
// background so that steady traffic seldom waits for the store. Guarded by
// keyState.mu.
type lease struct {
	cur, next batch
	last      quota.Result // the store's latest answer that granted a batch
	lastAt    time.Time    // when it was asked for
	granted   int          // size of the last batch granted
	fetching  bool         // a take asking for a batch is in flight
	// gen counts drops: a batch asked for before a drop (the upstream
	// said the quota is gone) is not used when it arrives after it.
	gen uint64

	// The demand: takes of the key in the lease time that started at
	// since, and in the one before (scaled to a lease time when the key
	// was idle longer).
	since       time.Time
	count, prev int
}

// batch is slots granted by one store call.
type batch struct {
	left  int       // slots not yet used
	until time.Time // they may be used before then, never after
}

func (b *batch) usable(now time.Time) bool { return b.left > 0 && now.Before(b.until) }

// drop forgets every slot held: they stay counted in the store and are
// never used.
func (ls *lease) drop() { ls.cur, ls.next, ls.gen = batch{}, batch{}, ls.gen+1 }

// use takes one slot from the lease when it has one usable at now, and
// returns the answer to report (the store's latest, with the slots still
// held here added to Remaining, since the store counted them as used, and
// ResetAfter aged) and until when the slot may be used.
func (ls *lease) use(now time.Time) (quota.Result, time.Time, bool) {
	if !ls.cur.usable(now) {
		ls.cur, ls.next = ls.next, batch{}
		if !ls.cur.usable(now) {
			ls.cur = batch{}
			return quota.Result{}, time.Time{}, false
		}
	}
	ls.cur.left--
	res := ls.last
	res.Remaining += ls.cur.left + ls.next.left
	res.ResetAfter = max(res.ResetAfter-now.Sub(ls.lastAt), 0)
	res.Granted = 0
	res.Slot = quota.Reservation{} // one of a batch: not given back alone
	return res, ls.cur.until, true
}

// observe counts a take of the key at now in the demand.
func (ls *lease) observe(now time.Time, lease time.Duration) {
	if elapsed := now.Sub(ls.since); elapsed >= lease {
		ls.prev = int(int64(ls.count) * int64(lease) / int64(elapsed))
		ls.since, ls.count = now, 0
	}
	ls.count++
}

// want sizes a batch to the key's demand: the takes of the last whole
// lease time, or of the current one once it has seen more. It rounds down
// (a slot too few costs a round trip, one too many is quota left unused).
func (ls *lease) want(most int) int { return min(max(ls.prev, ls.count, 1), most) }

// grant records a batch of res.Granted slots asked for at asked with hold
// (before the call: the store counted them hold after the moment it ran,
// which is later, so they are safe to use until asked + hold). kept is how
// many of them the caller used itself.
func (ls *lease) grant(res *quota.Result, asked time.Time, hold time.Duration, kept int) {
	b := batch{left: res.Granted - kept, until: asked.Add(hold)}
	if ls.cur.left == 0 {
		ls.cur = b
	} else {
		ls.next = b
	}
	ls.last, ls.lastAt, ls.granted = *res, asked, res.Granted
}

// refillDue reports, after a take from the current batch at now, whether
// to fetch the next one, and how: its size and hold. It is due once the
// current batch is half used or half expired. The next batch is used once
// the current one is, and for a whole lease time from then: its hold
// starts when the current batch is expected to run out (at the demand's
// rate, or at its end), so asking early costs nothing. A hold is therefore
// at most two and a half lease times.
func (ls *lease) refillDue(now time.Time, lease time.Duration, most int) (int, time.Duration, bool) {
	if ls.fetching || ls.next.left > 0 {
		return 0, 0, false
	}
	rest := ls.cur.until.Sub(now)
	if ls.cur.left > ls.granted/2 && rest > lease/2 {
		return 0, 0, false
	}
	want := ls.want(most)
	if d := time.Duration(int64(ls.cur.left) * int64(lease) / int64(want)); d < rest {
		rest = d
	}
	// Used over a lease time from then, and valid half a lease time more,
	// so a steady demand's last slot is not lost at the edge.
	return want, max(rest, 0) + lease + lease/2, true
}

// leasing reports whether the limiter leases slots.
func (l *Limiter) leasing() bool { return l.cfg.Lease > 0 && l.cfg.LeaseMax > 1 }

// obtain gets key one slot: from its lease when one is usable now
// (starting a background refill when the batch is half used), otherwise
// from the store, now or reserved within wait, asking for a batch sized to
// the demand the last one saw when nobody else of the key is asking
// already. ok false is the store's refusal, and s.res says why.
func (l *Limiter) obtain(ctx context.Context, ks *keyState, key string, now time.Time, turn, wait time.Duration, s *slot) (ok bool, _ error) {
	t := quota.Take{Wait: wait, NotBefore: turn}
	fetch, gen := false, uint64(0)
	if l.leasing() && turn == 0 {
		if l.fromLease(ks, key, now, s) {
			return true, nil
		}
		ks.mu.Lock()
		// While another request of the key asks for a batch, take a
		// single slot rather than leasing a second batch; and with demand
		// too low for a batch, an ordinary take.
		if want := ks.lease.want(l.cfg.LeaseMax); !ks.lease.fetching && want > 1 {
			t.Want, t.Hold = want, l.cfg.Lease
			ks.lease.fetching, fetch, gen = true, true, ks.lease.gen
		}
		ks.mu.Unlock()
	}

	sent := l.clock.Now()
	res, err := l.cfg.Store.Take(ctx, key, t)
	recv := l.clock.Now()
	if fetch {
		ks.mu.Lock()
		ls := ks.lease
		ls.fetching = false
		switch {
		case err != nil:
		case !res.Allowed:
			ls.drop()
		case res.Granted > 0 && ls.gen == gen:
			ls.grant(&res, sent, l.cfg.Lease, 1)
			res.Remaining += res.Granted - 1 // held here, not used
		default:
			// An ordinary take or a reservation (the local fallback while
			// Redis is away, the quota near its end), or a batch asked for
			// before the lease was dropped: only the caller's slot is used.
		}
		ks.mu.Unlock()
	}
	if err != nil {
		return false, fmt.Errorf("quota store: %w", err)
	}
	s.res = res
	if !res.Allowed {
		return false, nil
	}
	s.res.Granted = 0
	s.notBefore, s.notAfter, s.give = recv.Add(res.Delay), sent.Add(res.Usable), res.Slot
	return true, nil
}

// fromLease takes s from the key's lease when one is usable now, starting
// the background refill when it is due. It records the demand either way.
func (l *Limiter) fromLease(ks *keyState, key string, now time.Time, s *slot) bool {
	ks.mu.Lock()
	ls := ks.lease
	ls.observe(now, l.cfg.Lease)
	res, until, ok := ls.use(now)
	if !ok {
		ks.mu.Unlock()
		return false
	}
	want, hold, due := ls.refillDue(now, l.cfg.Lease, l.cfg.LeaseMax)
	ls.fetching = ls.fetching || due
	gen := ls.gen
	ks.mu.Unlock()
	if due {
		l.startRefill(ks, key, want, hold, now, gen)
	}
	s.notBefore, s.notAfter, s.res = now, until, res
	return true
}

// startRefill fetches the key's next batch in the background. The refill
// holds a reference to the key's state, so the sweeper keeps it, and is
// not started once the limiter is closed.
func (l *Limiter) startRefill(ks *keyState, key string, want int, hold time.Duration, asked time.Time, gen uint64) {
	l.refillMu.Lock()
	if l.noRefills {
		l.refillMu.Unlock()
		ks.mu.Lock()
		ks.lease.fetching = false
		ks.mu.Unlock()
		return
	}
	sh := l.shard(key)
	sh.mu.Lock()
	ks.refs++
	sh.mu.Unlock()
	l.refills.Add(1)
	l.refillMu.Unlock()
	go func() {
		defer l.refills.Done()
		defer l.release(key, ks)
		// Nobody waits for this call: it is bounded by the store's own
		// timeout, not by a request's context.
		res, err := l.cfg.Store.Take(context.Background(), key, quota.Take{Want: want, Hold: hold})
		ks.mu.Lock()
		defer ks.mu.Unlock()
		ks.lease.fetching = false
		// A refill the store answered without a lease counted a slot now
		// that nobody can use now: it is lost, as refused refills are.
		if err == nil && res.Allowed && res.Granted > 0 && ks.lease.gen == gen {
			ks.lease.grant(&res, asked, hold, 0)
		}
	}()
}
