// Package retry is the gateway's retry policy: which upstream answers may
// be retried, after what wait, within what budget, with what body. It
// decides and keeps the state a decision needs; it sends nothing and calls
// nobody. internal/proxy runs the attempt loop and drives one Exchange per
// request (DESIGN.md, "Retry safety"):
//
//	answer                          reason           retried for
//	429 or code 20005               rate_limited     all methods, once the caller's quota agrees
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
// Every attempt's request is built by Exchange.Request and traced
// (httptrace), so the Exchange knows whether it was written, and no
// transport below can replay it on its own (see Exchange.Request).
package retry

import (
	"context"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptrace"
	"sync/atomic"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/fusioo-gateway/gateway/internal/fusioo"
)

// Config configures a Policy.
//
// Zero values follow the convention of every Config and Options struct
// of retry, limiter, quota and proxy (docs/design.md): a zero field means
// none (the feature off, as the field says), never a hidden default; nil
// interfaces mean what the field says; Required fields are refused.
//
// DefaultConfig returns this package's defaults.
type Config struct {
	// Routes is the route table whose Kind decides replay safety and which
	// creates are serialized. Required: New panics without it.
	Routes *fusioo.Routes

	// MaxAttempts bounds the attempts per request, the first included; 0
	// or 1 means one attempt: no retries (and no body buffering).
	MaxAttempts int
	// BaseDelay and MaxDelay shape the exponential backoff: the n-th retry
	// (n from 0) waits a uniform draw in [0, min(MaxDelay, BaseDelay·2ⁿ)).
	// MaxDelay also bounds an upstream Retry-After when the request has no
	// deadline. BaseDelay 0: no backoff; MaxDelay 0: no wait at all (no
	// backoff, and no Retry-After waited for without a deadline).
	BaseDelay, MaxDelay time.Duration
	// ConcurrentDelay is the base of the shorter backoff after a 30054; 0:
	// no backoff.
	ConcurrentDelay time.Duration

	// BudgetRatio is the share of recent requests (first attempts within
	// BudgetWindow) that retries may add, on top of BudgetMinRetries per
	// window, so an outage cannot become a retry storm; 0: no share (the
	// floor alone).
	BudgetRatio float64
	// BudgetMinRetries is a floor of retries per window, so a quiet
	// gateway may still retry; 0: no floor.
	BudgetMinRetries int
	// BudgetWindow is what "recent" means for the budget; 0: no budget at
	// all (retries are bounded by MaxAttempts alone).
	BudgetWindow time.Duration

	// MaxBodyBytes is the largest request body buffered for replay; a
	// larger one is streamed once and never retried. 0 buffers nothing:
	// every request with a body is sent once.
	MaxBodyBytes int64
	// MaxBufferBytes bounds the memory held by all replay buffers together;
	// a request that would exceed it is streamed once and never retried.
	// 0: no buffer memory (as MaxBodyBytes 0).
	MaxBufferBytes int64

	// IdempotentWrites lets PUT and DELETE (fusioo.KindWrite) be retried
	// after a 504, a reset or a timeout, RFC 9110 making them idempotent.
	// false: not retried (DefaultConfig's too); the gateway's configuration
	// defaults retry.idempotent_writes to true.
	IdempotentWrites bool

	// SerializeCooldown is how long, after a 30054 on a create to App A
	// with key K, creates to (K, A) are sent one at a time; every new 30054
	// starts it again. 0: no serialization.
	SerializeCooldown time.Duration
	// MaxRetryAfter caps a parsed upstream Retry-After; 0: no cap.
	MaxRetryAfter time.Duration

	// Clock times the budget window and serialization, dates a
	// Retry-After, and is compared with each Exchange's deadline; nil
	// means the real clock.
	Clock clockwork.Clock
	// Rand returns a uniform draw in [0, 1) for backoff jitter; nil means
	// math/rand/v2.Float64. It must be safe for concurrent use.
	Rand func() float64
	// Observer counts retries and budget refusals; nil observes nothing.
	Observer Observer
}

// DefaultConfig returns the policy's defaults, as DESIGN.md documents
// them: every field but Routes (required) and those whose zero is the
// default (IdempotentWrites, Clock, Rand, Observer).
func DefaultConfig() Config {
	return Config{
		MaxAttempts:       5,
		BaseDelay:         100 * time.Millisecond,
		MaxDelay:          5 * time.Second,
		ConcurrentDelay:   50 * time.Millisecond,
		BudgetRatio:       0.2,
		BudgetMinRetries:  10,
		BudgetWindow:      10 * time.Second,
		MaxBodyBytes:      1 << 20,
		MaxBufferBytes:    64 << 20,
		SerializeCooldown: 10 * time.Second,
		MaxRetryAfter:     time.Hour,
	}
}

// Policy decides, for every request of a gateway, whether an attempt's
// answer is retried and how long to wait first; it holds what is shared
// across requests: the retry budget, the replay buffers and the (key, App)
// serialization of creates. It is safe for concurrent use.
type Policy struct {
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

	// attempts and writes count, over the Policy's life, the attempts
	// built by Exchange.Request and the times one's headers were written
	// to a connection. They are equal unless a transport replayed a
	// request on its own, which tests assert never happens.
	attempts, writes atomic.Int64
}

// New returns a Policy configured by cfg, taken as it is (see Config for
// what a zero field means). It does no I/O and starts no goroutine. It
// panics if cfg.Routes is nil.
func New(cfg Config) *Policy {
	if cfg.Routes == nil {
		panic("retry: Config.Routes is nil")
	}
	t := &Policy{
		routes:          cfg.Routes,
		maxAttempts:     max(cfg.MaxAttempts, 1),
		baseDelay:       cfg.BaseDelay,
		maxDelay:        max(cfg.MaxDelay, 0),
		concurrentDelay: cfg.ConcurrentDelay,
		maxBody:         cfg.MaxBodyBytes,
		idemWrites:      cfg.IdempotentWrites,
		maxRetryAfter:   cfg.MaxRetryAfter,
		clock:           cfg.Clock,
		rand:            cfg.Rand,
		obs:             cfg.Observer,
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
	t.budget = newBudget(max(cfg.BudgetRatio, 0), max(cfg.BudgetMinRetries, 0), cfg.BudgetWindow, t.clock)
	t.bufs = newBufPool(t.maxBody, max(cfg.MaxBufferBytes, 0))
	t.serial = newSerializer(cfg.SerializeCooldown, t.clock)
	return t
}

// plan decides whether the attempt that ended with reason (empty: final)
// is retried, and how long to wait first.
func (t *Policy) plan(ctx context.Context, reason string, n int, ra time.Duration, raOK bool, deadline time.Time, b *body) (time.Duration, bool) {
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
func (t *Policy) backoff(base time.Duration, n int) time.Duration {
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

// attemptTrace records, through httptrace, how far one attempt got.
type attemptTrace struct {
	ct    httptrace.ClientTrace // its hooks are this attemptTrace's methods
	t     *Policy
	wrote atomic.Int32 // headers written to a connection, times
	buf   *buffer      // the replay buffer the attempt reads, if any
	done  atomic.Bool  // buf released
}

func (tr *attemptTrace) wroteHeaders() {
	tr.wrote.Add(1)
	tr.t.writes.Add(1)
}

// wroteRequest runs when the transport has finished writing the request (or failed
// to): it reads the body no more, so the attempt's buffer reference goes.
func (tr *attemptTrace) wroteRequest(httptrace.WroteRequestInfo) {
	if tr.buf != nil && tr.done.CompareAndSwap(false, true) {
		tr.buf.release()
	}
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
