// Package poll waits in tests for a condition a test can observe but not
// be told of, with a bound: never a fixed sleep.
package poll

import (
	"testing"
	"time"
)

// Until polls cond every 10 ms until it holds, failing t (naming what)
// when timeout passes first.
func Until(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
