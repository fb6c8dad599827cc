package app

import (
	"sync/atomic"
	"time"

	"go.uber.org/zap/zapcore"
)

// isoStamp is the latest log timestamp isoEncoder formatted: its second
// (formatted once a second) and its millisecond (once a millisecond).
type isoStamp struct {
	sec    int64
	offset int    // zone offset, seconds
	prefix []byte // "2006-01-02T15:04:05."
	zone   []byte // "Z0700"
	ms     int    // milliseconds of sec that s is for; -1: none yet
	s      string // prefix, ms in three digits, zone
}

// isoEncoder writes exactly what zapcore.ISO8601TimeEncoder writes
// ("2006-01-02T15:04:05.000Z0700"), formatting each second once and each
// millisecond's stamp once: one access log line per request would
// otherwise format the same second thousands of times (time.Format is
// the dearest part of a log line) and allocate its stamp every line.
// NewLogger makes one per logger; the zero value is ready to use.
type isoEncoder struct {
	last atomic.Pointer[isoStamp]
}

// encode is a zapcore.TimeEncoder.
func (e *isoEncoder) encode(t time.Time, enc zapcore.PrimitiveArrayEncoder) {
	sec := t.Unix()
	_, offset := t.Zone()
	ms := t.Nanosecond() / int(time.Millisecond)
	c := e.last.Load()
	if c != nil && c.sec == sec && c.offset == offset && c.ms == ms {
		enc.AppendString(c.s)
		return
	}
	n := &isoStamp{sec: sec, offset: offset}
	if c != nil && c.sec == sec && c.offset == offset {
		n.prefix, n.zone = c.prefix, c.zone // shared, never written
	} else {
		n.prefix, n.zone = t.AppendFormat(nil, "2006-01-02T15:04:05."), t.AppendFormat(nil, "Z0700")
	}
	var buf [40]byte
	b := append(buf[:0], n.prefix...)
	b = append(b, byte('0'+ms/100), byte('0'+ms/10%10), byte('0'+ms%10))
	n.ms, n.s = ms, string(append(b, n.zone...))
	e.last.Store(n)
	enc.AppendString(n.s)
}
