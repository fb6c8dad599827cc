// Package flight shares one HTTP answer among identical requests in flight
// together: the first caller of a key (the leader) runs the exchange and
// answers its own client through Flight.Writer, which records the answer
// as it passes; every later caller streams the recording to its client
// (Serve): the status and headers once they are known, then the body as it
// comes, from its first byte, however late it joined. An answer nobody has
// joined by its header is not recorded (Writer): who comes later leads a
// flight of its own.
//
// It is golang.org/x/sync/singleflight for a streamed answer, with one
// difference that matters to a gateway: the exchange belongs to no caller.
// A caller that leaves, the leader included, stops its own answer only;
// the exchange's context (Flight.Context) ends when the last caller has
// left before the answer was complete. The leader's goroutine runs the
// exchange: a flight costs no goroutine of its own.
//
// What makes two requests the same is the caller's to say (Key); this
// package knows nothing of tokens, routes or quotas.
package flight

import (
	"context"
	"crypto/sha256"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
)

// Key names a request: a digest (SHA-256) of everything that can change
// its answer, which the caller computes.
type Key [sha256.Size]byte

// DefaultMaxBuffer is Group.MaxBuffer's default: 1 MiB.
const DefaultMaxBuffer = 1 << 20

// DefaultMaxTotal is Group.MaxTotal's default: 64 MiB.
const DefaultMaxTotal = 64 << 20

// keep counts n more bytes kept, and reports false (counting nothing)
// when that would pass MaxTotal.
func (g *Group) keep(n int64) bool {
	max := g.MaxTotal
	if max <= 0 {
		max = DefaultMaxTotal
	}
	if g.held.Add(n) > max {
		g.held.Add(-n)
		return false
	}
	return true
}

// Held is what the flights keep, in bytes, for tests and metrics.
func (g *Group) Held() int64 { return g.held.Load() }

// Group holds the flights in progress. Its zero value is ready to use.
type Group struct {
	// MaxBuffer bounds what a flight keeps of its body for callers that
	// join late: once the body is longer, nobody joins (the next identical
	// request starts a flight of its own), what every caller has sent on
	// is dropped, and a caller that falls MaxBuffer behind the exchange
	// is cut (ErrLagged) rather than hold its body for everyone.
	// 0: DefaultMaxBuffer.
	MaxBuffer int
	// MaxTotal bounds what all flights together keep: a flight whose
	// body would pass it keeps nothing more for late joiners, as one past
	// MaxBuffer (so that many slow downloads cannot hold MaxBuffer each).
	// 0: DefaultMaxTotal.
	MaxTotal int64

	held atomic.Int64 // bytes kept, against MaxTotal

	// shards hold the flights in progress, by their key's first byte: a
	// request locks its key's shard only, so reads of different keys
	// never wait for each other. Solo flights go to the shard of their
	// sequence number (solo), in its others.
	shards [groupShards]groupShard
	solo   atomic.Uint64
	// closed is Close's cause once it ran.
	closed atomic.Pointer[error]
}

// groupShards is the number of a Group's shards.
const groupShards = 64

type groupShard struct {
	mu sync.Mutex
	m  map[Key]*Flight // the joinable flight of each key
	// others are the flights in progress nobody joins by key: Solo's,
	// and those a later flight of their key displaced from m once they
	// stopped being joinable (a body past MaxBuffer), kept so that Close
	// reaches them.
	others map[*Flight]struct{}
}

// addOther adds f to sh.others (sh.mu held).
func (sh *groupShard) addOther(f *Flight) {
	if sh.others == nil {
		sh.others = map[*Flight]struct{}{}
	}
	sh.others[f] = struct{}{}
}

func (g *Group) shard(f *Flight) *groupShard {
	if f.seq != 0 {
		return &g.shards[f.seq%groupShards]
	}
	return &g.shards[f.key[0]%groupShards]
}

// newFlight sets f up as a new flight of g, one caller in: its context
// has parent's values and ends with Close's cause when the group is
// closed, at once if it already is. Called with the lock of the shard f
// is then added to held, so that Close, which takes each shard's lock in
// turn, either sees f there or is seen here.
func (g *Group) newFlight(parent context.Context, f *Flight) *Flight {
	f.g, f.callers, f.max = g, 1, g.Buffer()
	// Without parent's cancellation, which would register every flight
	// under one context (a lock all keys share): Close ends them. (A
	// parent that cannot be cancelled is used as it is.)
	if parent.Done() != nil {
		parent = context.WithoutCancel(parent)
	}
	f.ctx, f.cancel = context.WithCancelCause(parent)
	if cause := g.closed.Load(); cause != nil {
		f.cancel(*cause)
	}
	return f
}

