package retry

import (
	"net/http"
	"strings"
	"time"
)

// ParseRetryAfter parses a Retry-After value (RFC 9110 §10.2.3): either
// delay-seconds (digits only) or an HTTP-date, read relative to now. It
// reports false for a value that is neither (negative numbers, fractions,
// garbage), so the caller falls back to its own backoff. A date in the past
// is a valid zero. The result is capped at max (no cap when max <= 0), so a
// hostile or broken upstream cannot park a request for years, and no input
// panics or overflows.
func ParseRetryAfter(v string, now time.Time, max time.Duration) (time.Duration, bool) {
	if max <= 0 {
		max = 1<<63 - 1
	}
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if isDigits(v) {
		// Stop accumulating once past the cap, so no string of digits
		// can overflow.
		limit := int64(max/time.Second) + 1
		var secs int64
		for i := 0; i < len(v); i++ {
			secs = secs*10 + int64(v[i]-'0')
			if secs > limit {
				return max, true
			}
		}
		if secs > int64((1<<63-1)/time.Second) {
			return max, true
		}
		d := time.Duration(secs) * time.Second
		if d > max {
			d = max
		}
		return d, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	d := t.Sub(now) // saturates instead of overflowing
	if d < 0 {
		d = 0
	}
	if d > max {
		d = max
	}
	return d, true
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return len(s) > 0
}
