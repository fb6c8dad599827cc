package proxy

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// FuzzCredential: the extractor never panics; a token it returns is the
// whole of the one Authorization line after "Bearer" and spaces, a
// b64token, and the key derived from it never contains it.
func FuzzCredential(f *testing.F) {
	for _, s := range []string{"Bearer abc", "bearer  x ", "Basic Zm9v", "Bearer", "Bearer ", "BEARER \x00\xff", "", "Bearer\tx", "Bearer a b"} {
		f.Add(s, "")
	}
	f.Add("Bearer a", "access_token=b")
	f.Add("", "x=1;Access%5Ftoken=b")
	f.Add(" BeArer 0", "")
	id := NewIdentifier([]byte("k"))
	f.Fuzz(func(t *testing.T, v, q string) {
		r := &http.Request{Header: http.Header{"Authorization": {v}}, URL: &url.URL{Path: "/", RawQuery: q}}
		tok, bad := Credential(r)
		if tok != "" && bad != "" {
			t.Fatalf("both a token and a refusal")
		}
		if tok == "" {
			return
		}
		// Leading whitespace (kept by HTTP/2, cut by HTTP/1 on the wire)
		// is not part of the credential.
		v = strings.TrimLeft(v, " \t")
		if !strings.EqualFold(v[:6], "bearer") || strings.TrimLeft(v[6:], " ") != tok || !isB64Token(tok) {
			t.Fatalf("token %q not the credential of %q", tok, v)
		}
		if vals, err := url.ParseQuery(q); err == nil && vals.Has("access_token") {
			t.Fatalf("access_token in %q not refused", q)
		}
		k := id.Key(tok)
		if len(k) != 64 || (len(tok) >= 8 && strings.Contains(k, tok)) {
			t.Fatalf("key %q", k)
		}
	})
}
