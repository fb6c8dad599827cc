// Package bareproxy is the baseline the gateway is measured against: a
// plain httputil.ReverseProxy to the same upstream, with the same Rewrite
// (SetURL, SetXForwarded), the same pooled copy buffers and the same tuned
// http.Transport the gateway uses under its retry layer
// (retry.NewBaseTransport), and nothing else: no quota, no retries, no
// metrics, no log.
package bareproxy

import (
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"time"

	"github.com/fusioo-gateway/gateway/internal/retry"
)

// New returns the bare proxy to upstream and its transport (close its idle
// connections when done).
func New(upstream *url.URL) (http.Handler, *http.Transport) {
	o := retry.DefaultBaseOptions()
	o.ResponseHeaderTimeout = 60 * time.Second
	tr := retry.NewBaseTransport(o)
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(upstream)
			pr.SetXForwarded()
		},
		Transport:  tr,
		BufferPool: bufferPool{},
	}
	return rp, tr
}

type bufferPool struct{}

var buffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (bufferPool) Get() []byte  { return *(buffers.Get().(*[]byte)) }
func (bufferPool) Put(b []byte) { buffers.Put(&b) }
