// Package retry is the http.RoundTripper under the gateway's reverse proxy:
// it sends each upstream attempt itself and retries exactly those answers
// whose request cannot have been applied by Fusioo, or can be applied twice
// without harm (DESIGN.md, "Retry safety"):
//
//	answer                          reason           retried for
//	429 or code 20005               rate_limited     all methods, after Hooks.Admit (the quota) agrees
//	code 30054 (any error status)   concurrent       all methods, short jittered backoff; creates to
//	                                                 the App are then serialized per (key, App)
//	503 or code 10004               unavailable      all methods, backoff honoring Retry-After
//	504                             gateway_timeout  replay-safe routes only (see below)
//	error after the request was     reset, timeout   replay-safe routes only
//	written (reset, EOF, timeout)
//	error before anything was       dial             all methods
//	written (refused, dial, TLS)
//
// A route is replay-safe when its fusioo.Kind is KindRead (GET, HEAD,
// OPTIONS and Fusioo's read-only POST routes …/filter and …/count/filter),
// or KindWrite (PUT, DELETE) when Config.IdempotentWrites is set. Creates
// are never sent again once written; uploads (KindUpload) are streamed once
// and never sent again at all. Codes 10003 and 20007, and every other
// answer, are final.
//
// Every attempt is built here, charged to the quota through Hooks.Admit
// (the first attempt was admitted by the caller) and counted when it is
// written (httptrace): the Base transport is never allowed to replay a
// request on its own (see Transport.RoundTrip).
package retry

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptrace"
	"sync/atomic"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/fusioo-gateway/gateway/internal/fusioo"
)

// Defaults of the Config fields, as documented in DESIGN.md.
const (
	DefaultMaxAttempts       = 5
	DefaultBaseDelay         = 100 * time.Millisecond
	DefaultMaxDelay          = 5 * time.Second
	DefaultConcurrentDelay   = 50 * time.Millisecond
	DefaultBudgetRatio       = 0.2
	DefaultBudgetMinRetries  = 10
	DefaultBudgetWindow      = 10 * time.Second
	DefaultMaxBodyBytes      = 1 << 20
	DefaultMaxBufferBytes    = 64 << 20
	DefaultSerializeCooldown = 10 * time.Second
	DefaultMaxRetryAfter     = time.Hour
)

// Config configures a Transport. A zero field takes its default (the
// Default constants); where a field documents a negative value, that value
// turns the feature off.
type Config struct {
	// Base sends the attempts: an *http.Transport built by
	// NewBaseTransport, or the caller's. Nil means NewBaseTransport with
	// zero BaseOptions. Replay buffers go back to their pool when Base
	// reports httptrace's WroteRequest, as http.Transport does; with a
	// Base that does not, they are left to the garbage collector.
	Base http.RoundTripper
	// Routes is the route table whose Kind decides replay safety and which
	// creates are serialized. Required.
	Routes *fusioo.Routes

	// MaxAttempts bounds the attempts per request, the first included; 1
	// means no retries (and no body buffering).
	MaxAttempts int
	// BaseDelay and MaxDelay shape the exponential backoff: the n-th retry
	// (n from 0) waits a uniform draw in [0, min(MaxDelay, BaseDelay·2ⁿ)).
	// A negative BaseDelay means no backoff at all (tests). MaxDelay also
	// bounds an upstream Retry-After when the request has no deadline.
	BaseDelay, MaxDelay time.Duration
	// ConcurrentDelay is the base of the shorter backoff after a 30054; a
	// negative value means no backoff.
	ConcurrentDelay time.Duration

	// BudgetRatio is the share of recent requests (first attempts within
	// BudgetWindow) that retries may add, on top of BudgetMinRetries per
	// window, so an outage cannot become a retry storm. A negative ratio
	// means no budget (unlimited retries); 0 means the default 0.2, so a
	// configured ratio of 0 (the floor alone) is passed as
	// math.SmallestNonzeroFloat64.
	BudgetRatio float64
	// BudgetMinRetries is a floor of retries per window, so a quiet
	// gateway may still retry; negative means none.
	BudgetMinRetries int
	// BudgetWindow is what "recent" means for the budget.
	BudgetWindow time.Duration

	// MaxBodyBytes is the largest request body buffered for replay; a
	// larger one is streamed once and never retried. Negative buffers
	// nothing: every request with a body is sent once.
	MaxBodyBytes int64
	// MaxBufferBytes bounds the memory held by all replay buffers together;
	// a request that would exceed it is streamed once and never retried.
	MaxBufferBytes int64

	// IdempotentWrites lets PUT and DELETE (fusioo.KindWrite) be retried
	// after a 504, a reset or a timeout, RFC 9110 making them idempotent.
	// Its zero value is false (not retried); the gateway's configuration
	// defaults retry.idempotent_writes to true.
	IdempotentWrites bool

	// SerializeCooldown is how long, after a 30054 on a create to App A
	// with key K, creates to (K, A) are sent one at a time; every new 30054
	// starts it again. Negative disables serialization.
	SerializeCooldown time.Duration
	// MaxRetryAfter caps a parsed upstream Retry-After.
	MaxRetryAfter time.Duration

	// Clock times backoff, the budget window and serialization, and is
	// compared with Hooks.Deadline and the request context's deadline; nil
	// means the real clock.
	Clock clockwork.Clock
	// Rand returns a uniform draw in [0, 1) for backoff jitter; nil means
	// math/rand/v2.Float64. It must be safe for concurrent use.
	Rand func() float64
	// Observer counts retries and budget refusals; nil observes nothing.
	Observer Observer
}

