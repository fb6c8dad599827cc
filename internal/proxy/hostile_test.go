package proxy_test

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/fusioo-gateway/gateway/internal/fusioo"
	"github.com/fusioo-gateway/gateway/internal/proxy"
)

// TestOneCredentialOrNone: a request carries at most one credential the
// upstream could read, and it is the one charged; anything else is
// refused 401/10003 and never forwarded. Other schemes go uncharged under
// the anonymous limit.
func TestOneCredentialOrNone(t *testing.T) {
	t.Parallel()
	const tok = "REALTOK-abc.def_~+/=="
	for _, c := range []struct {
		name   string
		auth   []string
		query  string
		status int
		key    bool // charged to a token's key (else anonymous)
	}{
		{"one bearer", []string{"Bearer " + tok}, "", 200, true},
		{"scheme case-insensitive, several spaces", []string{"bEaReR    " + tok}, "", 200, true},
		{"two lines", []string{"x", "Bearer " + tok}, "", 401, false},
		{"two bearer lines", []string{"Bearer a", "Bearer " + tok}, "", 401, false},
		{"tab", []string{"Bearer\t" + tok}, "", 401, false},
		{"no separator", []string{"Bearer" + tok}, "", 401, false},
		{"colon", []string{"Bearer:" + tok}, "", 401, false},
		{"junk after", []string{"Bearer " + tok + " junk1"}, "", 401, false},
		{"comma list", []string{"Bearer a, Bearer " + tok}, "", 401, false},
		{"not b64token", []string{"Bearer tok\"en"}, "", 401, false},
		{"padding inside", []string{"Bearer ab=cd"}, "", 401, false},
		{"scheme alone", []string{"Bearer"}, "", 401, false},
		{"scheme and spaces", []string{"Bearer   "}, "", 401, false},
		{"basic", []string{"Basic Zm9vOmJhcg=="}, "", 200, false},
		{"none", nil, "", 200, false},
		{"query alone", nil, "access_token=" + tok, 401, false},
		{"query and header", []string{"Bearer " + tok}, "access_token=" + tok, 401, false},
		{"query encoded", nil, "Access%5Ftoken=" + tok, 401, false},
		{"query after semicolon", nil, "a=1;access_token=" + tok, 401, false},
		{"query plus-space", nil, "access_token+=" + tok, 401, false},
		{"query lookalike", []string{"Bearer " + tok}, "my_access_token=x&access_tokens=y", 200, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			r := newLoopRig(t, 1, fakeAnswer{status: 200})
			target := "/v3/apps"
			if c.query != "" {
				target += "?" + c.query
			}
			req := httptest.NewRequest("GET", target, nil)
			for _, v := range c.auth {
				req.Header.Add("Authorization", v)
			}
			a := r.serveReq(req)
			if a.status != c.status {
				t.Fatalf("got %+v, want %d", a, c.status)
			}
			if c.status == 401 {
				if a.code != fusioo.CodeUnauthorized || r.up.attempts() != 0 {
					t.Fatalf("refused with code %d after %d attempts: want 10003, never forwarded", a.code, r.up.attempts())
				}
				if admits, _ := r.lim.counts(); admits != 0 {
					t.Fatalf("a refused request was charged")
				}
				return
			}
			r.lim.mu.Lock()
			keys := append([]string(nil), r.lim.keys...)
			r.lim.mu.Unlock()
			if len(keys) != 1 || (keys[0] != "") == !c.key {
				t.Fatalf("admitted under keys %q, want charged to a token: %v", keys, c.key)
			}
			sent := r.up.seen[0].Header["Authorization"]
			if len(sent) != len(c.auth) || (len(c.auth) == 1 && sent[0] != c.auth[0]) {
				t.Fatalf("upstream got Authorization %q, client sent %q", sent, c.auth)
			}
		})
	}
}

// TestUpgradesRefused: a request asking for a protocol upgrade is refused
// 400/10002 and never forwarded: a tunnel would be uncounted.
func TestUpgradesRefused(t *testing.T) {
	t.Parallel()
	for name, hdr := range map[string][]string{
		"websocket":          {"Connection", "Upgrade", "Upgrade", "websocket"},
		"h2c":                {"Connection", "Upgrade, HTTP2-Settings", "Upgrade", "h2c", "HTTP2-Settings", "AAMAAABkAAQCAAAAAAIAAAAA"},
		"upgrade alone":      {"Upgrade", "websocket"},
		"connection upgrade": {"Connection", "keep-alive, upgrade"},
		"settings alone":     {"HTTP2-Settings", "AAMAAABk"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			for _, path := range []string{"/v3/apps", "/v3/ping"} {
				r := newLoopRig(t, 1, fakeAnswer{status: 200})
				req := httptest.NewRequest("GET", path, nil)
				req.Header.Set("Authorization", "Bearer tok")
				for i := 0; i+1 < len(hdr); i += 2 {
					req.Header.Add(hdr[i], hdr[i+1])
				}
				a := r.serveReq(req)
				if a.status != 400 || a.code != fusioo.CodeNotFound || r.up.attempts() != 0 {
					t.Fatalf("%s: got %+v after %d attempts", path, a, r.up.attempts())
				}
			}
		})
	}
}

