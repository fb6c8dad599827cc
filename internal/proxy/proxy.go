// Package proxy is the gateway's HTTP handler: it identifies the token of
// each request, admits it against the token's quota, forwards it to the one
// configured upstream, and runs the attempt loop (send, classify, learn,
// decide, wait, admit) with the retry policy's values; it answers the
// client and logs the request. Everything the gateway answers itself has
// Fusioo's error shape.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/jonboulle/clockwork"
	"go.uber.org/zap"

	"github.com/fusioo-gateway/gateway/internal/cache"
	"github.com/fusioo-gateway/gateway/internal/flight"
	"github.com/fusioo-gateway/gateway/internal/fusioo"
	"github.com/fusioo-gateway/gateway/internal/limiter"
	"github.com/fusioo-gateway/gateway/internal/quota"
	"github.com/fusioo-gateway/gateway/internal/retry"
)

// ErrShutdown is the cause given to requests still waiting or in flight
// when the shutdown grace period ends; they are answered 503/10004.
var ErrShutdown = errors.New("gateway shutting down")

// Limiter is what the proxy needs of the quota limiter.
type Limiter interface {
	// Admit waits until key may send one attempt, at most until deadline.
	Admit(ctx context.Context, key string, deadline time.Time) (limiter.Decision, error)
	// Exhaust refuses key for d: the upstream said its quota is gone.
	Exhaust(ctx context.Context, key string, d time.Duration) error
	// Status reports key's quota without charging it.
	Status(ctx context.Context, key string) (quota.Result, error)
	// Forget drops key's state: the upstream answered its token 10003
	// or 20007.
	Forget(key string)
}

// Observer is told about every client answer and upstream attempt;
// internal/metrics implements it. Labels are bounded: route is a template
// from the route table, never a raw path.
type Observer interface {
	// Request is called once per client request with the answer's status.
	Request(method, route string, status int, d time.Duration)
	// Upstream is called once per upstream attempt that got an answer
	// (status 0 for a transport error).
	Upstream(route string, status int, code fusioo.Code, d time.Duration)
	// UpstreamExhausted is called when the upstream answered 20005 for a key.
	UpstreamExhausted()
	// Coalesced is called for a request answered from an identical read
	// of the same token in flight: no attempt of its own, no quota.
	Coalesced(route string)
	// CacheRequest is called for each request of a cached route: result
	// "hit", "miss" or "bypass" (the client's Cache-Control).
	CacheRequest(route, result string)
}

// Config holds the handler's dependencies and tunables.
//
// Zero values follow the convention of every Config and Options struct
// of retry, limiter, quota and proxy (docs/design.md): a zero field means
// none (the feature off, as the field says), never a hidden default; nil
// interfaces mean what the field says; Required fields are refused.
//
// This package has no Default function: every tunable here is the
// gateway's configuration (config.Default), passed straight through. One
// field is still an exception: New reads an empty PolicyName as "hourly".
type Config struct {
	// Upstream is the only place requests go. Required: New panics
	// without it.
	Upstream *url.URL
	// Transport sends each upstream attempt: any http.RoundTripper
	// (retry.NewBaseTransport's in the gateway). The handler's attempt
	// loop counts and learns from every answer whatever it is. Nil means
	// http.DefaultTransport.
	Transport http.RoundTripper
	// Retry is the retry policy the attempt loop asks; nil means one
	// attempt per request.
	Retry *retry.Policy
	// Limiter admits each attempt, and Routes names and charges each
	// request. Required: a request panics without them.
	Limiter Limiter
	Routes  *fusioo.Routes
	// Identifier turns a token into its quota key; nil hashes tokens
	// without a secret (NewIdentifier(nil)).
	Identifier *Identifier
	Logger     *zap.Logger     // nil: no request log
	Observer   Observer        // nil: nothing observed
	Clock      clockwork.Clock // nil: the real clock

	// MaxBodyBytes bounds request bodies (server.max_body_bytes): a larger
	// one gets 413/30252. 0: no bound.
	MaxBodyBytes int64
	// BodyTimeout bounds the wait for each read of a client's request body
	// (server.body_timeout): a client that stops sending is answered
	// 408/10002 and its connection freed. 0: no bound.
	BodyTimeout time.Duration
	// MaxWait bounds waiting for quota, retries included (queue.max_wait);
	// 0: no wait.
	MaxWait time.Duration
	// Limit is the quota RateLimit-Policy states (quota.limit); 0 states
	// none.
	Limit int
	// Window is the quota's window (quota.window): what RateLimit-Policy
	// states and how long an upstream 20005 without a Retry-After blocks
	// a key; 0: no block.
	Window time.Duration
	// MaxPause caps how long an upstream 503/10004's Retry-After pauses
	// sending to the upstream (upstream.max_pause); 0: no pause.
	MaxPause time.Duration
	// PolicyName is the quota policy's name in RateLimit headers
	// (quota.policy_name). The exception to the convention above: New
	// reads "" as "hourly".
	PolicyName string
	// ForwardedHeaders is what the upstream learns of the client's
	// address (upstream.forwarded_headers): "" (none) or "none", "set",
	// "append".
	ForwardedHeaders string
	// Cache keeps the 200 answers of the read routes it has rules for,
	// per token ([[cache]]); nil: none.
	Cache *cache.Cache
	// Coalesce makes identical reads of one token in flight together
	// share one exchange, one unit of quota and one answer ([coalesce]
	// enabled); false: every request is sent on its own.
	Coalesce bool
	// CoalesceMaxBuffer bounds what a shared answer keeps of its body for
	// requests that join late (flight.Group.MaxBuffer); 0: flight's
	// default.
	CoalesceMaxBuffer int
	// CoalesceMaxTotal bounds what all shared answers keep together
	// (flight.Group.MaxTotal); 0: flight's default.
	CoalesceMaxTotal int64
	// FlushInterval is passed to httputil.ReverseProxy; 0: no periodic
	// flush (ReverseProxy still streams responses of unknown length at
	// once).
	FlushInterval time.Duration
}

