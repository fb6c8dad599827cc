package app

import (
	"bytes"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
)

// TestEncodeISO8601MatchesZap: isoEncoder writes what zap's
// ISO8601TimeEncoder writes, across milliseconds, second and zone
// changes, whatever order the times come in.
func TestEncodeISO8601MatchesZap(t *testing.T) {
	base := time.Date(2026, 11, 26, 1, 2, 3, 0, time.UTC)
	zones := []*time.Location{time.UTC, time.FixedZone("x", 5*3600+1800), time.FixedZone("y", -8*3600)}
	var times []time.Time
	for _, ms := range []int{0, 1, 9, 10, 99, 100, 999} {
		for _, z := range zones {
			for _, s := range []int{0, 1, 59, 3600} {
				times = append(times, base.Add(time.Duration(s)*time.Second+time.Duration(ms)*time.Millisecond+123456).In(z))
			}
		}
	}
	times = append(times, time.Date(1999, 12, 31, 23, 59, 59, 999999999, time.UTC),
		time.Time{}, time.Date(-5, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(999, 1, 1, 0, 0, 0, 1e6, time.UTC),
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.FixedZone("z", -1)), time.Now(),
		time.Unix(-1<<63, 0).UTC(), time.Unix(1<<63-1, 999e6).In(time.FixedZone("w", -(23*3600+59*60))))
	enc := func(e zapcore.TimeEncoder, tm time.Time) string {
		cfg := zapcore.EncoderConfig{TimeKey: "ts", EncodeTime: e}
		buf, err := zapcore.NewJSONEncoder(cfg).EncodeEntry(zapcore.Entry{Time: tm}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return string(bytes.TrimSpace(buf.Bytes()))
	}
	// In order, so each stamp follows the one before (same second, same
	// millisecond, another zone); then each time twice in a row (the
	// millisecond's stamp reused); then backwards.
	e := new(isoEncoder)
	check := func(tm time.Time) {
		t.Helper()
		if got, want := enc(e.encode, tm), enc(zapcore.ISO8601TimeEncoder, tm); got != want {
			t.Errorf("%v: got %s, want %s", tm, got, want)
		}
	}
	for _, tm := range times {
		check(tm)
	}
	for _, tm := range times {
		check(tm)
		check(tm.Add(time.Microsecond))
	}
	for i := len(times) - 1; i >= 0; i-- {
		check(times[i])
	}
}

func BenchmarkEncodeTime(b *testing.B) {
	cfg := zapcore.EncoderConfig{TimeKey: "ts"}
	for _, c := range []struct {
		name string
		e    zapcore.TimeEncoder
	}{{"zap-iso8601", zapcore.ISO8601TimeEncoder}, {"cached", new(isoEncoder).encode}} {
		// Lines a microsecond apart (a busy gateway: the millisecond's
		// stamp reused) and a millisecond apart (a new stamp each line).
		for _, step := range []struct {
			name string
			d    time.Duration
		}{{"same-ms", time.Microsecond}, {"new-ms", time.Millisecond}} {
			b.Run(c.name+"/"+step.name, func(b *testing.B) {
				cfg.EncodeTime = c.e
				je := zapcore.NewJSONEncoder(cfg)
				now := time.Now()
				b.ReportAllocs()
				for i := range b.N {
					buf, _ := je.EncodeEntry(zapcore.Entry{Time: now.Add(time.Duration(i) * step.d)}, nil)
					buf.Free()
				}
			})
		}
	}
}