// TestForwardedHeaders: upstream.forwarded_headers decides what the
// upstream learns of the client's address.
func TestForwardedHeaders(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		mode                       string
		xff, xfh, realIP, fwd, xfp string
	}{
		{"", "", "", "", "", ""},
		{"none", "", "", "", "", ""},
		{"set", "192.0.2.1", "gw.example", "", "", "http"},
		{"append", "10.0.0.7, 192.0.2.1", "gw.example", "10.0.0.8", "for=10.0.0.9", "http"},
	} {
		t.Run(c.mode, func(t *testing.T) {
			t.Parallel()
			r := newLoopRigWith(t, func(cfg *proxy.Config) { cfg.ForwardedHeaders = c.mode }, 1, fakeAnswer{status: 200})
			req := httptest.NewRequest("GET", "/v3/ping", nil)
			req.Host = "gw.example"
			req.RemoteAddr = "192.0.2.1:5555"
			req.Header.Set("X-Forwarded-For", "10.0.0.7")
			req.Header.Set("X-Forwarded-Host", "internal.example")
			req.Header.Set("X-Real-IP", "10.0.0.8")
			req.Header.Set("Forwarded", "for=10.0.0.9")
			if a := r.serveReq(req); a.status != 200 {
				t.Fatalf("got %+v", a)
			}
			h := r.up.seen[0].Header
			got := [...]string{h.Get("X-Forwarded-For"), h.Get("X-Forwarded-Host"), h.Get("X-Real-Ip"), h.Get("Forwarded"), h.Get("X-Forwarded-Proto")}
			want := [...]string{c.xff, c.xfh, c.realIP, c.fwd, c.xfp}
			if got != want {
				t.Fatalf("upstream got XFF, XFH, X-Real-IP, Forwarded, XFP = %q, want %q", got, want)
			}
		})
	}
}

// TestLogFieldsBounded: a client-shaped value makes no long log line.
func TestLogFieldsBounded(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var buf bytes.Buffer
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(lockedWriter{&mu, &buf}), zap.DebugLevel))
	r := newLoopRigWith(t, func(cfg *proxy.Config) { cfg.Logger = log }, 1,
		fakeAnswer{err: errorString("invalid header field name " + strings.Repeat("X", 60000))})
	req := httptest.NewRequest("GET", "/v3/apps", nil)
	req.Method = strings.Repeat("M", 60000)
	req.Header.Set("Authorization", "Bearer tok")
	r.serveReq(req)
	mu.Lock()
	defer mu.Unlock()
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) < 2 {
		t.Fatalf("want the error and request lines, got %q", buf.String())
	}
	for _, l := range lines {
		if len(l) > 1024 {
			t.Fatalf("log line of %d bytes: %.200s…", len(l), l)
		}
	}
}

type errorString string

func (e errorString) Error() string { return string(e) }

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}

var _ http.RoundTripper = (*fakeUpstream)(nil)

// TestRejectedTokenLeavesNoState: once the upstream answers a token 10003
// (or 20007), its state is forgotten and its next requests go under the
// anonymous limit; a success clears the mark.
func TestRejectedTokenLeavesNoState(t *testing.T) {
	t.Parallel()
	for _, code := range []fusioo.Code{fusioo.CodeUnauthorized, fusioo.CodeInvalidUser} {
		r := newLoopRig(t, 1, fakeAnswer{status: 401, code: code}, fakeAnswer{status: 401, code: code}, fakeAnswer{status: 200}, fakeAnswer{status: 200})
		keysOf := func() []string {
			r.lim.mu.Lock()
			defer r.lim.mu.Unlock()
			return append([]string(nil), r.lim.keys...)
		}
		for range 4 {
			r.serve(t, "GET", "/v3/apps")
		}
		k := keysOf()
		// Charged; anonymous after the refusal; anonymous, answered 200:
		// the mark goes; charged again.
		if len(k) != 4 || k[0] == "" || k[1] != "" || k[2] != "" || k[3] != k[0] {
			t.Fatalf("code %d: admitted under keys %q", code, k)
		}
		if r.lim.forgotten() != 1 {
			t.Fatalf("code %d: forgotten %d times, want 1", code, r.lim.forgotten())
		}
	}
}

// TestKeysFull: a new token the gateway has no room for is answered
// 503/10004 with Retry-After, and not forwarded.
func TestKeysFull(t *testing.T) {
	t.Parallel()
	r := newLoopRig(t, 1, fakeAnswer{status: 200})
	r.lim.full = true
	a := r.serve(t, "GET", "/v3/apps")
	if a.status != 503 || a.code != fusioo.CodeUnavailable || a.retryAfter != "30" || r.up.attempts() != 0 {
		t.Fatalf("got %+v after %d attempts", a, r.up.attempts())
	}
}

// TestRequestTrailersDropped: a trailer (here a second credential) never
// reaches the upstream.
func TestRequestTrailersDropped(t *testing.T) {
	t.Parallel()
	r := newLoopRig(t, 1, fakeAnswer{status: 200})
	req := httptest.NewRequest("POST", "/v3/records/apps/app1", strings.NewReader(`{"a":1}`))
	req.Header.Set("Authorization", "Bearer tok")
	req.Trailer = http.Header{"Authorization": {"Bearer other"}}
	if a := r.serveReq(req); a.status != 200 {
		t.Fatalf("got %+v", a)
	}
	if tr := r.up.seen[0].Trailer; len(tr) != 0 {
		t.Fatalf("upstream got trailers %v", tr)
	}
}
