// Package proxy is the gateway's HTTP handler: it identifies the token of
// each request, admits it against the token's quota, forwards it to the one
// configured upstream through the retry transport, classifies the answer and
// logs it. Everything the gateway answers itself has Fusioo's error shape.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
	"go.uber.org/zap"

	"github.com/fusioo-gateway/gateway/internal/fusioo"
	"github.com/fusioo-gateway/gateway/internal/limiter"
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
	Status(ctx context.Context, key string) (limiter.Result, error)
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
}

// Config holds the handler's dependencies and tunables.
type Config struct {
	Upstream   *url.URL          // the only place requests go
	Transport  http.RoundTripper // the retry transport (retry.Transport)
	Limiter    Limiter
	Routes     *fusioo.Routes
	Identifier *Identifier
	Logger     *zap.Logger     // nil: no request log
	Observer   Observer        // nil: nothing observed
	Clock      clockwork.Clock // nil: the real clock

	MaxBodyBytes int64         // larger request bodies get 413/30252
	MaxWait      time.Duration // queue.max_wait: bound on waiting for quota, retries included
	Limit        int           // quota.limit, for RateLimit-Policy
	Window       time.Duration // quota.window: how long an upstream 20005 blocks a key
	PolicyName   string        // the quota policy's name in RateLimit headers ("hourly")
	// FlushInterval is passed to httputil.ReverseProxy (0: its default,
	// which streams responses of unknown length at once).
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

	abortCtx context.Context
	abort    context.CancelFunc
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
	h := &Handler{cfg: cfg, clock: cfg.Clock, log: cfg.Logger, obs: cfg.Observer}
	h.policy = fmt.Sprintf("%q;q=%d;w=%d", cfg.PolicyName, cfg.Limit, ceilSeconds(cfg.Window))
	h.rlPrefix = strconv.Quote(cfg.PolicyName) + ";r="
	h.limitStr = strconv.Itoa(cfg.Limit)
	h.abortCtx, h.abort = context.WithCancel(context.Background())
	target := cfg.Upstream
	h.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.SetXForwarded()
		},
		Transport:      cfg.Transport,
		FlushInterval:  cfg.FlushInterval,
		BufferPool:     bufferPool{},
		ModifyResponse: h.modifyResponse,
		ErrorHandler:   h.errorHandler,
		ErrorLog:       zap.NewStdLog(cfg.Logger.Named("reverseproxy")),
	}
	return h
}

// Abort ends the shutdown grace period: every request still queued or in
// flight is cancelled and answered 503/10004.
func (h *Handler) Abort() { h.abort() }

// reqState is one request's bookkeeping, shared by the handler, the retry
// hooks and the response callbacks.
type reqState struct {
	route    *fusioo.Route
	key      string
	start    time.Time
	deadline time.Time

	mu         sync.Mutex
	quota      limiter.Result // last admission's answer, for headers
	hasQuota   bool
	waited     time.Duration
	attempts   int
	code       fusioo.Code
	status     int
	blockedFor time.Duration // set when an upstream 20005 blocked the key
}

type stateKey struct{}

func stateFrom(ctx context.Context) *reqState {
	rs, _ := ctx.Value(stateKey{}).(*reqState)
	return rs
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rs := &reqState{start: h.clock.Now()}
	defer h.finish(r, rs)

	if code, msg := h.refuse(r); code != 0 {
		rs.route = h.cfg.Routes.Match(r.Method, "")
		h.writeError(w, rs, http.StatusBadRequest, code, msg)
		return
	}
	rs.route = h.cfg.Routes.Match(r.Method, r.URL.Path)
	if tok := BearerToken(r.Header); tok != "" {
		rs.key = h.cfg.Identifier.Key(tok)
	}
	if h.cfg.MaxBodyBytes > 0 {
		if r.ContentLength > h.cfg.MaxBodyBytes {
			h.writeError(w, rs, http.StatusRequestEntityTooLarge, fusioo.CodeFileTooLarge,
				fmt.Sprintf("Request body exceeds the gateway's limit of %d bytes", h.cfg.MaxBodyBytes))
			return
		}
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = http.MaxBytesReader(w, r.Body, h.cfg.MaxBodyBytes)
		}
	}
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	stop := context.AfterFunc(h.abortCtx, func() { cancel(ErrShutdown) })
	defer stop()

	rs.deadline = rs.start.Add(h.cfg.MaxWait)
	if dl, ok := ctx.Deadline(); ok && dl.Before(rs.deadline) {
		rs.deadline = dl
	}
	if ok := h.admit(ctx, w, rs); !ok {
		return
	}
	ctx = context.WithValue(ctx, stateKey{}, rs)
	ctx = retry.WithHooks(ctx, &retry.Hooks{
		Key:      rs.key,
		Deadline: rs.deadline,
		Admit: func(ctx context.Context, deadline time.Time) (bool, error) {
			return h.admitRetry(ctx, rs, deadline)
		},
		Answered: func(a retry.Attempt) { h.answered(ctx, rs, a) },
	})
	h.rp.ServeHTTP(w, r.WithContext(ctx))
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
	}
	return 0, ""
}

