package proxy_test

import (
	"bufio"
	"bytes"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path"
	"strings"
	"testing"

	"github.com/fusioo-gateway/gateway/internal/proxy"
)

// FuzzHandler is the property test of the whole handler: for any raw
// request the server would accept,
//
//   - it goes only to the configured upstream;
//   - every credential a lenient upstream could read from it (any
//     Authorization line whose value starts with "bearer", read loosely,
//     or an access_token query parameter) is the one the request was
//     charged to, and there is one;
//   - a request forwarded with a credential and not charged is a ping
//     however the upstream decodes its path.
func FuzzHandler(f *testing.F) {
	for _, s := range []string{
		"GET /v3/apps HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer tok\r\n\r\n",
		"GET /v3/ping HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer tok\r\n\r\n",
		"GET /v3/ping/../apps HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer tok\r\n\r\n",
		"GET /v3/p%69ng?access_token=x HTTP/1.1\r\nHost: gw\r\n\r\n",
		"GET /v3/apps HTTP/1.1\r\nHost: gw\r\nAuthorization: x\r\nAuthorization: Bearer tok\r\n\r\n",
		"GET /v3/apps HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer\ttok\r\n\r\n",
		"GET http://evil.example/v3/apps HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer tok\r\n\r\n",
		"POST /v3/records/apps/a HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer tok\r\nContent-Length: 2\r\n\r\n{}",
		"GET /v3/apps HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: upgrade\r\nAuthorization: Bearer tok\r\n\r\n",
		"GET //v3/ping/ HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer tok\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	id := proxy.NewIdentifier(nil)
	f.Fuzz(func(t *testing.T, raw []byte) {
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
		if err != nil {
			return // the server would answer 400 itself
		}
		req.RemoteAddr = "192.0.2.1:1234"
		req.RequestURI = ""
		r := newLoopRig(t, 2, fakeAnswer{status: 503, code: 10004}, fakeAnswer{status: 200})
		r.h.ServeHTTP(httptest.NewRecorder(), req)

		r.lim.mu.Lock()
		charged := append([]string(nil), r.lim.keys...)
		r.lim.mu.Unlock()
		for _, out := range r.up.seen {
			if out.URL.Scheme != "http" || out.URL.Host != "upstream.invalid" {
				t.Fatalf("forwarded to %s://%s", out.URL.Scheme, out.URL.Host)
			}
			creds := readable(out)
			if len(creds) == 0 {
				continue
			}
			for _, c := range creds[1:] {
				if c != creds[0] {
					t.Fatalf("the upstream could read two credentials: %q", creds)
				}
			}
			if len(out.Header["Authorization"]) > 1 {
				t.Fatalf("%d Authorization lines forwarded", len(out.Header["Authorization"]))
			}
			key := id.Key(creds[0])
			ok := len(charged) > 0
			for _, k := range charged {
				ok = ok && k == key
			}
			if !ok && !pingEverywhere(out.URL) {
				t.Fatalf("credential %q forwarded uncharged (charged %q) to %q", creds[0], charged, out.URL.EscapedPath())
			}
		}
	})
}

// readable returns the tokens a lenient upstream could take from out.
func readable(out *http.Request) []string {
	var toks []string
	for _, v := range out.Header["Authorization"] {
		if len(v) >= 6 && strings.EqualFold(v[:6], "bearer") {
			if f := strings.FieldsFunc(v[6:], func(r rune) bool { return r == ' ' || r == '\t' || r == ':' || r == '=' || r == ',' }); len(f) > 0 {
				toks = append(toks, f[0])
			}
		}
	}
	for _, part := range strings.FieldsFunc(out.URL.RawQuery, func(r rune) bool { return r == '&' || r == ';' }) {
		name, val, _ := strings.Cut(part, "=")
		if n, err := url.QueryUnescape(name); err == nil {
			name = n
		}
		if strings.EqualFold(strings.TrimSpace(name), "access_token") {
			if v, err := url.QueryUnescape(val); err == nil {
				val = v
			}
			toks = append(toks, val)
		}
	}
	return toks
}

// pingEverywhere reports whether every way an upstream might decode u's
// path (raw or unescaped, once or twice, dot-segments resolved, slashes
// collapsed, case folded, ";params" cut) leads to /v3/ping.
func pingEverywhere(u *url.URL) bool {
	forms := []string{u.EscapedPath(), u.Path}
	if p, err := url.PathUnescape(u.Path); err == nil {
		forms = append(forms, p)
	}
	for _, p := range forms {
		for _, v := range []string{p, path.Clean("/" + p), strings.ToLower(p), strings.Split(p, ";")[0]} {
			v = path.Clean("/" + v)
			if v != "/v3/ping" && v != "/ping" {
				return false
			}
		}
	}
	return true
}
