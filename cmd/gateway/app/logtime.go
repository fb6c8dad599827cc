package app

import (
	"sync/atomic"
	"time"

	"go.uber.org/zap/zapcore"
)

// isoSecond and isoZone are the parts of zapcore.ISO8601TimeEncoder's
// layout ("2006-01-02T15:04:05.000Z0700") around its milliseconds.
const isoSecond, isoZone = "2006-01-02T15:04:05.", "Z0700"

// isoStamp is the latest log timestamp isoEncoder formatted, whole in b
// (one allocation a millisecond): its second's part, formatted once a
// second, its millisecond's three digits and its zone.
type isoStamp struct {
	sec    int64
	offset int   // zone offset, seconds
	ms     int   // milliseconds of sec
	pre, n uint8 // lengths in b of the second's part and of the stamp
	// b fits the longest stamp, of year -292277026596: 37 bytes.
	b [40]byte
}

// isoEncoder writes exactly what zapcore.ISO8601TimeEncoder writes,
// formatting each second once and each millisecond's stamp once: one
// access log line per request would otherwise format the same second
// thousands of times (time.Format is the dearest part of a log line).
// NewLogger makes one per logger; the zero value is ready to use.
type isoEncoder struct {
	last atomic.Pointer[isoStamp] // never written once stored
}

// encode is a zapcore.TimeEncoder.
func (e *isoEncoder) encode(t time.Time, enc zapcore.PrimitiveArrayEncoder) {
	sec := t.Unix()
	_, offset := t.Zone()
	ms := t.Nanosecond() / int(time.Millisecond)
	c := e.last.Load()
	sameSecond := c != nil && c.sec == sec && c.offset == offset
	if sameSecond && c.ms == ms {
		enc.AppendByteString(c.b[:c.n])
		return
	}
	n := new(isoStamp)
	if sameSecond {
		*n = *c // the same second's part and zone; only the digits change
	} else {
		n.sec, n.offset = sec, offset
		b := t.AppendFormat(n.b[:0], isoSecond)
		n.pre = uint8(len(b))
		b = t.AppendFormat(append(b, "000"...), isoZone)
		n.n = uint8(len(b))
	}
	n.ms = ms
	n.b[n.pre], n.b[n.pre+1], n.b[n.pre+2] = byte('0'+ms/100), byte('0'+ms/10%10), byte('0'+ms%10)
	e.last.Store(n)
	enc.AppendByteString(n.b[:n.n])
}