// Handler is the gateway's http.Handler.
type Handler struct {
	cfg      Config
	rp       *httputil.ReverseProxy
	clock    clockwork.Clock
	log      *zap.Logger
	obs      Observer
	policy   string // RateLimit-Policy value, computed once
	rlPrefix string // `"NAME";r=` of the RateLimit value
	limitStr string // cfg.Limit formatted
	// samePath: the upstream URL adds no path prefix, so an attempt's
	// path is the one the handler matched (passed to retry.Policy.Start).
	samePath bool
	retry    *retry.Policy

	// ctx is the requests' base context (BaseContext); Abort cancels it
	// with ErrShutdown.
	ctx   context.Context
	abort context.CancelCauseFunc
	// pausedUntil is the end (unix ns) of a pause the upstream asked for
	// with a 503/10004 and Retry-After: maintenance is the upstream's, not
	// a token's, so it holds every request back, and costs no quota.
	pausedUntil atomic.Int64
	// rejected remembers the keys of tokens the upstream answered 10003
	// or 20007: their requests go under the anonymous limit.
	rejected *rejectedKeys
	// flights are the reads in flight that identical reads of the same
	// token join (Config.Coalesce). Their contexts have ctx's values
	// (flightCtx) but not its cancellation: Abort closes the group.
	flights   flight.Group
	flightCtx context.Context
}

// New returns a handler for cfg. It does no I/O.
func New(cfg Config) *Handler {
	if cfg.Clock == nil {
		cfg.Clock = clockwork.NewRealClock()
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}
	if cfg.PolicyName == "" {
		cfg.PolicyName = "hourly"
	}
	if cfg.Identifier == nil {
		cfg.Identifier = NewIdentifier(nil)
	}
	if cfg.Transport == nil {
		cfg.Transport = http.DefaultTransport
	}
	h := &Handler{cfg: cfg, clock: cfg.Clock, log: cfg.Logger, obs: cfg.Observer, retry: cfg.Retry,
		rejected: newRejectedKeys(rejectedKeysMax, rejectedFor), flights: flight.Group{MaxBuffer: cfg.CoalesceMaxBuffer, MaxTotal: cfg.CoalesceMaxTotal}}
	if h.retry == nil {
		// No retries; the policy's defaults for the rest (the cap on a
		// parsed Retry-After, the serialization of creates after a 30054).
		rc := retry.DefaultConfig()
		rc.Routes, rc.MaxAttempts = cfg.Routes, 1
		h.retry = retry.New(rc)
	}
	h.ctx, h.abort = context.WithCancelCause(context.WithValue(context.Background(), baseKey{}, h))
	h.flightCtx = context.WithoutCancel(h.ctx)
	h.policy = fmt.Sprintf("%q;q=%d;w=%d", cfg.PolicyName, cfg.Limit, ceilSeconds(cfg.Window))
	h.rlPrefix = strconv.Quote(cfg.PolicyName) + ";r="
	h.limitStr = strconv.Itoa(cfg.Limit)
	h.samePath = (cfg.Upstream.Path == "" || cfg.Upstream.Path == "/") && cfg.Upstream.RawPath == ""
	target := cfg.Upstream
	h.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			forward(pr, cfg.ForwardedHeaders)
			// Request trailers are not forwarded: Fusioo's API reads none,
			// and one named Authorization would be a second credential.
			pr.Out.Trailer = nil
		},
		Transport:      attemptLoop{h},
		FlushInterval:  cfg.FlushInterval,
		BufferPool:     new(bufferPool),
		ModifyResponse: h.modifyResponse,
		ErrorHandler:   h.errorHandler,
		ErrorLog:       zap.NewStdLog(cfg.Logger.Named("reverseproxy")),
	}
	return h
}

