package proxy_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/fusioo-gateway/gateway/internal/quota"
)

// TestHostileConnectionAuthorizationResetsQuota: "Connection: Authorization"
// would make ReverseProxy strip the credential the gateway identified, the
// upstream answer 10003, and the gateway forget the (valid, exhausted)
// token's counts: such a request is refused (found by review).
func TestHostileConnectionAuthorizationResetsQuota(t *testing.T) {
	t.Parallel()
	st := newStack(t, stackOpts{policy: quota.Policy{Limit: 2, Window: time.Hour, Buckets: quota.DefaultBuckets}, maxWait: 50 * time.Millisecond})
	const tok = "validtoken"
	for i := range 2 {
		if resp, b := st.do("GET", "/v3/apps", tok, nil); resp.StatusCode != 200 {
			t.Fatalf("request %d: %d %s", i, resp.StatusCode, b)
		}
	}
	if resp, _ := st.do("GET", "/v3/apps", tok, nil); resp.StatusCode != 429 {
		t.Fatalf("quota not enforced: %d", resp.StatusCode)
	}
	// An uncharged ping whose credential is dropped hop-by-hop.
	resp, b := st.do("GET", "/v3/ping", tok, nil, "Connection", "Authorization")
	if resp.StatusCode != 401 {
		t.Fatalf("ping with Connection: Authorization -> %d %s, want 401", resp.StatusCode, b)
	}
	over := 0
	for range 5 {
		if resp, _ := st.do("GET", "/v3/apps", tok, nil); resp.StatusCode == 200 {
			over++
		}
	}
	if over > 0 {
		t.Fatalf("quota of 2/h: %d more charged requests forwarded after the reset trick (sim saw %d requests)", over, st.sim.Ledger().Requests)
	}
}

// TestHostileChargedKeyNotTheForwardedCredential: the gateway charges key K
// while the upstream receives no credential at all.
func TestHostileChargedKeyNotTheForwardedCredential(t *testing.T) {
	t.Parallel()
	r := newLoopRig(t, 1, fakeAnswer{status: 200})
	req := httptest.NewRequest("GET", "/v3/apps", nil)
	req.Header.Set("Authorization", "Bearer tok")
	req.Header.Set("Connection", "Authorization")
	r.serveReq(req)
	r.lim.mu.Lock()
	keys := append([]string(nil), r.lim.keys...)
	r.lim.mu.Unlock()
	if len(r.up.seen) == 1 && len(keys) == 1 && keys[0] != "" && len(r.up.seen[0].Header["Authorization"]) == 0 {
		t.Fatalf("charged to key %.8s, but the upstream got no Authorization (Connection: Authorization)", keys[0])
	}
}

// TestHostilePingEncodedSlash: /v3/ping%2F is matched as the free ping
// (decoded path "/v3/ping/"), but is forwarded raw, where an upstream that
// routes on the raw path sees segment "ping%2F" (unknown, charged).
func TestHostilePingEncodedSlash(t *testing.T) {
	t.Parallel()
	for _, p := range []string{"/v3/ping%2F", "/v3/%2Fping", "/ping%2F%2F"} {
		r := newLoopRig(t, 1, fakeAnswer{status: 200})
		req := httptest.NewRequest("GET", p, nil)
		req.Header.Set("Authorization", "Bearer tok")
		r.serveReq(req)
		admits, _ := r.lim.counts()
		if len(r.up.seen) == 1 && admits == 0 && !pingEverywhere(r.up.seen[0].URL) {
			t.Errorf("%s: forwarded uncharged with a credential as %q, not a ping everywhere", p, r.up.seen[0].URL.EscapedPath())
		}
	}
}

// TestHostileAccessTokenSpellings: access_token spellings common upstream
// parsers read as access_token (PHP turns '.', ' ', '[' into '_' and
// "name[]" into an array; IIS/ASP.NET decode %uXXXX; RFC 6750 §2.2 form
// body) reach the upstream next to, or instead of, the charged header.
func TestHostileAccessTokenSpellings(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ name, target, body string }{
		{"php dot", "/v3/apps?access.token=OTHER", ""},
		{"php space", "/v3/apps?access%20token=OTHER", ""},
		{"php bracket", "/v3/apps?access[token=OTHER", ""},
		{"php array", "/v3/apps?access_token[]=OTHER", ""},
		{"iis %u", "/v3/apps?access%u005Ftoken=OTHER", ""},
		{"form body (RFC 6750 2.2)", "/v3/records/apps/app1/filter", "access_token=OTHER"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			r := newLoopRig(t, 1, fakeAnswer{status: 200})
			method := "GET"
			var req *http.Request
			if c.body != "" {
				method = "POST"
				req = httptest.NewRequest(method, c.target, strings.NewReader(c.body))
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			} else {
				req = httptest.NewRequest(method, c.target, nil)
			}
			req.Header.Set("Authorization", "Bearer tok")
			a := r.serveReq(req)
			if r.up.attempts() != 0 {
				t.Fatalf("forwarded (%d) with a second credential: %+v", r.up.attempts(), a)
			}
		})
	}
}
