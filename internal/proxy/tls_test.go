package proxy_test

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/fusioo-gateway/gateway/internal/fusioo"
	"github.com/fusioo-gateway/gateway/internal/retry"
)

// TestTLSUpstream: an https upstream is reached over TLS, verified against
// its certificate, with the Host header of the upstream.
func TestTLSUpstream(t *testing.T) {
	t.Parallel()
	up := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil {
			t.Error("plain text reached the TLS upstream")
		}
		fusioo.WriteSuccess(w, map[string]string{"host": r.Host})
	}))
	defer up.Close()
	pool := x509.NewCertPool()
	pool.AddCert(up.Certificate())
	bo := retry.DefaultBaseOptions()
	bo.TLSClientConfig = &tls.Config{RootCAs: pool}
	base := retry.NewBaseTransport(bo)
	defer base.CloseIdleConnections()
	s := newStack(t, stackOpts{upstream: http.NotFoundHandler(), transport: base})
	s.retarget(up.URL)
	resp, b := s.do("GET", "/v3/apps", "tok-tls", nil)
	if env := envelope(t, resp, b); resp.StatusCode != 200 || env.Code != 10000 {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}

	// An upstream whose certificate is not trusted is unreachable, not
	// silently accepted.
	s2 := newStack(t, stackOpts{upstream: http.NotFoundHandler()})
	s2.retarget(up.URL)
	resp, b = s2.do("GET", "/v3/apps", "tok-tls", nil)
	if env := envelope(t, resp, b); resp.StatusCode != 503 || env.Code != 10004 {
		t.Fatalf("untrusted upstream: %d %s", resp.StatusCode, b)
	}
}