// BaseContext is for http.Server.BaseContext: every request of a server
// wired with it is cancelled, with cause ErrShutdown, when Abort runs. A
// request served without it gets a context of its own that Abort cancels.
func (h *Handler) BaseContext(net.Listener) context.Context { return h.ctx }

// Abort ends the shutdown grace period: every request still queued or in
// flight is cancelled and answered 503/10004 (504/10001 when it may have
// reached the upstream).
func (h *Handler) Abort() {
	h.abort(ErrShutdown)
	h.flights.Close(ErrShutdown)
}

// baseKey marks the Handler's base context: a request whose context
// carries it is cancelled by Abort already.
type baseKey struct{}

// stateKey carries a request's *reqState in its context, from ServeHTTP
// to the attempt loop and the ReverseProxy callbacks: state of this
// package, in contexts this package made.
type stateKey struct{}

// reqState is one request's bookkeeping, shared by the handler, the
// attempt loop and the response callbacks. The quota header values'
// backing array is part of it, so they cost no allocation apart.
type reqState struct {
	h        *Handler
	w        http.ResponseWriter
	route    *fusioo.Route
	key      string
	start    time.Time
	deadline time.Time

	quotaVals [5]string // backing of the quota header values (setQuotaHeaders)

	mu         sync.Mutex
	quota      quota.Result // last admission's answer, for headers
	hasQuota   bool
	waited     time.Duration
	attempts   int
	code       fusioo.Code
	status     int
	blockedFor time.Duration   // set when an upstream 20005 blocked the key
	x          *retry.Exchange // the request's attempts (ServeHTTP starts it)
	// rejectedKey is the key of a token the upstream refused lately,
	// forwarded under the anonymous limit; a success clears the mark.
	rejectedKey string
	written     bool  // an attempt may have been applied (written and cut, or answered 504)
	coalesced   bool  // answered from an identical read in flight (serveShared), not sent
	cached      bool  // answered from the cache, not sent
	bodyErr     error // reading the client's body failed (clientBody)
}

// clientBody is a request body that remembers a read failure, so that a
// malformed body (bad chunked encoding) is answered as the client's error,
// not the upstream's.
type clientBody struct {
	io.ReadCloser
	rs   *reqState
	rc   *http.ResponseController
	idle time.Duration
}

func (b *clientBody) Read(p []byte) (int, error) {
	if b.idle > 0 {
		_ = b.rc.SetReadDeadline(time.Now().Add(b.idle))
	}
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		b.rs.mu.Lock()
		if b.rs.bodyErr == nil {
			b.rs.bodyErr = err
		}
		b.rs.mu.Unlock()
	}
	return n, err
}

// stateFrom returns the reqState of a request's context, or nil.
func stateFrom(ctx context.Context) *reqState {
	rs, _ := ctx.Value(stateKey{}).(*reqState)
	return rs
}

// contextWithState returns ctx carrying rs, for the ReverseProxy
// callbacks, which find it there (stateFrom).
func contextWithState(ctx context.Context, rs *reqState) context.Context {
	return context.WithValue(ctx, stateKey{}, rs)
}

// withState returns r with rs in its context (contextWithState), r itself
// when it has it already.
func withState(r *http.Request, rs *reqState) *http.Request {
	if stateFrom(r.Context()) == rs {
		return r
	}
	return r.WithContext(contextWithState(r.Context(), rs))
}

// ServeHTTP implements http.Handler.
//
// It is split in two, prepare then serve, and keeps a small frame of its
// own: the request's checks are done by the time the quota store is
// called, deep below serve, and every byte of a frame on the way there is
// stack the handler goroutine keeps (limiter.Limiter.ask says why).
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rs := &reqState{h: h, w: w, start: h.clock.Now()}
	defer h.finish(r, rs)
	if !h.prepare(w, r, rs) {
		return
	}
	ctx := r.Context()
	if ctx.Value(baseKey{}) != h {
		// Served without BaseContext: Abort reaches the request this way.
		c, cancel := context.WithCancelCause(ctx)
		defer cancel(nil)
		stop := context.AfterFunc(h.ctx, func() { cancel(context.Cause(h.ctx)) })
		defer stop()
		ctx = c
	}
	rs.deadline = rs.start.Add(h.cfg.MaxWait)
	if dl, ok := ctx.Deadline(); ok && dl.Before(rs.deadline) {
		rs.deadline = dl
	}
	h.serve(ctx, w, r, rs)
}

