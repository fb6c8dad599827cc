package limiter

import (
	"context"
	"math/rand/v2"
	"sort"
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

func TestMemoryStoreAheadDoesNotCount(t *testing.T) {
	clk := clockwork.NewFakeClockAt(epoch)
	s := NewMemoryStore(Policy{Limit: 2, Window: 10 * time.Second, Buckets: 10}, clk)
	ctx := context.Background()
	s.Take(ctx, "k", Take{})
	clk.Advance(time.Second)
	s.Take(ctx, "k", Take{})
	// Full. One ahead: the caller needs the second slot to free, at 2s+10s.
	res, _ := s.Take(ctx, "k", Take{Ahead: 1})
	if res.Allowed || res.RetryAfter != 11*time.Second {
		t.Fatalf("ahead 1: %+v", res)
	}
	res, _ = s.Take(ctx, "k", Take{Ahead: 0})
	if res.Allowed || res.RetryAfter != 10*time.Second {
		t.Fatalf("ahead 0: %+v", res)
	}
	// Ahead beyond what is counted extrapolates whole spans.
	res, _ = s.Take(ctx, "k", Take{Ahead: 3})
	if res.Allowed || res.RetryAfter != 21*time.Second {
		t.Fatalf("ahead 3: %+v", res)
	}
	// Room, but someone is ahead: not counted, no wait.
	s2 := NewMemoryStore(Policy{Limit: 5, Window: 10 * time.Second}, clk)
	res, _ = s2.Take(ctx, "k", Take{Ahead: 2})
	if res.Allowed || res.RetryAfter != 0 || res.Remaining != 5 {
		t.Fatalf("room with ahead: %+v", res)
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
		{"under demand", Policy{Limit: 1000, Window: time.Minute}, 100 * time.Millisecond},
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
	s := NewMemoryStore(Policy{Limit: 10, Window: 10 * time.Second}, clk)
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
	for _, p := range []Policy{{}, {Limit: 1}, {Limit: 1, Window: time.Second, Margin: -1}, {Limit: 1, Window: time.Second, Buckets: 4000}} {
		if p.Validate() == nil {
			t.Errorf("%+v: no error", p)
		}
	}
	if err := (Policy{Limit: 1, Window: time.Hour}).Validate(); err != nil {
		t.Error(err)
	}
	if w := (Policy{Limit: 1, Window: time.Hour}).BucketWidth(); w != time.Minute {
		t.Errorf("width %s", w)
	}
}
