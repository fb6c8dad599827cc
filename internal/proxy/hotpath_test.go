package proxy_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/fusioo-gateway/gateway/internal/fusioo"
	"github.com/fusioo-gateway/gateway/internal/proxy"
)

// TestUpstreamQuotaHeadersReplaced: quota headers the upstream sends
// itself are replaced by the gateway's, never added to them; its other
// headers pass.
func TestUpstreamQuotaHeadersReplaced(t *testing.T) {
	t.Parallel()
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, k := range []string{"RateLimit", "RateLimit-Policy", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} {
			w.Header().Add(k, "upstream")
		}
		w.Header().Set("X-Upstream", "yes")
		fusioo.WriteSuccess(w, map[string]any{})
	})
	s := newStack(t, stackOpts{upstream: up})
	resp, _ := s.do("GET", "/v3/apps", "tok-h", nil)
	reset := resp.Header.Get("RateLimit-Reset")
	if n, err := strconv.Atoi(reset); err != nil || n < 3600 || n > 3700 {
		t.Fatalf("RateLimit-Reset %q", reset)
	}
	want := map[string]string{
		"RateLimit-Policy":    `"hourly";q=1000;w=3600`,
		"RateLimit":           `"hourly";r=999;t=` + reset,
		"RateLimit-Limit":     "1000",
		"RateLimit-Remaining": "999",
		"RateLimit-Reset":     reset,
		"X-Upstream":          "yes",
	}
	for k, v := range want {
		if got := resp.Header.Values(k); len(got) != 1 || got[0] != v {
			t.Errorf("%s: %q, want [%q]", k, got, v)
		}
	}
	// Uncharged: the upstream's values pass when the key has no quota to tell.
	resp, _ = s.do("GET", "/v3/ping", "", nil)
	if got := resp.Header.Values("RateLimit-Limit"); len(got) != 1 || got[0] != "upstream" {
		t.Errorf("anonymous ping: RateLimit-Limit %q", got)
	}
}

// TestAbortLaterRequests: a request that arrives after Abort is answered
// 503/10004 without going upstream.
func TestAbortLaterRequests(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOpts{})
	s.handler.Abort()
	resp, b := s.do("GET", "/v3/apps", "tok-late", nil)
	if env := envelope(t, resp, b); resp.StatusCode != 503 || env.Code != fusioo.CodeUnavailable {
		t.Fatalf("after abort: %d %s", resp.StatusCode, b)
	}
	if l := s.sim.Ledger(); l.Charged != 0 {
		t.Fatalf("ledger %+v", l)
	}
}

// TestIdentifierKey: the key is the hex SHA-256 of the token, or its
// HMAC-SHA256 with the secret, also when computed concurrently.
func TestIdentifierKey(t *testing.T) {
	t.Parallel()
	tokens := []string{"", "a", strings.Repeat("t", 1024), "tok-\x00\xff"}
	plain, keyed := proxy.NewIdentifier(nil), proxy.NewIdentifier([]byte("secret"))
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 50 {
				for _, tok := range tokens {
					sum := sha256.Sum256([]byte(tok))
					if got := plain.Key(tok); got != hex.EncodeToString(sum[:]) {
						t.Errorf("plain %q: %s", tok, got)
					}
					m := hmac.New(sha256.New, []byte("secret"))
					m.Write([]byte(tok))
					if got := keyed.Key(tok); got != hex.EncodeToString(m.Sum(nil)) {
						t.Errorf("keyed %q: %s", tok, got)
					}
				}
			}
		})
	}
	wg.Wait()
}
