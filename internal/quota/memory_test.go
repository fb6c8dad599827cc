package quota

import (
	"context"
	"math/rand/v2"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
)

var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func TestMemoryStoreTakeAndRetryAfter(t *testing.T) {
	clk := clockwork.NewFakeClockAt(epoch)
	p := Policy{Limit: 3, Window: 10 * time.Second, Buckets: 10} // 1 s buckets
	s := NewMemoryStore(p, clk)
	ctx := context.Background()

	steps := []struct {
		advance   time.Duration
		allowed   bool
		remaining int
		retry     time.Duration
	}{
		{0, true, 2, 0},
		{500 * time.Millisecond, true, 1, 0},
		{1 * time.Second, true, 0, 0},
		// Full: the oldest bucket [0,1s) stops counting at 1s+10s = 11s.
		{0, false, 0, 11*time.Second - 1500*time.Millisecond},
		{9 * time.Second, false, 0, 500 * time.Millisecond},
		{500 * time.Millisecond, true, 1, 0}, // t = 11s: two from bucket 0 aged out, one taken
		{0, true, 0, 0},
		{0, false, 0, 1 * time.Second}, // bucket [1s,2s) stops at 12s
	}
	for i, st := range steps {
		clk.Advance(st.advance)
		res, err := s.Take(ctx, "k", Take{})
		if err != nil {
			t.Fatal(err)
		}
		if res.Allowed != st.allowed || res.Remaining != st.remaining || (!st.allowed && res.RetryAfter != st.retry) {
			t.Fatalf("step %d: got %+v, want allowed=%v remaining=%d retry=%s", i, res, st.allowed, st.remaining, st.retry)
		}
		if res.Limit != 3 {
			t.Fatalf("step %d: limit %d", i, res.Limit)
		}
	}
}

// TestMemoryStoreReservations: a take that finds no slot free reserves the
// earliest one that frees within its wait, counted at once, so the next
// waiter gets the one after; a take now cannot use a slot promised to a
// waiter; a release gives the slot back.
func TestMemoryStoreReservations(t *testing.T) {
	clk := clockwork.NewFakeClockAt(epoch)
	s := NewMemoryStore(Policy{Limit: 2, Window: 10 * time.Second, Buckets: 10}, clk) // 1 s buckets, slots free 11 s after their bucket starts
	ctx := context.Background()
	s.Take(ctx, "k", Take{})
	clk.Advance(time.Second)
	s.Take(ctx, "k", Take{})
	check := func(what string, res Result, allowed bool, delay, retry time.Duration, remaining int) {
		t.Helper()
		if res.Allowed != allowed || res.Delay != delay || res.RetryAfter != retry || res.Remaining != remaining {
			t.Fatalf("%s: %+v, want allowed %v delay %s retry %s remaining %d", what, res, allowed, delay, retry, remaining)
		}
	}
	res, _ := s.Take(ctx, "k", Take{})
	check("full, no wait", res, false, 0, 10*time.Second, 0)
	first, _ := s.Take(ctx, "k", Take{Wait: 10 * time.Second})
	check("first waiter", first, true, 10*time.Second, 0, 0)
	if !first.Slot.reserved || first.Usable != 11*time.Second {
		t.Fatalf("first waiter's slot: %+v, want reserved, usable until its bucket ends (11s)", first)
	}
	// The first waiter's slot is promised: the next one frees at 12 s.
	res, _ = s.Take(ctx, "k", Take{Wait: 10 * time.Second})
	check("second waiter, wait too short", res, false, 0, 11*time.Second, 0)
	second, _ := s.Take(ctx, "k", Take{Wait: 11 * time.Second})
	check("second waiter", second, true, 11*time.Second, 0, 0)
	if res, _ := s.Take(ctx, "k", Take{Peek: true}); res.Allowed || res.Remaining != 0 {
		t.Fatalf("peek: %+v", res)
	}
	// At 11.5 s the first bucket has aged out, but its slot is the first
	// waiter's and the second bucket's the second waiter's: a take now is
	// refused until the first waiter's slot frees at 22 s.
	clk.Advance(10500 * time.Millisecond)
	res, _ = s.Take(ctx, "k", Take{})
	check("take now, slots promised", res, false, 0, 10500*time.Millisecond, 0)
	// A waiter that leaves gives its slot back: the next take gets it.
	if err := s.Release(ctx, "k", second.Slot); err != nil {
		t.Fatal(err)
	}
	clk.Advance(500 * time.Millisecond)
	res, _ = s.Take(ctx, "k", Take{})
	check("take after the release", res, true, 0, 0, 0)
	// Releasing twice, or what the store did not count, lowers nothing.
	_ = s.Release(ctx, "k", second.Slot)
	_ = s.Release(ctx, "k", Reservation{})
	if c := s.Counted()["k"]; len(c) != 2 || c[0].Count+c[1].Count != 2 {
		t.Fatalf("counted %+v, want the first waiter's slot and the take at 12 s", c)
	}
}