// prepare checks r, answering w and returning false when it is refused,
// and fills rs: its route, its key, its body's limits.
func (h *Handler) prepare(w http.ResponseWriter, r *http.Request, rs *reqState) bool {
	if code, msg := h.refuse(r); code != 0 {
		rs.route = h.cfg.Routes.Match(r.Method, "")
		h.writeError(w, rs, http.StatusBadRequest, code, msg)
		return false
	}
	rs.route = h.cfg.Routes.Match(r.Method, r.URL.Path)
	if !rs.route.Charged && r.URL.RawPath != "" {
		// Free only as spelled canonically: an upstream routing on the
		// raw path may read "/v3/ping%2F" as another path.
		rs.route = h.cfg.Routes.Unknown(r.Method)
	}
	tok, bad := Credential(r)
	if bad != "" {
		h.writeError(w, rs, http.StatusUnauthorized, fusioo.CodeUnauthorized, bad)
		return false
	}
	if formBody(r, rs.route) {
		h.writeError(w, rs, http.StatusUnsupportedMediaType, fusioo.CodeNotFound,
			"Form bodies are not accepted (Fusioo's API takes JSON, and multipart only for uploads): one could carry a second credential")
		return false
	}
	if tok != "" {
		rs.key = h.cfg.Identifier.Key(tok)
		if h.rejected.has(rs.key, rs.start) {
			// The upstream refused this token lately: it has no quota
			// to count, and costs no state (anonymous limit).
			rs.key, rs.rejectedKey = "", rs.key
		}
	}
	if h.cfg.MaxBodyBytes > 0 {
		if r.ContentLength > h.cfg.MaxBodyBytes {
			h.writeError(w, rs, http.StatusRequestEntityTooLarge, fusioo.CodeFileTooLarge,
				fmt.Sprintf("Request body exceeds the gateway's limit of %d bytes", h.cfg.MaxBodyBytes))
			return false
		}
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = http.MaxBytesReader(w, r.Body, h.cfg.MaxBodyBytes)
		}
	}
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = &clientBody{ReadCloser: r.Body, rs: rs, rc: http.NewResponseController(w), idle: h.cfg.BodyTimeout}
	}
	return true
}

// serve sends r, prepared, on its way, in ctx (r's, or one Abort
// reaches): shared with identical reads, or alone.
func (h *Handler) serve(ctx context.Context, w http.ResponseWriter, r *http.Request, rs *reqState) {
	shared, cached := false, false
	if rs.key != "" && rs.route.Kind == fusioo.KindRead && h.keyable(r) {
		_, cached = h.cfg.Cache.Rule(rs.route.Name())
		shared = h.cfg.Coalesce || cached
	}
	if shared {
		// The shared exchange runs on a request of its own (lead): this
		// one needs no copy carrying rs, only the context made above.
		if ctx != r.Context() {
			r = r.WithContext(ctx)
		}
		h.serveShared(w, r, rs, cached)
		return
	}
	r = r.WithContext(contextWithState(ctx, rs))
	if rs.key != "" && rs.route.Kind != fusioo.KindRead && h.cfg.Cache != nil {
		// Before (no cached read of what changes is served while it is
		// sent) and after (none stored from a read it overtook: the
		// cache's generation).
		h.invalidate(r, rs)
		defer h.invalidate(r, rs)
	}
	h.forward(w, r, rs)
}

// forward admits a request and sends it upstream, answering w. The
// exchange starts before the quota is charged: a body that may be retried
// is read now, however slowly the client sends it, so the slot counted
// next is used at once (Fusioo counts the request when it arrives); a
// streamed body goes out as it comes, its headers first.
func (h *Handler) forward(w http.ResponseWriter, r *http.Request, rs *reqState) {
	var route *fusioo.Route
	if h.samePath {
		route = rs.route
	}
	x, err := h.retry.Start(r, rs.key, route, rs.deadline)
	if err != nil {
		h.errorHandler(w, r, err)
		return
	}
	defer x.Close()
	rs.x = x
	// A create to an App cooling after a 30054 waits for its (key, App)
	// turn before its slot is counted, too; it is sent when the turn does
	// not come in time: an honest answer beats none.
	x.Turn(r.Context())
	if ok := h.admit(r.Context(), w, rs); !ok {
		return
	}
	h.rp.ServeHTTP(w, r)
}

// attemptLoop is the ReverseProxy's transport: Handler.exchange.
type attemptLoop struct{ h *Handler }

func (l attemptLoop) RoundTrip(req *http.Request) (*http.Response, error) { return l.h.exchange(req) }

// exchange is the attempt loop of one admitted request: send an attempt
// through the base transport, classify its outcome, learn from it, decide
// whether to retry, wait, charge the retry to the quota, and go again. It
// returns the last attempt's answer (or error) unchanged, for
// ReverseProxy to pass on: when the retries end for whatever reason (a
// final answer, MaxAttempts, the budget, the deadline, the quota refusing
// the retry, the client leaving), the client gets what the upstream said.
func (h *Handler) exchange(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	rs := stateFrom(ctx)
	x := rs.x // started, its first turn taken, by ServeHTTP
	x.Bind(req)
	for {
		start := h.clock.Now()
		resp, err := h.cfg.Transport.RoundTrip(x.Request())
		a := x.Outcome(resp, err, h.clock.Since(start))
		wait, again := x.Plan(ctx, a)
		h.learn(ctx, rs, a)
		if !again || !h.sleep(ctx, wait) || !h.admitRetry(ctx, rs) || !x.Turn(ctx) {
			return resp, err
		}
		x.Retrying(resp, a)
	}
}