// Close cancels every flight in progress with cause, and every one
// started from now on: a gateway's shutdown, whose grace period ran out.
func (g *Group) Close(cause error) {
	c := cause // not &cause: the parameter is written below
	g.closed.CompareAndSwap(nil, &c)
	cause = *g.closed.Load()
	for i := range g.shards {
		sh := &g.shards[i]
		sh.mu.Lock()
		for _, f := range sh.m {
			f.cancel(cause)
		}
		for f := range sh.others {
			f.cancel(cause)
		}
		sh.mu.Unlock()
	}
}

// Join returns the flight in progress for key, or a new one; leader
// reports whether the caller must run the exchange: under Flight.Context,
// answering through Writer, ending with Finish (and LeaderLeft if its
// client leaves first). Every other caller calls Serve once.
//
// A new flight's context has parent's values, not its cancellation, nor
// any caller's: it ends when its callers have all left, when it
// finishes, or when the group is closed.
func (g *Group) Join(parent context.Context, key Key) (f *Flight, leader bool) {
	sh := &g.shards[key[0]%groupShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if f := sh.m[key]; f != nil {
		f.mu.Lock()
		ok := f.joinable
		if ok {
			f.callers++
		}
		f.mu.Unlock()
		if ok {
			return f, false
		}
	}
	if sh.m == nil {
		sh.m = map[Key]*Flight{}
	}
	if old := sh.m[key]; old != nil {
		sh.addOther(old) // still in progress, joinable no more
	}
	f = g.newFlight(parent, &Flight{key: key, joinable: true})
	sh.m[key] = f
	return f, true
}

// Solo returns a flight nobody joins: the recording of one request's
// answer (to cache it), run as a leader runs one.
func (g *Group) Solo(parent context.Context) *Flight {
	f := &Flight{seq: g.solo.Add(1)}
	sh := g.shard(f)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	sh.addOther(g.newFlight(parent, f))
	return f
}

// Buffer is MaxBuffer with its default applied: what a flight keeps for
// late joiners.
func (g *Group) Buffer() int64 {
	if g.MaxBuffer <= 0 {
		return DefaultMaxBuffer
	}
	return int64(g.MaxBuffer)
}

// InFlight is the number of flights in progress, for tests and metrics.
func (g *Group) InFlight() int {
	n := 0
	for i := range g.shards {
		sh := &g.shards[i]
		sh.mu.Lock()
		n += len(sh.m) + len(sh.others)
		sh.mu.Unlock()
	}
	return n
}

// displace takes f out of its key's map (nobody joins it) but keeps it in
// others, so that Close still reaches it; Finish drops it.
func (g *Group) displace(f *Flight) {
	sh := g.shard(f)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.m[f.key] == f {
		delete(sh.m, f.key)
	}
	sh.addOther(f)
}

// leave drops f from the group, if it is still the flight of its key.
func (g *Group) leave(f *Flight) {
	sh := g.shard(f)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if f.seq == 0 && sh.m[f.key] == f {
		delete(sh.m, f.key)
	} else {
		delete(sh.others, f)
	}
}

// ErrAborted is Serve's error when the exchange ended without a complete
// answer (Finish(false)): the caller should cut its client's connection,
// as the exchange's own client would have seen it cut.
var ErrAborted = errors.New("flight: the shared answer was cut")

// ErrLagged is Serve's error for a caller that fell more than MaxBuffer
// behind the exchange's body.
var ErrLagged = errors.New("flight: fell too far behind the shared answer")

// Flight is one exchange and its recording. The leader writes it through
// Writer, one goroutine at a time; the other callers read it with Serve.
type Flight struct {
	g      *Group
	key    Key
	seq    uint64 // Solo's sequence number (from 1); 0: a flight of key
	ctx    context.Context
	cancel context.CancelCauseFunc

	mu       sync.Mutex
	changed  chan struct{} // closed on the next change; nil: nobody waits
	status   int
	sent     http.Header // the header as of WriteHeader: read-only after
	chunks   [][]byte    // the body from offset base on
	base     int64
	size     int64
	done     bool
	complete bool
	joinable bool
	callers  int
	readers  map[*int64]struct{} // offsets of the callers serving
	max      int64
	// leaderGone: the leader's client left (LeaderLeft).
	leaderGone bool
	kept       int64 // bytes counted against the group's MaxTotal
	over       bool  // the group's MaxTotal refused more: keep nothing for late joiners
	// direct: the answer was not recorded (nobody shared it when its
	// header came, Writer), and goes to the leader's client alone.
	direct bool
}

// Context is the exchange's context: cancelled when every caller has left
// before the answer was complete, when the group is closed (with Close's
// cause), or after Finish.
func (f *Flight) Context() context.Context { return f.ctx }

// Writer returns the leader's http.ResponseWriter for the exchange: what
// is written goes to w, the leader's client, and into the recording the
// other callers serve. Once the leader's client has gone (LeaderLeft, or a
// failed write), writes still record, so the others keep getting the
// answer.
//
// An answer nobody shares when its header comes is not recorded unless
// keep is true (the caller stores it, Body) or the flight is Solo: the
// flight stops being joinable then, so a caller that comes later starts
// a flight of its own, and the answer goes to w alone, its header not
// copied, its body not kept. Most reads are shared by nobody, and
// recording each one's header and body for callers that might still
// come cost every read two copies of its answer.
func (f *Flight) Writer(w http.ResponseWriter, keep bool) http.ResponseWriter {
	return &tee{f: f, w: w, keep: keep}
}

// LeaderLeft says the leader's client has gone: it no longer counts among
// the callers waiting (the last one to leave cancels the exchange), and
// Writer writes to it no more.
func (f *Flight) LeaderLeft() {
	f.mu.Lock()
	was := f.leaderGone
	f.leaderGone = true
	f.mu.Unlock()
	if !was {
		f.leave()
	}
}

// record notes the status and a copy of the header; when nobody shares
// the answer and it is not kept (Writer's keep, or a Solo flight), only
// the status, and the flight is joinable no more: direct reports that.
func (f *Flight) record(status int, h http.Header, keep bool) (direct bool) {
	f.mu.Lock()
	if f.status != 0 {
		direct = f.direct
		f.mu.Unlock()
		return direct
	}
	f.status = status
	if f.callers == 1 && !f.leaderGone && !keep && f.seq == 0 {
		f.direct, f.joinable = true, false
		f.mu.Unlock()
		f.g.displace(f)
		return true
	}
	f.sent = h.Clone()
	f.broadcast()
	f.mu.Unlock()
	return false
}

// append records body bytes.
func (f *Flight) append(p []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.done || len(p) == 0 {
		return
	}
	f.chunks = append(f.chunks, append([]byte(nil), p...))
	f.size += int64(len(p))
	if !f.over {
		if f.g.keep(int64(len(p))) {
			f.kept += int64(len(p))
		} else {
			f.over = true
		}
	}
	if f.size > f.max || f.over {
		f.joinable = false
		f.trim()
	}
	f.broadcast()
}

// release gives back what f kept to the group's budget, once the answer
// is done and nobody serves it. Called with f.mu held.
func (f *Flight) release() {
	if f.done && len(f.readers) == 0 && f.kept > 0 {
		f.g.held.Add(-f.kept)
		f.kept = 0
	}
}

// Finish ends the recording: complete says whether the answer is whole
// (false: the exchange was cut, and the callers cut theirs). The flight
// leaves the group: an identical request from now on starts another.
func (f *Flight) Finish(complete bool) {
	f.mu.Lock()
	if !f.done {
		f.done, f.complete, f.joinable = true, complete && f.status != 0, false
		f.broadcast()
	}
	f.release()
	f.mu.Unlock()
	f.g.leave(f)
	f.cancel(nil)
}

// Status is the recorded status, 0 before WriteHeader.
func (f *Flight) Status() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.status
}