// TestMemoryStoreSmoothingTurn: a slot at or after the turn when one fits
// in the wait, an earlier one rather than a refusal when none does.
func TestMemoryStoreSmoothingTurn(t *testing.T) {
	clk := clockwork.NewFakeClockAt(epoch)
	s := NewMemoryStore(Policy{Limit: 3, Window: 10 * time.Second, Buckets: 10}, clk)
	ctx := context.Background()
	res, _ := s.Take(ctx, "k", Take{NotBefore: 300 * time.Millisecond, Wait: time.Second})
	if !res.Allowed || res.Delay != 300*time.Millisecond || !res.Slot.reserved {
		t.Fatalf("turn within the wait: %+v", res)
	}
	res, _ = s.Take(ctx, "k", Take{NotBefore: 2 * time.Second, Wait: time.Second})
	if !res.Allowed || res.Delay != 0 {
		t.Fatalf("turn beyond the wait: %+v, want a slot now", res)
	}
	s.Take(ctx, "k", Take{})
	res, _ = s.Take(ctx, "k", Take{NotBefore: time.Second, Wait: 5 * time.Second})
	if res.Allowed || res.RetryAfter != 11*time.Second {
		t.Fatalf("no slot within the wait: %+v, want refused, retry after 11s", res)
	}
}

// TestMemoryStoreRollingBound drives random arrivals at several rates and
// checks, over every admission, that no rolling window holds more than the
// limit, and that a saturating demand uses most of the quota.
func TestMemoryStoreRollingBound(t *testing.T) {
	cases := []struct {
		name    string
		policy  Policy
		meanGap time.Duration
	}{
		{"3x demand, 60 buckets", Policy{Limit: 100, Window: time.Minute, Buckets: 60}, 200 * time.Millisecond},
		{"10x demand, 7 buckets, margin", Policy{Limit: 50, Window: 10 * time.Second, Margin: time.Second, Buckets: 7}, 20 * time.Millisecond},
		{"under demand", Policy{Limit: 1000, Window: time.Minute, Buckets: DefaultBuckets}, 100 * time.Millisecond},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clk := clockwork.NewFakeClockAt(epoch.Add(123456789))
			s := NewMemoryStore(tc.policy, clk)
			rng := rand.New(rand.NewPCG(1, 2))
			var admitted []time.Time
			end := epoch.Add(10 * tc.policy.Window)
			for clk.Now().Before(end) {
				clk.Advance(time.Duration(rng.ExpFloat64() * float64(tc.meanGap)))
				res, _ := s.Take(context.Background(), "k", Take{})
				if res.Allowed {
					admitted = append(admitted, clk.Now())
				}
			}
			span := tc.policy.Span()
			j := 0
			for i := range admitted {
				for admitted[i].Sub(admitted[j]) >= span {
					j++
				}
				if n := i - j + 1; n > tc.policy.Limit {
					t.Fatalf("%d admissions within %s ending at %s, limit %d", n, span, admitted[i].Sub(epoch), tc.policy.Limit)
				}
			}
			demand := float64(tc.policy.Window) / float64(tc.meanGap)
			perWindow := float64(len(admitted)) / 10
			if demand > 2*float64(tc.policy.Limit) {
				// Saturated: at most one bucket (plus the margin) goes unused.
				want := float64(tc.policy.Limit) * float64(tc.policy.Window) / float64(span) * (1 - 1/float64(max(tc.policy.Buckets, 1)) - 0.02)
				if perWindow < want {
					t.Fatalf("used %.1f per window, want >= %.1f", perWindow, want)
				}
			}
		})
	}
}

