package quota

import (
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// TestOptionsRequired: the fields whose zero would be meaningless or
// unsafe are required, never defaulted: Validate names each one (as a Go
// field), the constructors refuse them, and the Default functions pass.
func TestOptionsRequired(t *testing.T) {
	check := func(what string, err error, fields ...string) {
		t.Helper()
		if len(fields) == 0 {
			if err != nil {
				t.Errorf("%s: %v", what, err)
			}
			return
		}
		for _, f := range fields {
			if err == nil || !strings.Contains(err.Error(), f+":") {
				t.Errorf("%s: error %v, want one naming %s", what, err, f)
			}
		}
	}
	check("DefaultRedisOptions", DefaultRedisOptions().Validate())
	check("RedisOptions{}", RedisOptions{}.Validate(), "KeyPrefix", "Timeout")
	check("DefaultFallbackOptions", DefaultFallbackOptions().Validate())
	check("FallbackOptions{}", FallbackOptions{}.Validate(), "Share", "FailuresToOpen", "OpenFor", "ProbeEvery")
	check("Share above 1", FallbackOptions{Share: 1.5, FailuresToOpen: 1, OpenFor: time.Second, ProbeEvery: time.Second}.Validate(), "Share")
	o := DefaultRedisClientOptions()
	o.URL = "redis://127.0.0.1:1"
	check("DefaultRedisClientOptions", o.Validate())
	o.Timeout = 0
	check("RedisClientOptions without Timeout", o.Validate(), "Timeout")

	p := Policy{Limit: 1, Window: time.Second, Buckets: DefaultBuckets}
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) // connects lazily: never here
	defer client.Close()
	panics := func(what, want string, f func()) {
		t.Helper()
		defer func() {
			if r := recover(); r == nil || !strings.Contains(r.(string), want) {
				t.Errorf("%s: recovered %v, want a panic naming %s", what, r, want)
			}
		}()
		f()
	}
	panics("NewMemoryStore", "Policy.Buckets", func() { NewMemoryStore(Policy{Limit: 1, Window: time.Second}, nil) })
	panics("NewRedisStore", "RedisOptions.Timeout", func() { NewRedisStore(client, p, RedisOptions{KeyPrefix: "fgw"}) })
	rs := NewRedisStore(client, p, DefaultRedisOptions())
	panics("NewFallbackStore", "FallbackOptions.ProbeEvery", func() {
		NewFallbackStore(rs, p, FallbackOptions{Share: 0.5, FailuresToOpen: 3, OpenFor: time.Second})
	})
}
