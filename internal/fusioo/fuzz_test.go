package fusioo

import (
	"bytes"
	"io"
	"net/http"
	"testing"
)

// FuzzPeekCode feeds arbitrary error bodies: reading the code never panics
// and the client always gets the same bytes back.
func FuzzPeekCode(f *testing.F) {
	f.Add(503, ErrorBody(CodeUnavailable, ""), "")
	f.Add(400, ErrorBody(CodeConcurrentRequests, ""), "gzip")
	f.Add(400, []byte(`{"code":"30054"}`), "")
	f.Add(429, []byte(`{"code":1e400}`), "")
	f.Add(400, bytes.Repeat([]byte("{"), 5000), "")
	f.Add(200, []byte("ok"), "")
	f.Fuzz(func(t *testing.T, status int, body []byte, enc string) {
		resp := &http.Response{StatusCode: status, Header: http.Header{"Content-Encoding": {enc}}, Body: io.NopCloser(bytes.NewReader(body))}
		code := PeekCode(resp)
		got, err := io.ReadAll(resp.Body)
		if err != nil || !bytes.Equal(got, body) {
			t.Fatalf("body changed: %q -> %q (%v)", body, got, err)
		}
		if code != 0 && status < 400 {
			t.Fatalf("code %d read from a %d answer", code, status)
		}
		_ = code.Label()
	})
}

// FuzzRoutesMatch: any method and path match some route with a bounded
// name from the table.
func FuzzRoutesMatch(f *testing.F) {
	rs, err := NewRoutes(DefaultRoutes())
	if err != nil {
		f.Fatal(err)
	}
	names := map[string]bool{}
	for _, r := range rs.All() {
		names[r.Name()] = true
	}
	f.Add("GET", "/v3/records/apps/x")
	f.Add("POST", "/v3/records/apps/x/count/filter")
	f.Add("BREW", "//v3//")
	f.Fuzz(func(t *testing.T, method, path string) {
		r := rs.Match(method, path)
		if r == nil || !names[r.Name()] {
			t.Fatalf("%s %s matched %v", method, path, r)
		}
	})
}