// sleep waits d, or until ctx is done; it reports whether the whole wait
// passed.
func (h *Handler) sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := h.clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.Chan():
		return true
	case <-ctx.Done():
		return false
	}
}

// forward sets what the upstream learns of the client's address: mode
// "set" has the gateway set X-Forwarded-For/-Host/-Proto (ReverseProxy has
// dropped the client's own already) and drops the client's Forwarded and
// X-Real-IP; "append" keeps the client's X-Forwarded-For chain, adds the
// client's address and lets Forwarded and X-Real-IP pass; anything else
// ("none") sends none of them: the upstream is a third-party API.
func forward(pr *httputil.ProxyRequest, mode string) {
	switch mode {
	case "append":
		// ReverseProxy has dropped the client's X-Forwarded-* and
		// Forwarded from the outbound request: put the chain back.
		for _, k := range [...]string{"X-Forwarded-For", "Forwarded"} {
			if v := pr.In.Header[k]; len(v) > 0 {
				pr.Out.Header[k] = v
			}
		}
		pr.SetXForwarded()
		return
	case "set":
		pr.SetXForwarded()
	}
	delete(pr.Out.Header, "Forwarded")
	delete(pr.Out.Header, "X-Real-Ip")
}

// formBody reports whether r's body is a form an upstream could read an
// access_token from (RFC 6750 §2.2): application/x-www-form-urlencoded,
// or multipart/form-data outside the upload routes.
func formBody(r *http.Request, rt *fusioo.Route) bool {
	// A prefix, case-insensitively: no parse (nor allocation) for the
	// JSON bodies of every other request.
	ct := strings.TrimLeft(r.Header.Get("Content-Type"), " \t")
	return hasPrefixFold(ct, "application/x-www-form-urlencoded") ||
		(hasPrefixFold(ct, "multipart/form-data") && rt.Kind != fusioo.KindUpload)
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// hasToken reports whether a comma-separated header's values hold token
// (case-insensitively), as in Connection: keep-alive, Upgrade.
func hasToken(vals []string, token string) bool {
	for _, v := range vals {
		for v != "" {
			var t string
			t, v, _ = strings.Cut(v, ",")
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// refuse checks that r is a request for the upstream at all.
func (h *Handler) refuse(r *http.Request) (fusioo.Code, string) {
	switch {
	case r.Method == http.MethodConnect:
		return fusioo.CodeNotFound, "CONNECT is not supported: the gateway forwards only to its upstream"
	case r.URL.Host != "" && !strings.EqualFold(r.URL.Host, h.cfg.Upstream.Host):
		return fusioo.CodeNotFound, "Absolute-form request for another host: the gateway forwards only to its upstream"
	case !strings.HasPrefix(r.URL.Path, "/"):
		return fusioo.CodeNotFound, "Request target must be an absolute path"
	case len(r.Header["Upgrade"]) > 0, len(r.Header["Http2-Settings"]) > 0, hasToken(r.Header["Connection"], "upgrade"):
		// Fusioo's API has no upgrade endpoint, and a tunnel would be
		// an uncounted raw channel to it.
		return fusioo.CodeNotFound, "Protocol upgrades (Upgrade, h2c) are not supported"
	}
	return 0, ""
}

// admit charges the first attempt. It answers the client itself and
// returns false when the request must not go upstream.
func (h *Handler) admit(ctx context.Context, w http.ResponseWriter, rs *reqState) bool {
	if wait, ok := h.awaitPause(ctx, rs.deadline); !ok {
		h.refusePaused(ctx, w, rs, wait)
		return false
	}
	if !rs.route.Charged {
		h.quotaStatus(ctx, rs)
		return true
	}
	d, err := h.cfg.Limiter.Admit(ctx, rs.key, rs.deadline)
	rs.waited = d.Waited
	if err != nil {
		h.admitFailed(ctx, w, rs, err)
		return false
	}
	if rs.key != "" {
		rs.quota, rs.hasQuota = d.Result, true
	}
	if !d.Allowed {
		h.writeDenied(w, rs, &d)
		return false
	}
	return true
}

// refusePaused answers a request that cannot wait out the upstream's pause
// (wait left of it).
// It and quotaStatus are apart from admit, which calls the quota store: a
// frame on that way is stack the handler goroutine keeps (see
// limiter.Limiter.ask).
func (h *Handler) refusePaused(ctx context.Context, w http.ResponseWriter, rs *reqState, wait time.Duration) {
	if ctx.Err() != nil {
		h.admitFailed(ctx, w, rs, ctx.Err())
		return
	}
	w.Header().Set("Retry-After", strconv.FormatInt(max(ceilSeconds(wait), 1), 10))
	h.writeError(w, rs, http.StatusServiceUnavailable, fusioo.CodeUnavailable,
		"The upstream asked for a pause (maintenance); nothing was sent")
}

// quotaStatus tells a request that is not charged where its key's quota
// stands, for its headers.
func (h *Handler) quotaStatus(ctx context.Context, rs *reqState) {
	if rs.key == "" {
		return
	}
	if q, err := h.cfg.Limiter.Status(ctx, rs.key); err == nil {
		rs.quota, rs.hasQuota = q, true
	}
}

func (h *Handler) admitFailed(ctx context.Context, w http.ResponseWriter, rs *reqState, err error) {
	switch {
	case errors.Is(context.Cause(ctx), ErrShutdown), errors.Is(err, limiter.ErrClosed):
		h.writeError(w, rs, http.StatusServiceUnavailable, fusioo.CodeUnavailable, "The gateway is shutting down")
	case ctx.Err() != nil:
		rs.status = statusClientClosed // the client left while queued: nothing counted, nothing to answer
	default:
		h.log.Warn("quota store failed", zap.String("token", Fingerprint(rs.key)), zap.Error(err))
		h.writeError(w, rs, http.StatusServiceUnavailable, fusioo.CodeUnavailable, "The gateway's quota store is unavailable")
	}
}

// admitRetry charges a retry to the quota, after any upstream pause; on
// false the client gets the last answer (the 503 that paused, the 429).
func (h *Handler) admitRetry(ctx context.Context, rs *reqState) bool {
	if _, ok := h.awaitPause(ctx, rs.deadline); !ok {
		return false
	}
	if !rs.route.Charged {
		return true
	}
	d, err := h.cfg.Limiter.Admit(ctx, rs.key, rs.deadline)
	rs.mu.Lock()
	defer rs.mu.Unlock()
	rs.waited += d.Waited
	if err != nil {
		return false
	}
	if rs.key != "" {
		rs.quota, rs.hasQuota = d.Result, true
	}
	return d.Allowed
}

// learn counts each upstream attempt and learns from it: an upstream
// 20005 blocks the key for the rest of its window (or the upstream's
// Retry-After), and an upstream Retry-After on 503/10004 pauses the
// upstream (upstream.max_pause at most).
func (h *Handler) learn(ctx context.Context, rs *reqState, a retry.Attempt) {
	h.obs.Upstream(rs.route.Name(), a.Status, a.Code, a.Duration)
	var block time.Duration
	switch {
	case a.Status != 0 && fusioo.RateLimited(a.Status, a.Code):
		h.obs.UpstreamExhausted()
		block = a.RetryAfter
		if block <= 0 {
			// Fusioo says nothing of when its window frees: a whole window
			// from now is the earliest time that is certainly safe.
			block = h.cfg.Window
		}
	case a.Status != 0 && fusioo.Unavailable(a.Status, a.Code) && a.RetryAfter > 0:
		// Maintenance: the whole upstream pauses, no token's quota.
		h.pause(min(a.RetryAfter, h.cfg.MaxPause))
	case a.Code == fusioo.CodeUnauthorized || a.Code == fusioo.CodeInvalidUser:
		// A made-up, revoked or Lite user's token: nothing to count, so
		// nothing kept; its next requests are anonymous for a while.
		if rs.key != "" {
			h.rejected.add(rs.key, h.clock.Now())
			h.cfg.Limiter.Forget(rs.key)
		}
	case a.Status >= 200 && a.Status < 300 && rs.rejectedKey != "":
		// Accepted after all: charged again from the next request.
		h.rejected.remove(rs.rejectedKey)
	}
	rs.mu.Lock()
	// The last attempt learnt from is the one whose answer the client gets.
	// written is sticky: once an attempt may have been applied (written
	// and cut, or answered 504), the request may have been, whatever the
	// later attempts did. Other answers retried (429, 30054, 503) say it
	// was not.
	rs.attempts, rs.code = a.N, a.Code
	rs.written = rs.written || (a.Err != nil && a.Written) || a.Status == http.StatusGatewayTimeout
	if block > 0 {
		rs.blockedFor = block
	}
	rs.mu.Unlock()
	if block > 0 && rs.key != "" {
		if err := h.cfg.Limiter.Exhaust(context.WithoutCancel(ctx), rs.key, block); err != nil {
			h.log.Warn("could not block key after upstream refusal", zap.String("token", Fingerprint(rs.key)), zap.Error(err))
		}
	}
}

// modifyResponse adds the quota headers to the upstream's answer.
func (h *Handler) modifyResponse(resp *http.Response) error {
	rs := stateFrom(resp.Request.Context())
	if rs == nil {
		return nil
	}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	rs.status = resp.StatusCode
	if resp.Request.Context().Err() != nil {
		rs.status = statusClientClosed // gone (in a backoff): nobody gets this answer
	}
	if rs.hasQuota {
		// Set on the client's header map, where ReverseProxy would copy
		// them to (one value slice per name) after this returns; the
		// upstream's own values of these names are dropped, not added.
		for _, k := range quotaHeaderNames {
			delete(resp.Header, k)
		}
		h.setQuotaHeaders(rs.w.Header(), rs, rs.quota)
	}
	if resp.StatusCode == http.StatusTooManyRequests && (resp.Header.Get("Retry-After") == "" || rs.blockedFor > 0) {
		// What the gateway will do is what the client is told: the key
		// is blocked for blockedFor (the upstream's Retry-After when it
		// gave a usable one, else a window), at least 1 s.
		ra := rs.blockedFor
		if rs.hasQuota && rs.quota.ResetAfter > ra {
			ra = rs.quota.ResetAfter
		}
		resp.Header.Set("Retry-After", strconv.FormatInt(max(ceilSeconds(ra), 1), 10))
	}
	return nil
}

// pause holds every request back from the upstream for d from now (a
// longer pause already set is kept).
func (h *Handler) pause(d time.Duration) {
	if d <= 0 {
		return
	}
	until := h.clock.Now().Add(d).UnixNano()
	for {
		cur := h.pausedUntil.Load()
		if cur >= until || h.pausedUntil.CompareAndSwap(cur, until) {
			return
		}
	}
}

// awaitPause waits out an upstream pause when it ends by deadline; ok is
// false when it does not (wait: how long it lasts) or ctx ended first.
func (h *Handler) awaitPause(ctx context.Context, deadline time.Time) (wait time.Duration, ok bool) {
	until := h.pausedUntil.Load()
	if until == 0 {
		return 0, true
	}
	now := h.clock.Now()
	wait = time.Duration(until - now.UnixNano())
	if wait <= 0 {
		return 0, true
	}
	if now.Add(wait).After(deadline) || !h.sleep(ctx, wait) {
		return wait, false
	}
	return 0, true
}

// errorHandler answers a request whose upstream exchange failed, saying
// whether it may have been applied: 503/10004 only when nothing reached
// the upstream, 504/10001 when the request was written and its outcome is
// unknown.
func (h *Handler) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	rs := stateFrom(r.Context())
	rs.mu.Lock()
	written, bodyErr := rs.written, rs.bodyErr
	rs.mu.Unlock()
	var mbe *http.MaxBytesError
	var ne net.Error
	switch {
	case errors.As(err, &mbe):
		h.writeError(w, rs, http.StatusRequestEntityTooLarge, fusioo.CodeFileTooLarge,
			fmt.Sprintf("Request body exceeds the gateway's limit of %d bytes", mbe.Limit))
	case errors.Is(context.Cause(r.Context()), ErrShutdown) && written:
		h.writeError(w, rs, http.StatusGatewayTimeout, fusioo.CodeInternal,
			"The gateway shut down while the request was at the upstream: it may have been applied")
	case errors.Is(context.Cause(r.Context()), ErrShutdown):
		h.writeError(w, rs, http.StatusServiceUnavailable, fusioo.CodeUnavailable, "The gateway is shutting down; nothing was sent")
	case bodyErr != nil && errors.Is(bodyErr, os.ErrDeadlineExceeded):
		// Before the client-gone case: a failed body read ends the
		// request's context too.
		h.writeError(w, rs, http.StatusRequestTimeout, fusioo.CodeNotFound, "The request body was not received in time; nothing was applied")
	case bodyErr != nil && r.Context().Err() == nil:
		h.writeError(w, rs, http.StatusBadRequest, fusioo.CodeNotFound, "The request body is malformed")
	case r.Context().Err() != nil:
		// The client went away: there is nobody to answer.
		rs.status = statusClientClosed
	case !written:
		// Refused, a dial error or a dial timeout: nothing was sent.
		h.log.Debug("upstream unreachable", zap.String("error", bounded(err.Error(), maxLogError)))
		h.writeError(w, rs, http.StatusServiceUnavailable, fusioo.CodeUnavailable, "The upstream is unreachable; nothing was sent")
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		h.writeError(w, rs, http.StatusGatewayTimeout, fusioo.CodeInternal,
			"The upstream did not answer in time: the request may have been applied")
	default:
		h.log.Debug("upstream exchange failed after the request was sent", zap.String("error", bounded(err.Error(), maxLogError)))
		h.writeError(w, rs, http.StatusGatewayTimeout, fusioo.CodeInternal,
			"The upstream connection failed after the request was sent: it may have been applied")
	}
}

// writeDenied answers a request the quota refused: 429/20005 with an
// honest Retry-After.
func (h *Handler) writeDenied(w http.ResponseWriter, rs *reqState, d *limiter.Decision) {
	if rs.hasQuota {
		h.setQuotaHeaders(w.Header(), rs, d.Result)
	}
	w.Header().Set("Retry-After", strconv.FormatInt(max(ceilSeconds(d.RetryAfter), 1), 10))
	if d.Reason == limiter.ReasonKeysFull {
		h.writeError(w, rs, http.StatusServiceUnavailable, fusioo.CodeUnavailable,
			"The gateway tracks as many tokens as it may (quota.max_keys); nothing was sent")
		return
	}
	msg := "You have reached the hourly API rate limit"
	if d.Reason == limiter.ReasonQueueFull {
		msg = "Too many requests are waiting for this token's rate limit"
	}
	h.writeError(w, rs, http.StatusTooManyRequests, fusioo.CodeRateLimited, msg)
}

func (h *Handler) writeError(w http.ResponseWriter, rs *reqState, status int, code fusioo.Code, msg string) {
	rs.mu.Lock()
	rs.status, rs.code = status, code
	rs.mu.Unlock()
	fusioo.WriteError(w, status, code, msg)
}

// quotaHeaderNames are the names setQuotaHeaders sets, spelled
// canonically (as Header.Set would store them, and as they go on the wire).
var quotaHeaderNames = [...]string{"Ratelimit-Policy", "Ratelimit", "Ratelimit-Limit", "Ratelimit-Remaining", "Ratelimit-Reset"}

// setQuotaHeaders writes the draft-ietf-httpapi-ratelimit-headers-11 fields
// and the older RateLimit-Limit/-Remaining/-Reset most clients read today.
// Reset is the seconds until Remaining next grows.
//
// The names are canonical already, so no canonicalisation allocates; the
// five value slices share rs.quotaVals as their backing array, and the
// formatted numbers are substrings of the RateLimit value: one allocation.
func (h *Handler) setQuotaHeaders(hd http.Header, rs *reqState, q quota.Result) {
	var buf [128]byte
	b := append(buf[:0], h.rlPrefix...)
	remAt := len(b)
	b = strconv.AppendInt(b, int64(q.Remaining), 10)
	remEnd := len(b)
	b = append(b, ";t="...)
	rstAt := len(b)
	b = strconv.AppendInt(b, ceilSeconds(q.ResetAfter), 10)
	limAt := len(b)
	if q.Limit != 0 && q.Limit != h.cfg.Limit {
		b = strconv.AppendInt(b, int64(q.Limit), 10)
	}
	all := string(b)
	limit := h.limitStr
	if limAt < len(all) {
		limit = all[limAt:]
	}
	v := &rs.quotaVals
	v[0], v[1], v[2], v[3], v[4] = h.policy, all[:limAt], limit, all[remAt:remEnd], all[rstAt:limAt]
	for i, k := range quotaHeaderNames {
		hd[k] = v[i : i+1 : i+1]
	}
}

// statusClientClosed is what logs and metrics record for a client that
// left before its answer (nginx's convention); it is never sent.
const statusClientClosed = 499

func (h *Handler) finish(r *http.Request, rs *reqState) {
	d := h.clock.Since(rs.start)
	rs.mu.Lock()
	status, code, attempts, waited := rs.status, rs.code, rs.attempts, rs.waited
	rs.mu.Unlock()
	if status == 0 {
		status = statusClientClosed
	}
	route := "{unknown}"
	if rs.route != nil {
		route = rs.route.Name()
	}
	h.obs.Request(r.Method, route, status, d)
	if ce := h.log.Check(zap.InfoLevel, "request"); ce != nil {
		ce.Write(
			zap.String("method", bounded(r.Method, maxLogMethod)),
			zap.String("route", route),
			zap.Int("status", status),
			zap.Int("code", int(code)),
			zap.Int("attempts", attempts),
			zap.Duration("queue_wait", waited),
			zap.Duration("duration", d),
			zap.String("token", Fingerprint(rs.key)),
			zap.Bool("coalesced", rs.coalesced),
			zap.Bool("cached", rs.cached),
		)
	}
}

// Bounds of log fields a client can shape: a method is any token the
// client sends, an upstream error may quote a header name it sent.
const (
	maxLogMethod = 24
	maxLogError  = 256
)

// bounded cuts s to at most n bytes (on a rune boundary), marking the cut.
func bounded(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := n
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + "…"
}

func ceilSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64(math.Ceil(d.Seconds()))
}

// bufferPool lends ReverseProxy its copy buffers, so streaming a response
// does not allocate 32 KB per request. It holds array pointers, which go
// in and out of the pool without an allocation (a *[]byte would need a new
// pointer on every Put).
type bufferPool struct{ p sync.Pool }

// copyBufSize is ReverseProxy's own copy buffer size.
const copyBufSize = 32 << 10

func (b *bufferPool) Get() []byte {
	if a, ok := b.p.Get().(*[copyBufSize]byte); ok {
		return a[:]
	}
	return make([]byte, copyBufSize)
}

func (b *bufferPool) Put(buf []byte) {
	if len(buf) == copyBufSize {
		b.p.Put((*[copyBufSize]byte)(buf))
	}
}

type nopObserver struct{}

func (nopObserver) Request(string, string, int, time.Duration)       {}
func (nopObserver) Upstream(string, int, fusioo.Code, time.Duration) {}
func (nopObserver) UpstreamExhausted()                               {}
func (nopObserver) Coalesced(string)                                 {}
func (nopObserver) CacheRequest(string, string)                      {}
