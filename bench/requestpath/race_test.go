//go:build race

package requestpath

// raceEnabled: the race detector is on, and its instrumentation makes
// every frame larger (TestStackStaysSmall measures stacks without it).
const raceEnabled = true