// Transport is an http.RoundTripper that sends each request to Base, and
// sends it again when the answer proves the attempt was not applied (or
// applying it twice is harmless), within the attempt limit, the retry
// budget and the request's deadline. It is safe for concurrent use.
type Transport struct {
	base            http.RoundTripper
	routes          *fusioo.Routes
	maxAttempts     int
	baseDelay       time.Duration
	maxDelay        time.Duration
	concurrentDelay time.Duration
	maxBody         int64
	idemWrites      bool
	maxRetryAfter   time.Duration
	clock           clockwork.Clock
	rand            func() float64
	obs             Observer

	budget *budget
	bufs   *bufPool
	serial *serializer
	apps   map[*fusioo.Route]int // index of the {app} segment, for serialized creates

	// attempts and writes count, over the Transport's life, the attempts
	// handed to Base and the times a request's headers were written to a
	// connection. They are equal unless Base replayed a request on its
	// own, which tests assert never happens.
	attempts, writes atomic.Int64
}

// New returns a Transport configured by cfg, defaults filled in. It does no
// I/O and starts no goroutine. It panics if cfg.Routes is nil.
func New(cfg Config) *Transport {
	if cfg.Routes == nil {
		panic("retry: Config.Routes is nil")
	}
	t := &Transport{
		base:            cfg.Base,
		routes:          cfg.Routes,
		maxAttempts:     orDefault(cfg.MaxAttempts, DefaultMaxAttempts),
		baseDelay:       orDefault(cfg.BaseDelay, DefaultBaseDelay),
		maxDelay:        orDefault(cfg.MaxDelay, DefaultMaxDelay),
		concurrentDelay: orDefault(cfg.ConcurrentDelay, DefaultConcurrentDelay),
		maxBody:         orDefault(cfg.MaxBodyBytes, DefaultMaxBodyBytes),
		idemWrites:      cfg.IdempotentWrites,
		maxRetryAfter:   orDefault(cfg.MaxRetryAfter, DefaultMaxRetryAfter),
		clock:           cfg.Clock,
		rand:            cfg.Rand,
		obs:             cfg.Observer,
	}
	if t.base == nil {
		t.base = NewBaseTransport(BaseOptions{})
	}
	if t.maxAttempts < 1 {
		t.maxAttempts = 1
	}
	if t.clock == nil {
		t.clock = clockwork.NewRealClock()
	}
	if t.rand == nil {
		t.rand = rand.Float64
	}
	if t.obs == nil {
		t.obs = nopObserver{}
	}
	ratio := cfg.BudgetRatio
	if ratio == 0 {
		ratio = DefaultBudgetRatio
	}
	minRetries := orDefault(cfg.BudgetMinRetries, DefaultBudgetMinRetries)
	if minRetries < 0 {
		minRetries = 0
	}
	t.budget = newBudget(ratio, minRetries, orDefault(cfg.BudgetWindow, DefaultBudgetWindow), t.clock)
	t.bufs = newBufPool(t.maxBody, orDefault(cfg.MaxBufferBytes, DefaultMaxBufferBytes))
	t.serial = newSerializer(orDefault(cfg.SerializeCooldown, DefaultSerializeCooldown), t.clock)
	t.apps = appSegments(cfg.Routes)
	return t
}

func orDefault[T int | int64 | time.Duration](v, def T) T {
	if v == 0 {
		return def
	}
	return v
}