func TestMemoryStoreBlockAndSweep(t *testing.T) {
	clk := clockwork.NewFakeClockAt(epoch)
	s := NewMemoryStore(Policy{Limit: 10, Window: 10 * time.Second, Buckets: DefaultBuckets}, clk)
	ctx := context.Background()
	if err := s.Block(ctx, "k", 3*time.Second); err != nil {
		t.Fatal(err)
	}
	res, _ := s.Take(ctx, "k", Take{})
	if res.Allowed || !res.Blocked || res.RetryAfter != 3*time.Second || res.Remaining != 0 {
		t.Fatalf("blocked: %+v", res)
	}
	if n := s.Sweep(); n != 1 {
		t.Fatalf("blocked key swept: %d left", n)
	}
	clk.Advance(3 * time.Second)
	res, _ = s.Take(ctx, "k", Take{})
	if !res.Allowed || res.Remaining != 9 {
		t.Fatalf("after block: %+v", res)
	}
	for i := range 100 {
		s.Take(ctx, string(rune('a'+i%26))+time.Duration(i).String(), Take{})
	}
	if n := s.Sweep(); n != 101 {
		t.Fatalf("live keys swept: %d left", n)
	}
	clk.Advance(s.policy.Span() + s.policy.BucketWidth())
	if n := s.Sweep(); n != 0 {
		t.Fatalf("idle keys kept: %d left", n)
	}
	counted := s.Counted()
	if len(counted) != 0 {
		t.Fatalf("counted after idle: %v", counted)
	}
}

func TestMemoryStoreCounted(t *testing.T) {
	clk := clockwork.NewFakeClockAt(epoch)
	s := NewMemoryStore(Policy{Limit: 10, Window: 10 * time.Second, Buckets: 10}, clk)
	ctx := context.Background()
	s.Take(ctx, "a", Take{})
	s.Take(ctx, "a", Take{})
	clk.Advance(2 * time.Second)
	s.Take(ctx, "a", Take{})
	s.Take(ctx, "b", Take{})
	got := s.Counted()
	if len(got["a"]) != 2 || got["a"][0].Count != 2 || got["a"][1].Count != 1 || len(got["b"]) != 1 {
		t.Fatalf("counted: %+v", got)
	}
	sort.Slice(got["a"], func(i, j int) bool { return got["a"][i].Start.Before(got["a"][j].Start) })
	if !got["a"][0].Start.Equal(epoch) {
		t.Fatalf("bucket start %s", got["a"][0].Start)
	}
}

func TestPolicyValidate(t *testing.T) {
	for field, p := range map[string]Policy{
		"Limit":   {},
		"Window":  {Limit: 1, Buckets: DefaultBuckets},
		"Margin":  {Limit: 1, Window: time.Second, Margin: -1, Buckets: DefaultBuckets},
		"Buckets": {Limit: 1, Window: time.Second}, // required: no default
		"MaxKeys": {Limit: 1, Window: time.Second, Buckets: DefaultBuckets, MaxKeys: -1},
	} {
		if err := p.Validate(); err == nil || !strings.HasPrefix(err.Error(), field+": ") {
			t.Errorf("%+v: error %v, want one naming %s", p, err, field)
		}
	}
	if err := (Policy{Limit: 1, Window: time.Second, Buckets: 4000}).Validate(); err == nil {
		t.Error("4000 buckets: no error")
	}
	if err := (Policy{Limit: 1, Window: time.Hour, Buckets: DefaultBuckets}).Validate(); err != nil {
		t.Error(err)
	}
	if w := (Policy{Limit: 1, Window: time.Hour, Buckets: DefaultBuckets}).BucketWidth(); w != time.Minute {
		t.Errorf("width %s", w)
	}
}