// Body returns the whole body and true when the answer is complete and
// was kept entire (at most MaxBuffer bytes).
func (f *Flight) Body() ([]byte, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.complete || f.direct || f.base != 0 {
		return nil, false
	}
	b := make([]byte, 0, f.size)
	for _, c := range f.chunks {
		b = append(b, c...)
	}
	return b, true
}

// SentHeader is the header recorded by WriteHeader (nil before): read-only.
func (f *Flight) SentHeader() http.Header {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sent
}

// broadcast wakes the callers waiting for a change. Called with f.mu held.
func (f *Flight) broadcast() {
	if f.changed != nil {
		close(f.changed)
		f.changed = nil
	}
}

// trim drops the chunks every serving caller within MaxBuffer of the end
// has sent on; a caller further behind (a client that stopped reading)
// holds nothing, and is cut when it comes back. Called with f.mu held,
// once the body is past MaxBuffer.
func (f *Flight) trim() {
	min := f.size
	for off := range f.readers {
		if *off < min && f.size-*off <= f.max {
			min = *off
		}
	}
	for len(f.chunks) > 0 && f.base+int64(len(f.chunks[0])) <= min {
		f.base += int64(len(f.chunks[0]))
		f.chunks[0] = nil
		f.chunks = f.chunks[1:]
	}
}

