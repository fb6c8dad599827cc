package quota

import (
	"testing"

	"github.com/redis/go-redis/v9"
)

// TestReview21OpaqueRedisURLRefused: "redis:host:6380" and
// "redis:user:pw@host:6380" (the // forgotten) are opaque URLs: url.Parse
// finds no host and no userinfo, and go-redis's ParseURL then dials its
// default localhost:6379, with no password. Validate ("what both -check
// and startup refuse") passes them, so -check calls such a file valid and
// the gateway talks to another Redis than the one configured (or to none).
// Expected: Validate refuses a redis:// URL without a host (as it refuses
// other malformed URLs), or the client dials the host written.
func TestReview21OpaqueRedisURLRefused(t *testing.T) {
	for _, u := range []string{"redis:10.0.0.7:6380", "redis:user:secret@10.0.0.7:6380", "rediss:10.0.0.7:6380"} {
		o := DefaultRedisClientOptions()
		o.URL = u
		if err := o.Validate(); err != nil {
			continue // refused: fine
		}
		c, err := NewRedisClient(o)
		if err != nil {
			continue
		}
		addr := c.(*redis.Client).Options().Addr
		_ = c.Close()
		if addr != "10.0.0.7:6380" {
			t.Errorf("URL %q: Validate accepts it and the client dials %q", u, addr)
		}
	}
}
