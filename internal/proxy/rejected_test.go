package proxy

import (
	"fmt"
	"testing"
	"time"
)

// TestRejectedKeysBounded checks the set keeps at most its bound of marks,
// evicting the oldest first, and that a mark lasts its TTL.
func TestRejectedKeysBounded(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	r := newRejectedKeys(3, time.Minute)
	if r.has("k0", now) {
		t.Fatal("an empty set has k0")
	}
	for i := range 5 {
		r.add(fmt.Sprintf("k%d", i), now)
	}
	r.add("k4", now) // marked again: no second slot
	if len(r.until) != 3 || len(r.ring) != 3 {
		t.Fatalf("%d marks in %d slots, want 3 in 3", len(r.until), len(r.ring))
	}
	for i, want := range []bool{false, false, true, true, true} {
		if got := r.has(fmt.Sprintf("k%d", i), now); got != want {
			t.Errorf("has(k%d) = %v, want %v", i, got, want)
		}
	}
	r.remove("k3")
	r.add("k5", now) // takes the oldest slot (k2's): k2 goes
	if r.has("k2", now) || r.has("k3", now) || !r.has("k4", now) || !r.has("k5", now) {
		t.Errorf("after remove k3 and add k5: marks %v", r.until)
	}
	if r.has("k5", now.Add(time.Minute)) {
		t.Error("k5 still marked after its TTL")
	}
}
