package proxy

import (
	"net/http"
	"strings"
	"testing"
)

// FuzzBearerToken: the extractor never panics, returns a substring of the
// header, and the key derived from it never contains it.
func FuzzBearerToken(f *testing.F) {
	for _, s := range []string{"Bearer abc", "bearer  x ", "Basic Zm9v", "Bearer", "Bearer ", "BEARER \x00\xff", ""} {
		f.Add(s)
	}
	id := NewIdentifier([]byte("k"))
	f.Fuzz(func(t *testing.T, v string) {
		h := http.Header{}
		h.Set("Authorization", v)
		tok := BearerToken(h)
		if tok != "" && !strings.Contains(v, tok) {
			t.Fatalf("token %q not from %q", tok, v)
		}
		if tok != "" {
			k := id.Key(tok)
			if len(k) != 64 || (len(tok) >= 8 && strings.Contains(k, tok)) {
				t.Fatalf("key %q", k)
			}
		}
	})
}
