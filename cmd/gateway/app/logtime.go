package app

import (
	"sync/atomic"
	"time"

	"go.uber.org/zap/zapcore"
)

// isoSecond is the formatted second and zone of the latest log timestamp.
type isoSecond struct {
	sec    int64
	offset int    // zone offset, seconds
	prefix []byte // "2006-01-02T15:04:05."
	zone   []byte // "Z0700"
}

// isoCache holds the last second encodeISO8601 formatted: one access log
// line per request would otherwise format the same second thousands of
// times (time.Format is the dearest part of a log line).
var isoCache atomic.Pointer[isoSecond]

// encodeISO8601 writes exactly what zapcore.ISO8601TimeEncoder writes
// ("2006-01-02T15:04:05.000Z0700"), formatting each second once and only
// appending the milliseconds to it.
func encodeISO8601(t time.Time, enc zapcore.PrimitiveArrayEncoder) {
	sec := t.Unix()
	_, offset := t.Zone()
	c := isoCache.Load()
	if c == nil || c.sec != sec || c.offset != offset {
		c = &isoSecond{sec: sec, offset: offset,
			prefix: t.AppendFormat(nil, "2006-01-02T15:04:05."), zone: t.AppendFormat(nil, "Z0700")}
		isoCache.Store(c)
	}
	var buf [40]byte
	ms := t.Nanosecond() / int(time.Millisecond)
	b := append(buf[:0], c.prefix...)
	b = append(b, byte('0'+ms/100), byte('0'+ms/10%10), byte('0'+ms%10))
	enc.AppendByteString(append(b, c.zone...))
}
