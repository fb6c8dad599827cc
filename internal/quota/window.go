package quota

import (
	"cmp"
	"slices"
	"sort"
)

// This file is the quota algorithm, stated once: MemoryStore runs it on
// its own clock in nanoseconds, redis_take.lua runs the same steps on Redis
// TIME in milliseconds (TestRedisScriptMatchesMemory holds them equal).
//
// A key's window holds two kinds of counts:
//
//   - taken: n slots counted in sub-bucket b (Policy.BucketWidth wide),
//     used from the take until the bucket ends (a lease's slots until
//     Take.Hold after the take, counted in the bucket of that moment);
//   - reserved: n slots for requests that wait, usable from their start s
//     (exact, not rounded to a bucket) until the end of s's bucket.
//
// A count in bucket b occupies its slots from its start (now, for a take)
// until end(b) = (b+1)*width + span, span = window + margin: the upstream
// receives a slot's request at most margin after the bucket it is counted
// in ends, and counts it for a window after that. count(t) is the number of
// slots occupied at time t. The invariant every store keeps is
//
//	count(t) <= limit for every t
//
// which bounds the requests any rolling window of the upstream can see
// (whatever the replicas' clocks: only the store's clock stamps counts).
// A new count of k slots over [start, end) is placed only if count stays
// within the limit over all of it, so a reservation counted for later is
// seen by every take after it: nobody, on any replica, can take the slot a
// waiter was promised, and a take now is refused if it would use a slot
// that the profile has already promised to someone else later.
//
// The earliest start a waiting request can get is the first moment from
// which count stays below the limit until its own end: the profile is a
// step function, so that moment is its start bound or the end of a full
// step (earliest). A request that cannot start within its wait is refused
// at once, and that moment is its honest Retry-After.

// geometry is a store's policy in its own time unit.
type geometry struct {
	limit int
	width int64 // sub-bucket width
	span  int64 // window + margin
}

func (g geometry) bucket(t int64) int64 { return floorDiv(t, g.width) }

// end is when a count in bucket b stops occupying its slots.
func (g geometry) end(b int64) int64 { return (b+1)*g.width + g.span }

// counts is one key's window: taken counts by bucket, reserved counts by
// start, both sorted ascending, and the end of a Block.
type counts struct {
	taken        []count
	reserved     []count
	blockedUntil int64 // 0: not blocked
}

// count is n slots at "at": a bucket for taken counts, a start time for
// reserved ones.
type count struct {
	at int64
	n  int
}

// prune drops counts that no longer occupy a slot at now.
func (c *counts) prune(g geometry, now int64) {
	c.taken = pruned(c.taken, func(x count) bool { return g.end(x.at) > now && x.n > 0 })
	c.reserved = pruned(c.reserved, func(x count) bool { return g.end(g.bucket(x.at)) > now && x.n > 0 })
}

func pruned(xs []count, keep func(count) bool) []count {
	out := xs[:0]
	for _, x := range xs {
		if keep(x) {
			out = append(out, x)
		}
	}
	return out
}

func (c *counts) empty() bool {
	return len(c.taken) == 0 && len(c.reserved) == 0
}

// add counts n more slots at "at" in xs, kept sorted.
func add(xs []count, at int64, n int) []count {
	i := sort.Search(len(xs), func(i int) bool { return xs[i].at >= at })
	if i < len(xs) && xs[i].at == at {
		xs[i].n += n
		return xs
	}
	xs = append(xs, count{})
	copy(xs[i+1:], xs[i:])
	xs[i] = count{at, n}
	return xs
}

// sub takes n slots back from "at", if it holds them; it reports whether
// it did.
func sub(xs []count, at int64, n int) ([]count, bool) {
	i := sort.Search(len(xs), func(i int) bool { return xs[i].at >= at })
	if i == len(xs) || xs[i].at != at || xs[i].n < n {
		return xs, false
	}
	if xs[i].n -= n; xs[i].n == 0 {
		xs = append(xs[:i], xs[i+1:]...)
	}
	return xs, true
}

// ask is one Take in store units.
type ask struct {
	now, wait, notBefore, hold int64
	want                       int
	peek                       bool
}

// verdict is what decide answers, in store units.
type verdict struct {
	allowed  bool
	reserved bool  // a reservation (at is its start) or a take (at is its bucket)
	at       int64 // where the slots were counted
	n        int   // how many
	lease    bool
	delay    int64 // until the slot may be used
	usable   int64 // until it must have been used
	blocked  bool
	// remaining, retry and reset are Result's fields.
	remaining    int
	retry, reset int64
}

// step is a piece of the occupancy profile: v slots from "from" on, until
// the next step (the last step is 0 for ever).
type step struct {
	from int64
	v    int
}