// admit charges the first attempt. It answers the client itself and
// returns false when the request must not go upstream.
func (h *Handler) admit(ctx context.Context, w http.ResponseWriter, rs *reqState) bool {
	if !rs.route.Charged {
		// Not charged, but the client still learns where its quota stands.
		if rs.key != "" {
			if q, err := h.cfg.Limiter.Status(ctx, rs.key); err == nil {
				rs.quota, rs.hasQuota = q, true
			}
		}
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
		h.writeDenied(w, rs, d)
		return false
	}
	return true
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

// admitRetry charges a retry; the retry transport calls it before each
// attempt after the first.
func (h *Handler) admitRetry(ctx context.Context, rs *reqState, deadline time.Time) (bool, error) {
	if !rs.route.Charged {
		return true, nil
	}
	d, err := h.cfg.Limiter.Admit(ctx, rs.key, deadline)
	rs.mu.Lock()
	defer rs.mu.Unlock()
	rs.waited += d.Waited
	if err != nil {
		return false, err
	}
	if rs.key != "" {
		rs.quota, rs.hasQuota = d.Result, true
	}
	return d.Allowed, nil
}

// answered learns from each upstream attempt: an upstream 20005 blocks the
// key for the rest of its window (or the upstream's Retry-After), and an
// upstream Retry-After on 503 pauses the key's queue.
func (h *Handler) answered(ctx context.Context, rs *reqState, a retry.Attempt) {
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
	case a.Status != 0 && fusioo.Unavailable(a.Status, a.Code):
		block = a.RetryAfter
	}
	rs.mu.Lock()
	// The last attempt reported is the one whose answer the client gets
	// (Final may be unset when the transport gave up after reporting it).
	rs.attempts, rs.code = a.N, a.Code
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
	if rs.hasQuota {
		h.setQuotaHeaders(resp.Header, rs.quota)
	}
	if resp.StatusCode == http.StatusTooManyRequests && resp.Header.Get("Retry-After") == "" {
		ra := rs.blockedFor
		if rs.hasQuota && rs.quota.ResetAfter > ra {
			ra = rs.quota.ResetAfter
		}
		resp.Header.Set("Retry-After", strconv.FormatInt(max(ceilSeconds(ra), 1), 10))
	}
	return nil
}

// errorHandler answers a request whose upstream exchange failed.
func (h *Handler) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	rs := stateFrom(r.Context())
	var mbe *http.MaxBytesError
	var ne net.Error
	switch {
	case errors.Is(context.Cause(r.Context()), ErrShutdown):
		h.writeError(w, rs, http.StatusServiceUnavailable, fusioo.CodeUnavailable, "The gateway is shutting down")
	case errors.As(err, &mbe):
		h.writeError(w, rs, http.StatusRequestEntityTooLarge, fusioo.CodeFileTooLarge,
			fmt.Sprintf("Request body exceeds the gateway's limit of %d bytes", mbe.Limit))
	case r.Context().Err() != nil:
		// The client went away: there is nobody to answer.
		rs.status = statusClientClosed
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		h.writeError(w, rs, http.StatusGatewayTimeout, fusioo.CodeInternal, "The upstream did not answer in time")
	default:
		h.log.Debug("upstream exchange failed", zap.Error(err))
		h.writeError(w, rs, http.StatusServiceUnavailable, fusioo.CodeUnavailable, "The upstream is unreachable")
	}
}

// writeDenied answers a request the quota refused: 429/20005 with an
// honest Retry-After.
func (h *Handler) writeDenied(w http.ResponseWriter, rs *reqState, d limiter.Decision) {
	if rs.hasQuota {
		h.setQuotaHeaders(w.Header(), d.Result)
	}
	w.Header().Set("Retry-After", strconv.FormatInt(max(ceilSeconds(d.RetryAfter), 1), 10))
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

// setQuotaHeaders writes the draft-ietf-httpapi-ratelimit-headers-11 fields
// and the older RateLimit-Limit/-Remaining/-Reset most clients read today.
// Reset is the seconds until Remaining next grows.
func (h *Handler) setQuotaHeaders(hd http.Header, q limiter.Result) {
	limit := h.limitStr
	if q.Limit != 0 && q.Limit != h.cfg.Limit {
		limit = strconv.Itoa(q.Limit)
	}
	rem := strconv.Itoa(q.Remaining)
	rst := strconv.FormatInt(ceilSeconds(q.ResetAfter), 10)
	// The names are spelled canonically (as Header.Set would store them,
	// and as they go on the wire), so no canonicalisation allocates, and
	// the five values share one backing array.
	v := make([]string, 5)
	v[0], v[1], v[2], v[3], v[4] = h.policy, h.rlPrefix+rem+";t="+rst, limit, rem, rst
	hd["Ratelimit-Policy"] = v[0:1:1]
	hd["Ratelimit"] = v[1:2:2]
	hd["Ratelimit-Limit"] = v[2:3:3]
	hd["Ratelimit-Remaining"] = v[3:4:4]
	hd["Ratelimit-Reset"] = v[4:5:5]
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
			zap.String("method", r.Method),
			zap.String("route", route),
			zap.Int("status", status),
			zap.Int("code", int(code)),
			zap.Int("attempts", attempts),
			zap.Duration("queue_wait", waited),
			zap.Duration("duration", d),
			zap.String("token", Fingerprint(rs.key)),
		)
	}
}

func ceilSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64(math.Ceil(d.Seconds()))
}

// bufferPool lends ReverseProxy its copy buffers, so streaming a response
// does not allocate 32 KB per request.
type bufferPool struct{}

var buffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (bufferPool) Get() []byte  { return *(buffers.Get().(*[]byte)) }
func (bufferPool) Put(b []byte) { buffers.Put(&b) }

type nopObserver struct{}

func (nopObserver) Request(string, string, int, time.Duration)       {}
func (nopObserver) Upstream(string, int, fusioo.Code, time.Duration) {}
func (nopObserver) UpstreamExhausted()                               {}
