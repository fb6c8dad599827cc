package proxy_test

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestHostileH2LeadingSpace: over HTTP/2 a field value may keep a leading
// space; " Bearer tok" is then "another scheme" (anonymous, uncharged) but
// goes to an HTTP/1 upstream trimmed, as "Bearer tok".
func TestHostileH2LeadingSpace(t *testing.T) {
	t.Parallel()
	r := newLoopRig(t, 1, fakeAnswer{status: 200})
	srv := httptest.NewUnstartedServer(r.h)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL+"/v3/apps", nil)
	req.Header["Authorization"] = []string{" Bearer tok"}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	r.lim.mu.Lock()
	keys := append([]string(nil), r.lim.keys...)
	r.lim.mu.Unlock()
	t.Logf("proto %s status %d keys %q", resp.Proto, resp.StatusCode, keys)
	if len(r.up.seen) == 1 {
		t.Logf("handler saw/forwarded Authorization %q", r.up.seen[0].Header["Authorization"])
		if len(keys) == 1 && keys[0] == "" {
			t.Fatalf("a Bearer credential forwarded under the anonymous limit")
		}
	}
}
