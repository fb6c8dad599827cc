// Package leaktest runs a package's tests under goleak, except while the
// run is fuzzing.
package leaktest

import (
	"flag"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// VerifyTestMain runs m's tests and fails the run if they leave goroutines
// behind (goleak.VerifyTestMain), unless the run is fuzzing (-test.fuzz):
// the fuzzing engine's own goroutines may still be winding down after the
// last input, which goleak would report, and a leak check says nothing
// about the function being fuzzed. Packages with fuzz targets use it in
// their TestMain.
func VerifyTestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.fuzz"); f != nil && f.Value.String() != "" {
		os.Exit(m.Run())
	}
	goleak.VerifyTestMain(m)
}

// AtEnd checks, when t ends, that it left no goroutine behind but
// go-redis's own dial probes (a pool whose dials all failed probes from a
// goroutine that notices Close within a second).
func AtEnd(t *testing.T) {
	t.Helper()
	current := goleak.IgnoreCurrent()
	t.Cleanup(func() {
		goleak.VerifyNone(t, current,
			goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial"))
	})
}
