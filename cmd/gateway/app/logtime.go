package app

import (
	"sync/atomic"
	"time"

	"go.uber.org/zap/zapcore"
)

// isoLayout is what isoEncoder writes, zapcore.ISO8601TimeEncoder's layout.
const isoLayout = "2006-01-02T15:04:05.000Z0700"

// isoStamp is the latest log timestamp isoEncoder formatted, whole in b
// (one allocation a millisecond): its second's part, formatted once a
// second, its millisecond's three digits and its zone.
type isoStamp struct {
	sec       int64
	offset    int   // zone offset, seconds
	ms        int   // milliseconds of sec
	pre, zone uint8 // lengths in b of "2006-01-02T15:04:05." and "Z0700"
	b         [40]byte
}

func (s *isoStamp) bytes() []byte { return s.b[:int(s.pre)+3+int(s.zone)] }

// isoEncoder writes exactly what zapcore.ISO8601TimeEncoder writes
// (isoLayout), formatting each second once and each millisecond's stamp
// once: one access log line per request would otherwise format the same
// second thousands of times (time.Format is the dearest part of a log
// line). NewLogger makes one per logger; the zero value is ready to use.
type isoEncoder struct {
	last atomic.Pointer[isoStamp] // never written once stored
}

// encode is a zapcore.TimeEncoder.
func (e *isoEncoder) encode(t time.Time, enc zapcore.PrimitiveArrayEncoder) {
	sec := t.Unix()
	_, offset := t.Zone()
	ms := t.Nanosecond() / int(time.Millisecond)
	c := e.last.Load()
	if c != nil && c.sec == sec && c.offset == offset && c.ms == ms {
		enc.AppendByteString(c.bytes())
		return
	}
	var prefix, zone []byte
	if c != nil && c.sec == sec && c.offset == offset {
		prefix, zone = c.b[:c.pre], c.b[int(c.pre)+3:len(c.bytes())]
	} else {
		prefix, zone = t.AppendFormat(nil, "2006-01-02T15:04:05."), t.AppendFormat(nil, "Z0700")
	}
	n := &isoStamp{sec: sec, offset: offset, ms: ms, pre: uint8(len(prefix)), zone: uint8(len(zone))}
	if len(prefix)+3+len(zone) > len(n.b) {
		// A year of more digits than time.Time holds; never kept.
		enc.AppendString(t.Format(isoLayout))
		return
	}
	k := copy(n.b[:], prefix)
	n.b[k], n.b[k+1], n.b[k+2] = byte('0'+ms/100), byte('0'+ms/10%10), byte('0'+ms%10)
	copy(n.b[k+3:], zone)
	e.last.Store(n)
	enc.AppendByteString(n.bytes())
}
