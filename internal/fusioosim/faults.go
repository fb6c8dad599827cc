package fusioosim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"
)

// clean clamps fractions to [0,1] and negative durations to 0.
func (f Faults) clean() Faults {
	for _, p := range []*float64{&f.Unavailable, &f.Concurrent, &f.GatewayTimeout, &f.TimeoutAfterApply, &f.ResetAfterApply} {
		switch {
		case math.IsNaN(*p) || *p < 0:
			*p = 0
		case *p > 1:
			*p = 1
		}
	}
	for _, d := range []*time.Duration{&f.UnavailableRetryAfter, &f.Latency, &f.Jitter, &f.CreateHold} {
		if *d < 0 {
			*d = 0
		}
	}
	return f
}

// faultFields names Faults' JSON keys, for both directions.
func (f *Faults) fields() (fracs map[string]*float64, durs map[string]*time.Duration) {
	fracs = map[string]*float64{
		"unavailable":         &f.Unavailable,
		"concurrent":          &f.Concurrent,
		"gateway_timeout":     &f.GatewayTimeout,
		"timeout_after_apply": &f.TimeoutAfterApply,
		"reset_after_apply":   &f.ResetAfterApply,
	}
	durs = map[string]*time.Duration{
		"unavailable_retry_after": &f.UnavailableRetryAfter,
		"latency":                 &f.Latency,
		"jitter":                  &f.Jitter,
		"create_hold":             &f.CreateHold,
	}
	return fracs, durs
}

// MarshalJSON encodes f with snake_case keys and durations as Go duration
// strings ("250ms"), the form the /_sim/faults endpoint shows.
func (f Faults) MarshalJSON() ([]byte, error) {
	fracs, durs := f.fields()
	m := make(map[string]any, len(fracs)+len(durs)+1)
	for k, p := range fracs {
		m[k] = *p
	}
	for k, p := range durs {
		m[k] = p.String()
	}
	m["hang"] = f.Hang
	return json.Marshal(m)
}

// UnmarshalJSON decodes what MarshalJSON encodes, replacing every field (an
// absent key is zero). Keys match ignoring case, "_" and "-", so the Go
// field names work too; durations are Go duration strings or integer
// nanoseconds; fractions must lie in [0,1]. Unknown keys are an error, so a
// typo in a fault script does not pass silently.
func (f *Faults) UnmarshalJSON(b []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	if raw == nil {
		return fmt.Errorf("faults: want a JSON object")
	}
	var out Faults
	fracs, durs := out.fields()
	norm := func(k string) string {
		return strings.NewReplacer("_", "", "-", "").Replace(strings.ToLower(k))
	}
	fracBy := map[string]*float64{}
	for k, p := range fracs {
		fracBy[norm(k)] = p
	}
	durBy := map[string]*time.Duration{}
	for k, p := range durs {
		durBy[norm(k)] = p
	}
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := raw[k]
		n := norm(k)
		switch {
		case n == "hang":
			if err := json.Unmarshal(v, &out.Hang); err != nil {
				return fmt.Errorf("faults: %s: %w", k, err)
			}
		case fracBy[n] != nil:
			var x float64
			if err := json.Unmarshal(v, &x); err != nil {
				return fmt.Errorf("faults: %s: %w", k, err)
			}
			if !(x >= 0 && x <= 1) {
				return fmt.Errorf("faults: %s: %v is not a fraction in [0,1]", k, x)
			}
			*fracBy[n] = x
		case durBy[n] != nil:
			d, err := parseDuration(v)
			if err != nil {
				return fmt.Errorf("faults: %s: %w", k, err)
			}
			*durBy[n] = d
		default:
			return fmt.Errorf("faults: unknown key %q", k)
		}
	}
	*f = out
	return nil
}

// parseDuration reads a Go duration string or an integer of nanoseconds.
func parseDuration(v json.RawMessage) (time.Duration, error) {
	v = bytes.TrimSpace(v)
	var d time.Duration
	if len(v) > 0 && v[0] == '"' {
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			return 0, err
		}
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, err
		}
	} else {
		var n int64
		if err := json.Unmarshal(v, &n); err != nil {
			return 0, fmt.Errorf("want a duration string or integer nanoseconds: %w", err)
		}
		d = time.Duration(n)
	}
	if d < 0 {
		return 0, fmt.Errorf("negative duration %v", d)
	}
	return d, nil
}