// decide is one atomic decision for a key whose dead counts were pruned at
// a.now: count nothing (peek), take slots now (a lease when a.hold > 0),
// reserve the earliest slot that frees within a.wait (at or after
// a.notBefore when one does), or refuse.
func decide(g geometry, c *counts, a ask) verdict {
	now := a.now
	used, future := 0, false
	var reset int64 = -1
	for _, x := range c.taken {
		used += x.n
		reset = minEnd(reset, g.end(x.at))
	}
	for _, x := range c.reserved {
		if x.at > now {
			future = true
		} else {
			used += x.n
		}
		reset = minEnd(reset, g.end(g.bucket(x.at)))
	}
	var v verdict
	if reset >= 0 {
		v.reset = reset - now
	}
	blocked := c.blockedUntil > now
	cur := g.bucket(now)
	lease := a.hold > 0 && !a.peek
	takeAt := cur // where a take now is counted
	if lease {
		takeAt = g.bucket(now + a.hold)
	}

	if !future && !blocked && a.notBefore == 0 {
		// Nothing is reserved for later: count only falls from now on, so
		// what counts now is the most that ever will.
		room := g.limit - used
		v.remaining = max(room, 0)
		if a.peek {
			return v
		}
		if room >= 1 {
			k := grant(room, a.want, lease)
			v.remaining = room - k
			placeTake(g, c, &v, now, takeAt, k, lease, a.hold)
			return v
		}
	}

	prof := profile(g, c, now, used)
	from := now
	if blocked {
		v.blocked, v.reset = true, c.blockedUntil-now
		from = c.blockedUntil
	} else {
		v.remaining = max(g.limit-maxOver(prof, now, g.end(cur)), 0)
	}
	if a.peek {
		if blocked {
			v.retry = v.reset
		}
		return v
	}
	if !blocked && a.notBefore == 0 {
		if room := g.limit - maxOver(prof, now, g.end(takeAt)); room >= 1 {
			k := grant(room, a.want, lease)
			v.remaining = max(g.limit-maxWith(prof, now, g.end(cur), now, g.end(takeAt), k), 0)
			placeTake(g, c, &v, now, takeAt, k, lease, a.hold)
			return v
		}
	}
	start := earliest(g, prof, max(from, now+a.notBefore))
	if start-now > a.wait && a.notBefore > 0 {
		// No slot from the smoothing turn on fits in the wait: an earlier
		// one does better than a refusal.
		start = earliest(g, prof, from)
	}
	switch {
	case start-now > a.wait:
		v.retry = earliest(g, prof, from) - now
		return v
	case start == now:
		// Free now (only reached when the smoothing turn was given up).
		v.remaining = max(g.limit-maxWith(prof, now, g.end(cur), now, g.end(cur), 1), 0)
		placeTake(g, c, &v, now, cur, 1, false, 0)
		return v
	}
	b := g.bucket(start)
	c.reserved = add(c.reserved, start, 1)
	if !blocked {
		v.remaining = max(g.limit-maxWith(prof, now, g.end(cur), start, g.end(b), 1), 0)
	}
	v.allowed, v.reserved, v.at, v.n = true, true, start, 1
	v.delay, v.usable = start-now, (b+1)*g.width-now
	if !blocked {
		v.reset = resetWith(v.reset, g.end(b)-now)
	}
	return v
}

// resetWith is ResetAfter once a count ending e from now was placed: the
// earlier of e and reset, the earliest end before (0: nothing counted, as
// every live count ends after now).
func resetWith(reset, e int64) int64 {
	if reset == 0 {
		return e
	}
	return min(reset, e)
}

func minEnd(cur, e int64) int64 {
	if cur < 0 || e < cur {
		return e
	}
	return cur
}

// grant is how many slots a take with room for room counts: one, or for a
// lease what it wants, at most 1/16 of the room (at least one), so that near
// the limit every admission is a single slot again and no replica sits on
// slots another could use.
func grant(room, want int, lease bool) int {
	if !lease {
		return 1
	}
	return max(1, min(max(want, 1), room/16))
}

// placeTake counts k slots taken at bucket at into c and v.
func placeTake(g geometry, c *counts, v *verdict, now, at int64, k int, lease bool, hold int64) {
	c.taken = add(c.taken, at, k)
	v.allowed, v.at, v.n, v.lease = true, at, k, lease
	v.reset = resetWith(v.reset, g.end(at)-now)
	v.usable = (g.bucket(now)+1)*g.width - now
	if lease {
		v.usable = hold
	}
}

// profile is count(t) for t >= now as steps: used from now, then every
// change (a reserved count starting, a count ending) in time order.
func profile(g geometry, c *counts, now int64, used int) []step {
	type change struct {
		at int64
		d  int
	}
	var ch []change
	for _, x := range c.taken {
		ch = append(ch, change{g.end(x.at), -x.n})
	}
	for _, x := range c.reserved {
		if x.at > now {
			ch = append(ch, change{x.at, x.n})
		}
		ch = append(ch, change{g.end(g.bucket(x.at)), -x.n})
	}
	slices.SortFunc(ch, func(a, b change) int { return cmp.Compare(a.at, b.at) })
	prof := []step{{now, used}}
	for _, x := range ch {
		last := &prof[len(prof)-1]
		if x.at == last.from {
			last.v += x.d
		} else {
			prof = append(prof, step{x.at, last.v + x.d})
		}
	}
	return prof
}

// maxOver is the most slots occupied at any time in [from, to).
func maxOver(prof []step, from, to int64) int {
	return maxWith(prof, from, to, 0, 0, 0)
}

// maxWith is maxOver with k more slots occupied over [ps, pe).
func maxWith(prof []step, from, to, ps, pe int64, k int) int {
	m := 0
	for i, s := range prof {
		lo, hi := s.from, int64(1<<62)
		if i+1 < len(prof) {
			hi = prof[i+1].from
		}
		lo, hi = max(lo, from), min(hi, to)
		if lo >= hi {
			continue
		}
		v := s.v
		if max(lo, ps) < min(hi, pe) {
			v += k
		}
		m = max(m, v)
	}
	return m
}

// earliest is the first moment at or after from at which one more slot
// can start and stay below the limit until its end: from itself, or the
// end of a full step.
func earliest(g geometry, prof []step, from int64) int64 {
	t := from
	for i, s := range prof {
		if s.v < g.limit {
			continue
		}
		hi := int64(1 << 62)
		if i+1 < len(prof) {
			hi = prof[i+1].from
		}
		if hi <= t {
			continue
		}
		if s.from >= g.end(g.bucket(t)) {
			break
		}
		t = hi
	}
	return t
}
