//go:build !race

package requestpath

// raceEnabled: the race detector is off (see race_test.go).
const raceEnabled = false