// RoundTrip sends req upstream and retries it as the package documentation
// describes. The context of req may carry *Hooks (WithHooks); without them
// every retry is admitted and no key is known.
//
// The first attempt is sent at once (the caller admitted it). Each retry
// waits its backoff, then Hooks.Admit, then, for a create to an App in its
// cooling period, that (key, App)'s turn. Hooks.Answered hears every
// attempt, before any of that, so the caller can learn from it. When the
// retries end, for whatever reason (a final answer, MaxAttempts, the
// budget, the deadline, Admit refusing, the client leaving), RoundTrip
// returns the last upstream answer unchanged (its body restored if it was
// read to find the Fusioo code), or the last transport error if there was
// no answer.
//
// No attempt can be replayed by Base on its own: each is a shallow copy of
// req with GetBody nil and a body that http.Transport does not consider
// replayable. A bodiless GET, HEAD, OPTIONS or TRACE gets a non-nil empty
// body sent unframed (TransferEncoding "identity"); a bodiless request of
// another method keeps a nil body, and its canonical Idempotency-Key or
// X-Idempotency-Key header entry is moved to the lower-case spelling,
// which the wire and Fusioo read the same (header names are
// case-insensitive) but http.Transport does not take as a licence to
// replay. The wire bytes are those of the request as given.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	h := HooksFrom(ctx)
	var key string
	if h != nil {
		key = h.Key
	}
	var rt *fusioo.Route
	if h != nil && t.routes.Owns(h.Route) {
		rt = h.Route
	} else {
		rt = t.routes.Match(req.Method, req.URL.Path)
	}
	replaySafe := rt.Kind == fusioo.KindRead || (rt.Kind == fusioo.KindWrite && t.idemWrites)
	app := t.appOf(rt, req.URL.Path)
	deadline := deadlineOf(ctx, h)
	t.budget.request()

	var b body
	if err := t.prepareBody(&b, req, rt, key); err != nil {
		return nil, err
	}
	defer b.release()

	var (
		resp *http.Response
		err  error
		turn = nop // gives back the (key, App) turn held, if any
		held bool
	)
	defer func() { turn() }()
	// A first attempt waits for its (key, App) turn too, but is sent
	// when the turn does not come in time: an honest answer beats none.
	turn, held, _ = t.serial.acquire(ctx, key, app, deadline)
	for n := 1; ; n++ {
		a := Attempt{N: n}
		tr := new(attemptTrace)
		start := t.clock.Now()
		resp, err = t.send(req, &b, tr)
		a.Duration = t.clock.Since(start)
		a.Written = tr.wrote.Load() > 0

		var (
			reason string
			ra     time.Duration
			raOK   bool
		)
		if err != nil {
			a.Err = err
			if ctx.Err() == nil {
				reason = classifyError(err, a.Written, replaySafe)
			}
		} else {
			a.Status = resp.StatusCode
			a.Code = peekCode(resp)
			if v := resp.Header.Get("Retry-After"); v != "" {
				ra, raOK = ParseRetryAfter(v, t.clock.Now(), t.maxRetryAfter)
				a.RetryAfter = ra
			}
			reason = classifyAnswer(resp.StatusCode, a.Code, replaySafe)
			if reason == ReasonConcurrent {
				t.serial.mark(key, app)
			}
		}

		wait, retry := t.plan(ctx, reason, n, ra, raOK, deadline, &b)
		if retry && !t.budget.take() {
			t.obs.BudgetExhausted()
			retry = false
		}
		a.Final = !retry
		h.answered(ctx, a)
		if !retry {
			return resp, wrapErr(err, n)
		}

		// The answer is kept until the retry is certain: when the wait,
		// Admit or the turn fails, the client gets it unchanged.
		if held && reason != ReasonConcurrent {
			turn()
			turn, held = nop, false
		}
		// A create that met 30054 in its turn keeps the turn through its
		// backoff: one create of the pair at a time probes the App's lock.
		if !t.sleep(ctx, wait) {
			return resp, wrapErr(err, n)
		}
		if ok, aerr := h.admit(ctx, deadline); !ok || aerr != nil {
			return resp, wrapErr(err, n)
		}
		if !held {
			var ok bool
			if turn, held, ok = t.serial.acquire(ctx, key, app, deadline); !ok {
				return resp, wrapErr(err, n)
			}
		}
		discard(resp)
		t.obs.Retry(reason)
	}
}

// wrapErr says how many attempts were made before err, when there were
// retries; a first attempt's error is returned as Base made it.
func wrapErr(err error, attempts int) error {
	if err == nil || attempts <= 1 {
		return err
	}
	return fmt.Errorf("retry: %d attempts: %w", attempts, err)
}

