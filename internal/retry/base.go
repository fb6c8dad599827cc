package retry

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"
)

// BaseOptions tune the http.Transport that NewBaseTransport builds.
//
// Zero values follow the convention of every Config and Options struct
// of retry, limiter, quota and proxy (docs/design.md): a zero field means
// none (the feature off, as the field says), never a hidden default; nil
// interfaces mean what the field says; Required fields are refused.
//
// DefaultBaseOptions returns this package's defaults.
type BaseOptions struct {
	// DialTimeout bounds connecting; 0: no bound but the system's.
	// KeepAlive is the TCP keep-alive period; 0: no keep-alive probes.
	DialTimeout time.Duration
	KeepAlive   time.Duration
	// TLSHandshakeTimeout bounds the TLS handshake; 0: no bound.
	TLSHandshakeTimeout time.Duration
	// ResponseHeaderTimeout is upstream.timeout: how long an attempt waits
	// for the answer's headers once the request is written; 0: no bound.
	// An attempt that exceeds it ends as a "timeout" error, which the
	// Policy retries on replay-safe routes only.
	ResponseHeaderTimeout time.Duration
	// IdleConnTimeout closes connections idle that long; 0: never closed
	// for being idle.
	IdleConnTimeout time.Duration
	// MaxIdleConnsPerHost is how many idle connections to Fusioo are kept
	// (the gateway keeps 256: a proxy sends all its traffic to one host,
	// and http.Transport's own default of 2 would reconnect constantly);
	// 0: none kept, every connection is closed after its exchange.
	MaxIdleConnsPerHost int
	// MaxConnsPerHost bounds connections to Fusioo; 0: no bound.
	MaxConnsPerHost int
	// TLSClientConfig is the TLS configuration; nil means the defaults.
	TLSClientConfig *tls.Config
	// Proxy selects an outbound HTTP proxy; nil connects directly (the
	// environment's HTTP_PROXY is not consulted unless the caller passes
	// http.ProxyFromEnvironment).
	Proxy func(*http.Request) (*url.URL, error)
	// DisableHTTP2 keeps to HTTP/1.1 over TLS. The gateway sets it: Go's
	// HTTP/2 client re-sends a nil-bodied request of any method on its own
	// after a REFUSED_STREAM or a peer's PROTOCOL_ERROR reset, which may
	// come after the upstream processed it; over HTTP/1.1 no attempt is
	// ever re-sent below the attempt loop (see body.setEmpty).
	DisableHTTP2 bool
}

// DefaultBaseOptions returns the base transport's defaults: bounded dial,
// handshake and header waits, and many idle connections to the one
// upstream host, kept alive.
func DefaultBaseOptions() BaseOptions {
	return BaseOptions{
		DialTimeout:           5 * time.Second,
		KeepAlive:             30 * time.Second,
		TLSHandshakeTimeout:   5 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   256,
	}
}

// NewBaseTransport returns an *http.Transport tuned by o to sit under the
// gateway's attempt loop (see DefaultBaseOptions), HTTP/2 when offered
// unless o disables it, and no transparent compression (the client's
// Accept-Encoding is passed through untouched; Exchange.Outcome reads gzip
// error bodies itself).
func NewBaseTransport(o BaseOptions) *http.Transport {
	d := &net.Dialer{Timeout: max(o.DialTimeout, 0), KeepAlive: o.KeepAlive}
	if o.KeepAlive <= 0 {
		d.KeepAlive = -1 // net.Dialer reads 0 as its own default period
	}
	idle := o.MaxIdleConnsPerHost
	if idle <= 0 {
		idle = -1 // http.Transport reads 0 as its own default of 2
	}
	t := &http.Transport{
		Proxy:                 o.Proxy,
		DialContext:           d.DialContext,
		TLSClientConfig:       o.TLSClientConfig,
		TLSHandshakeTimeout:   max(o.TLSHandshakeTimeout, 0),
		ResponseHeaderTimeout: max(o.ResponseHeaderTimeout, 0),
		IdleConnTimeout:       max(o.IdleConnTimeout, 0),
		MaxIdleConns:          0, // bounded per host instead
		MaxIdleConnsPerHost:   idle,
		MaxConnsPerHost:       max(o.MaxConnsPerHost, 0),
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
		ForceAttemptHTTP2:     !o.DisableHTTP2,
	}
	if o.DisableHTTP2 {
		// A non-nil empty map turns HTTP/2 off.
		t.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	return t
}

// ErrBodyStalled is the error of a response body read that waited longer
// than the body timeout for the upstream's next bytes.
var ErrBodyStalled = errors.New("upstream body stalled")

// WithBodyTimeout returns rt with every response body bounded: a read that
// waits longer than idle for the upstream's next bytes fails with
// ErrBodyStalled and the connection is closed (upstream.body_timeout). The
// time the caller takes between reads (a slow client) does not count. It
// bounds the error-body peek (Exchange.Outcome) as well as the copy to the
// client. idle <= 0 returns rt unchanged.
func WithBodyTimeout(rt http.RoundTripper, idle time.Duration) http.RoundTripper {
	if idle <= 0 {
		return rt
	}
	return bodyTimeout{rt, idle}
}

type bodyTimeout struct {
	rt   http.RoundTripper
	idle time.Duration
}

func (b bodyTimeout) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := b.rt.RoundTrip(req)
	if err == nil && resp.Body != nil && resp.Body != http.NoBody {
		ib := &idleBody{rc: resp.Body, idle: b.idle, base: time.Now()}
		// Set after the field is: expire reads it (Reset orders the two).
		ib.timer = time.AfterFunc(time.Hour, ib.expire)
		ib.timer.Reset(b.idle)
		resp.Body = ib
	}
	return resp, err
}

// CloseIdleConnections passes to the wrapped transport.
func (b bodyTimeout) CloseIdleConnections() {
	if c, ok := b.rt.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// idleBody is a response body whose reads each have idle to complete.
//
// One timer runs while the body is open, and a read only notes when it
// began and that it ended: the timer, when it fires, sees whether a read
// has been waiting idle and, if not, is set again for when the read in
// flight (or the next) would have. A timer set and stopped around each
// read cost every response two timer operations per read.
type idleBody struct {
	rc    io.ReadCloser
	idle  time.Duration
	base  time.Time // since is counted from base (monotonic)
	timer *time.Timer
	// since is when the read in flight began, in ns since base plus 1;
	// 0: none in flight.
	since   atomic.Int64
	stalled atomic.Bool
	closed  atomic.Bool
}

func (b *idleBody) now() int64 { return int64(time.Since(b.base)) + 1 }

// expire runs when the timer fires: a read waiting idle or longer has
// stalled, and its body is closed, which ends the read; otherwise the
// timer is set again.
func (b *idleBody) expire() {
	if b.closed.Load() {
		return
	}
	next := b.idle
	if s := b.since.Load(); s != 0 {
		waited := time.Duration(b.now() - s)
		if waited >= b.idle {
			b.stalled.Store(true)
			_ = b.rc.Close() // unblocks the read in flight
			return
		}
		next = b.idle - waited
	}
	b.timer.Reset(next)
}

func (b *idleBody) Read(p []byte) (int, error) {
	if b.stalled.Load() {
		return 0, ErrBodyStalled
	}
	b.since.Store(b.now())
	n, err := b.rc.Read(p)
	b.since.Store(0)
	if b.stalled.Load() {
		return n, ErrBodyStalled
	}
	return n, err
}

func (b *idleBody) Close() error {
	b.closed.Store(true)
	b.timer.Stop()
	return b.rc.Close()
}