// Serve streams the answer to w: once the status is known, header (the
// recorded header, which the caller may adjust in fix before it is sent)
// and status, then the body from its first byte as it comes, flushed. It
// returns the status sent (0: none) and nil when the whole answer was
// sent; ctx.Err() when the caller's client left first, ErrAborted when the
// exchange was cut, ErrLagged when the caller fell too far behind, or the
// error of writing to w. Every caller of Join but the leader calls it
// once: the last caller to leave before the answer is complete cancels
// the exchange.
func (f *Flight) Serve(ctx context.Context, w http.ResponseWriter, fix func(http.Header)) (int, error) {
	var off int64
	f.mu.Lock()
	if f.readers == nil {
		f.readers = map[*int64]struct{}{}
	}
	f.readers[&off] = struct{}{}
	f.mu.Unlock()
	defer f.leaveServe(&off)

	rc := http.NewResponseController(w)
	status := 0
	for {
		f.mu.Lock()
		if status == 0 && f.status != 0 {
			status = f.status
			f.mu.Unlock()
			h := w.Header()
			for k, v := range f.sent {
				h[k] = v
			}
			if fix != nil {
				fix(h)
			}
			w.WriteHeader(status)
			continue
		}
		var chunk []byte
		if status != 0 {
			if off < f.base {
				f.mu.Unlock()
				return status, ErrLagged
			}
			if f.size-off > f.max && !f.done {
				f.mu.Unlock()
				return status, ErrLagged
			}
			pos := f.base
			for _, c := range f.chunks {
				if off < pos+int64(len(c)) {
					chunk = c[off-pos:]
					break
				}
				pos += int64(len(c))
			}
		}
		done, complete := f.done, f.complete
		var changed chan struct{}
		if chunk == nil && !done {
			if f.changed == nil {
				f.changed = make(chan struct{})
			}
			changed = f.changed
		}
		f.mu.Unlock()
		if chunk != nil {
			if _, err := w.Write(chunk); err != nil {
				return status, err
			}
			_ = rc.Flush()
			f.mu.Lock()
			off += int64(len(chunk))
			f.mu.Unlock()
			continue
		}
		if done {
			if !complete {
				return status, ErrAborted
			}
			return status, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return status, ctx.Err()
		}
	}
}

// leaveServe ends a caller's Serve.
func (f *Flight) leaveServe(off *int64) {
	f.mu.Lock()
	delete(f.readers, off)
	f.release()
	f.mu.Unlock()
	f.leave()
}

// leave counts a caller out; the last caller to leave an answer not yet
// complete cancels the exchange.
func (f *Flight) leave() {
	f.mu.Lock()
	f.callers--
	last := f.callers == 0 && !f.done
	if last {
		f.joinable = false
	}
	f.mu.Unlock()
	if last {
		f.g.leave(f)
		f.cancel(nil)
	}
}

// tee is Writer's http.ResponseWriter.
type tee struct {
	f           *Flight
	w           http.ResponseWriter
	keep        bool // Writer's: record the answer even when nobody shares it
	wroteHeader bool
	direct      bool // the flight's direct: the answer goes to w alone
}

// gone reports whether the leader's client has left.
func (t *tee) gone() bool {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	return t.f.leaderGone
}

func (t *tee) Header() http.Header { return t.w.Header() }

func (t *tee) WriteHeader(status int) {
	if status >= 200 && !t.wroteHeader {
		t.wroteHeader = true
		t.direct = t.f.record(status, t.w.Header(), t.keep)
	}
	if t.direct || !t.gone() {
		t.w.WriteHeader(status)
	}
}

func (t *tee) Write(p []byte) (int, error) {
	if !t.wroteHeader {
		t.WriteHeader(http.StatusOK)
	}
	if t.direct {
		// Nobody else gets this answer: a failed write ends it, as it
		// would a bare proxy's.
		return t.w.Write(p)
	}
	t.f.append(p)
	if !t.gone() {
		if _, err := t.w.Write(p); err != nil {
			t.f.LeaderLeft()
		}
	}
	return len(p), nil
}

func (t *tee) Flush() {
	if t.direct || !t.gone() {
		// Made here (on the stack), not kept in the tee (on the heap).
		_ = http.NewResponseController(t.w).Flush()
	}
}