// plan decides whether the attempt that ended with reason (empty: final)
// is retried, and how long to wait first.
func (t *Transport) plan(ctx context.Context, reason string, n int, ra time.Duration, raOK bool, deadline time.Time, b *body) (time.Duration, bool) {
	if reason == "" || n >= t.maxAttempts || !b.replayable() || ctx.Err() != nil {
		return 0, false
	}
	left := time.Duration(1<<63 - 1)
	if !deadline.IsZero() {
		left = deadline.Sub(t.clock.Now())
		if left <= 0 {
			return 0, false
		}
	}
	var wait time.Duration
	switch {
	case raOK && (reason == ReasonRateLimited || reason == ReasonUnavailable):
		// The upstream said when: honor it, unless it is later than the
		// request may wait, in which case the client gets that answer,
		// Retry-After included, at once.
		limit := left
		if deadline.IsZero() {
			limit = t.maxDelay
		}
		if ra > limit {
			return 0, false
		}
		wait = ra
	case reason == ReasonConcurrent:
		wait = t.backoff(t.concurrentDelay, n-1)
	default:
		wait = t.backoff(t.baseDelay, n-1)
	}
	if wait >= left {
		return 0, false
	}
	return wait, true
}

// backoff returns the wait before retry number n (from 0): full jitter, a
// uniform draw below min(MaxDelay, base·2ⁿ), so retries spread out instead
// of arriving together, and never the bare cap.
func (t *Transport) backoff(base time.Duration, n int) time.Duration {
	if base <= 0 {
		return 0
	}
	ceil := t.maxDelay
	if n < 62 && base <= t.maxDelay>>n {
		ceil = base << n
	}
	r := t.rand()
	if r < 0 || r >= 1 {
		r = 0
	}
	return time.Duration(r * float64(ceil))
}

// sleep waits d on the Transport's clock, or until ctx is done; it reports
// whether the whole wait passed. It leaves no timer behind.
func (t *Transport) sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	tm := t.clock.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.Chan():
		return true
	case <-ctx.Done():
		return false
	}
}

// deadlineOf is the latest time a retry may be sent: the earlier of the
// hooks' deadline and the context's; zero when there is neither.
func deadlineOf(ctx context.Context, h *Hooks) time.Time {
	d, _ := ctx.Deadline()
	if h != nil && !h.Deadline.IsZero() && (d.IsZero() || h.Deadline.Before(d)) {
		d = h.Deadline
	}
	return d
}

// attemptTrace records, through httptrace, how far one attempt got.
type attemptTrace struct {
	ct    httptrace.ClientTrace // its hooks are this attemptTrace's methods
	t     *Transport
	wrote atomic.Int32 // headers written to a connection, times
	buf   *buffer      // the replay buffer the attempt reads, if any
	done  atomic.Bool  // buf released
}

func (tr *attemptTrace) wroteHeaders() {
	tr.wrote.Add(1)
	tr.t.writes.Add(1)
}

// wroteRequest runs when Base has finished writing the request (or failed
// to): it reads the body no more, so the attempt's buffer reference goes.
func (tr *attemptTrace) wroteRequest(httptrace.WroteRequestInfo) {
	if tr.buf != nil && tr.done.CompareAndSwap(false, true) {
		tr.buf.release()
	}
}

// send makes one attempt: a shallow copy of req with this attempt's body
// and a trace, handed to Base.
func (t *Transport) send(req *http.Request, b *body, tr *attemptTrace) (*http.Response, error) {
	tr.t = t
	tr.ct.WroteHeaders, tr.ct.WroteRequest = tr.wroteHeaders, tr.wroteRequest
	out := req.WithContext(httptrace.WithClientTrace(req.Context(), &tr.ct))
	out.GetBody = nil
	out.Body, out.ContentLength, tr.buf = b.next()
	switch b.mode {
	case bodyEmpty:
		out.TransferEncoding = identity
	case bodyBuffered:
		// The length is known now: send it, even if the client's body
		// came chunked.
		out.TransferEncoding = nil
	}
	if b.header != nil {
		out.Header = b.header
	}
	t.attempts.Add(1)
	return t.base.RoundTrip(out)
}

// discard drains a bounded part of a retried answer's body, so its
// connection can be reused, and closes it.
func discard(resp *http.Response) {
	if resp == nil || resp.Body == nil {
		return
	}
	_, _ = io.CopyN(io.Discard, resp.Body, maxDrain)
	_ = resp.Body.Close()
}

// maxDrain bounds what discard reads: past it, closing the connection is
// cheaper than reading on.
const maxDrain = 64 << 10
