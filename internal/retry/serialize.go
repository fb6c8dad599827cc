package retry

import (
	"context"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/fusioo-gateway/gateway/internal/fusioo"
)

// maxLanes bounds the (key, App) pairs the serializer tracks at once. Past
// it (after dropping idle pairs) a new pair is simply not serialized: the
// 30054 retries still work, only less smoothly.
const maxLanes = 4096

// serializer makes creates to one App with one key go one at a time for a
// cooling period after Fusioo answered 30054 for that pair: 30054 is
// contention on the App's auto-increment lock, and retrying racing creates
// side by side only repeats it.
type serializer struct {
	cooldown time.Duration // <= 0: disabled
	clock    clockwork.Clock

	mu        sync.Mutex
	lanes     map[laneKey]*lane
	lastSweep time.Time
}

type laneKey struct{ key, app string }

// lane is one (key, App) pair's turn: holding the single token of turn is
// sending a create of the pair.
type lane struct {
	turn  chan struct{}
	until time.Time // serialized until then
	users int       // goroutines waiting for or holding the turn
}

func newSerializer(cooldown time.Duration, clock clockwork.Clock) *serializer {
	return &serializer{cooldown: cooldown, clock: clock, lanes: map[laneKey]*lane{}}
}

func nop() {}

// mark records a 30054 for (key, app), starting or extending its cooling
// period.
func (s *serializer) mark(key, app string) {
	if s.cooldown <= 0 || app == "" {
		return
	}
	now := s.clock.Now()
	k := laneKey{key, app}
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.lanes[k]
	if l == nil {
		if len(s.lanes) >= maxLanes || now.Sub(s.lastSweep) >= s.cooldown {
			s.sweep(now)
		}
		if len(s.lanes) >= maxLanes {
			return
		}
		l = &lane{turn: make(chan struct{}, 1)}
		s.lanes[k] = l
	}
	l.until = now.Add(s.cooldown)
}

// sweep drops the lanes nobody uses whose cooling period is over. s.mu is
// held.
func (s *serializer) sweep(now time.Time) {
	s.lastSweep = now
	for k, l := range s.lanes {
		if l.users == 0 && !now.Before(l.until) {
			delete(s.lanes, k)
		}
	}
}

// acquire waits for the turn of (key, app) if the pair is cooling, and
// returns the function that gives the turn back and whether a turn is held.
// ok is false when the turn did not come before deadline or the end of
// ctx; release is then a no-op. Pairs that are not cooling pass at once,
// holding nothing.
func (s *serializer) acquire(ctx context.Context, key, app string, deadline time.Time) (release func(), held, ok bool) {
	if s.cooldown <= 0 || app == "" {
		return nop, false, true
	}
	k := laneKey{key, app}
	s.mu.Lock()
	l := s.lanes[k]
	if l == nil || !s.clock.Now().Before(l.until) {
		s.mu.Unlock()
		return nop, false, true
	}
	l.users++
	s.mu.Unlock()

	leave := func() {
		s.mu.Lock()
		l.users--
		if l.users == 0 && !s.clock.Now().Before(l.until) {
			delete(s.lanes, k)
		}
		s.mu.Unlock()
	}
	give := func() { <-l.turn; leave() }
	select {
	case l.turn <- struct{}{}:
		return give, true, true
	default:
	}
	var expired <-chan time.Time
	if !deadline.IsZero() {
		tm := s.clock.NewTimer(deadline.Sub(s.clock.Now()))
		defer tm.Stop()
		expired = tm.Chan()
	}
	select {
	case l.turn <- struct{}{}:
		return give, true, true
	case <-ctx.Done():
	case <-expired:
	}
	leave()
	return nop, false, false
}

// appOf returns the App id of a create or upload to an App ({app} of rt's
// template in path); "" for every other request.
func appOf(rt *fusioo.Route, path string) string {
	if rt.Kind != fusioo.KindCreate && rt.Kind != fusioo.KindUpload {
		return ""
	}
	return rt.Param(path, "app")
}
