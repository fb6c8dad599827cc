package fusioosim

import (
	"crypto/sha256"
	"encoding/hex"
	"math"
	"slices"
	"sort"
	"time"
)

// quota is the per-scope quota state. Scopes are keyed by the SHA-256 of
// the scope string, so no token is kept in clear.
type quota struct {
	scopes      map[[32]byte]*scopeState
	charged     int
	overQuota   int
	maxInWindow int
	perScope    map[string]int
	history     map[string][]int64 // Config.History: charge times per scope, Unix ns
}

// scopeState is one scope's counts. log holds the Unix-nanosecond times of
// the charged requests of the last rolling window, oldest first: it decides
// admission in rolling mode and measures Ledger.MaxInWindow in both modes.
type scopeState struct {
	log      []int64
	winStart int64 // fixed mode: start of the current window
	winCount int   // fixed mode: requests counted in it
}

// unlimitedLog bounds a scope's log when there is no limit, so an unlimited
// benchmark uses bounded memory; MaxInWindow then saturates at this value.
const unlimitedLog = 1 << 16

func newQuota() quota {
	return quota{scopes: map[[32]byte]*scopeState{}, perScope: map[string]int{}, history: map[string][]int64{}}
}

// charge counts a request of token's scope if the quota allows it. When it
// does not, it returns false and how long until a request would be
// admitted.
func (s *Sim) charge(token string) (bool, time.Duration) {
	scope := token
	if s.scope != nil {
		scope = s.scope(token)
	}
	key := sha256.Sum256([]byte(scope))

	s.qmu.Lock()
	defer s.qmu.Unlock()
	q := &s.q
	st := q.scopes[key]
	if st == nil {
		st = &scopeState{}
		q.scopes[key] = st
	}
	now := s.now().UnixNano()
	w := int64(s.window)

	// Drop what left the rolling window (t, now-w]: a request at exactly
	// now-w and one at now are not in one window of length w.
	i := 0
	for i < len(st.log) && st.log[i] <= now-w {
		i++
	}
	st.log = st.log[i:]

	if s.limit > 0 {
		if s.fixed {
			start := now - ((now%w)+w)%w
			if st.winStart != start {
				st.winStart, st.winCount = start, 0
			}
			if st.winCount >= s.limit {
				q.overQuota++
				return false, time.Duration(start + w - now)
			}
			st.winCount++
		} else if len(st.log) >= s.limit {
			q.overQuota++
			return false, time.Duration(st.log[0] + w - now)
		}
	}

	max := unlimitedLog
	if s.limit > 0 {
		max = 2 * s.limit // a fixed window admits at most 2×limit in a rolling one
	}
	if len(st.log) >= max {
		st.log = st.log[len(st.log)-max+1:]
	}
	st.log = append(st.log, now)
	if len(st.log) > q.maxInWindow {
		q.maxInWindow = len(st.log)
	}
	q.charged++
	scopeID := hex.EncodeToString(key[:6])
	q.perScope[scopeID]++
	if s.hist {
		q.history[scopeID] = append(q.history[scopeID], now)
	}
	return true, 0
}

// History returns, per scope (keyed like Ledger.PerScope), the times of
// the charged requests in the order they were charged; empty unless
// Config.History is set.
func (s *Sim) History() map[string][]time.Time {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	out := make(map[string][]time.Time, len(s.q.history))
	for k, ts := range s.q.history {
		tt := make([]time.Time, len(ts))
		for i, t := range ts {
			tt[i] = time.Unix(0, t)
		}
		out[k] = tt
	}
	return out
}

// QuotaUse is the mean, over every rolling window of length w that lies
// inside [from, to) (stepped by w/100), of the number of times in ts that
// fall in it, divided by limit: how much of a rolling quota was used. NaN
// when no window fits.
func QuotaUse(ts []time.Time, from, to time.Time, w time.Duration, limit int) float64 {
	s := slices.SortedFunc(slices.Values(ts), time.Time.Compare)
	count := func(a, b time.Time) int {
		return sort.Search(len(s), func(i int) bool { return !s[i].Before(b) }) -
			sort.Search(len(s), func(i int) bool { return !s[i].Before(a) })
	}
	step := w / 100
	var sum, n float64
	for a := from; !a.Add(w).After(to); a = a.Add(step) {
		sum += float64(count(a, a.Add(w)))
		n++
	}
	if n == 0 {
		return math.NaN()
	}
	return sum / n / float64(limit)
}
