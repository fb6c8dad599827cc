package fusioo

import (
	"bytes"
	"io"
	"testing"
)

// FuzzPeekCode feeds arbitrary bodies to the error-body classifier: it
// never panics, and the reader it returns always yields the body unchanged.
func FuzzPeekCode(f *testing.F) {
	for _, s := range []string{
		`{"code":20005,"message":"x","data":{}}`, `{"code":"30054"}`, `{"code":1e99}`, `{"code":-1}`,
		`[]`, ``, `{"code":10004`, `  {"data":{},"code":10003}`, string(bytes.Repeat([]byte("a"), MaxErrorBody+10)),
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		c, r, err := PeekCode(bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(r)
		if !bytes.Equal(got, body) {
			t.Fatalf("body changed: %q -> %q", body, got)
		}
		if c < 0 {
			t.Fatalf("negative code %d", c)
		}
		if c != ParseCode(body) && len(body) <= MaxErrorBody {
			t.Fatalf("PeekCode %d != ParseCode %d", c, ParseCode(body))
		}
		_ = c.Label()
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
