package app

import (
	"bytes"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
)

// TestEncodeISO8601MatchesZap: the cached encoder writes what zap's
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
	times = append(times, time.Date(1999, 12, 31, 23, 59, 59, 999999999, time.UTC))
	enc := func(e zapcore.TimeEncoder, tm time.Time) string {
		cfg := zapcore.EncoderConfig{TimeKey: "ts", EncodeTime: e}
		buf, err := zapcore.NewJSONEncoder(cfg).EncodeEntry(zapcore.Entry{Time: tm}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return string(bytes.TrimSpace(buf.Bytes()))
	}
	for _, tm := range times {
		if got, want := enc(encodeISO8601, tm), enc(zapcore.ISO8601TimeEncoder, tm); got != want {
			t.Errorf("%v: got %s, want %s", tm, got, want)
		}
	}
}

func BenchmarkEncodeTime(b *testing.B) {
	cfg := zapcore.EncoderConfig{TimeKey: "ts"}
	for _, c := range []struct {
		name string
		e    zapcore.TimeEncoder
	}{{"zap-iso8601", zapcore.ISO8601TimeEncoder}, {"cached", encodeISO8601}} {
		b.Run(c.name, func(b *testing.B) {
			cfg.EncodeTime = c.e
			je := zapcore.NewJSONEncoder(cfg)
			now := time.Now()
			b.ReportAllocs()
			for i := range b.N {
				buf, _ := je.EncodeEntry(zapcore.Entry{Time: now.Add(time.Duration(i) * time.Microsecond)}, nil)
				buf.Free()
			}
		})
	}
}
