package retry

import (
	"context"
	"net/http"
	"net/http/httptrace"
	"time"

	"github.com/fusioo-gateway/gateway/internal/fusioo"
)

// Attempt is the outcome of one upstream attempt, as Exchange.Outcome
// classifies it.
type Attempt struct {
	N          int           // 1 for the first attempt
	Status     int           // HTTP status; 0 when no response arrived
	Code       fusioo.Code   // Fusioo code read from an error body (status >= 400); 0 if none
	RetryAfter time.Duration // the upstream's Retry-After, parsed and capped; 0 if absent
	Err        error         // the transport error, when no response arrived
	Written    bool          // the request was written to the connection (httptrace)
	Duration   time.Duration // from sending the attempt to its answer (headers) or error
	// Reason is why the attempt may be retried (one of the Reason
	// values), or "" when its answer is final whatever the budget.
	Reason string

	raOK bool // RetryAfter was given and parsed
}

// Exchange is one client request's attempts: the body they replay, the
// (key, App) turn a serialized create holds, and the count that bounds
// them. The caller's loop asks it for each attempt's request, sends it,
// hands the outcome back and asks whether to go on:
//
//	x.Turn(ctx) // the first attempt is sent even if its turn does not come
//	// charge the first attempt to the quota; x.Bind(the outbound request)
//	for {
//		resp, err := base.RoundTrip(x.Request())
//		a := x.Outcome(resp, err, elapsed)
//		wait, again := x.Plan(ctx, a)
//		if !again { return resp, err }
//		// wait, charge the retry to the quota, then:
//		if !x.Turn(ctx) { return resp, err }
//		x.Retrying(resp, a)
//	}
//
// An Exchange is used by one goroutine; Close must be called when the
// request's answer has been sent on.
type Exchange struct {
	p          *Policy
	req        *http.Request
	key, app   string
	replaySafe bool
	deadline   time.Time
	body       body
	n          int    // attempts built
	turn       func() // gives back the (key, App) turn held, if any
	held       bool
	last       *attemptTrace // of the last Request
}

// Start begins the exchange of req, charged to the quota key (a hash,
// never a token; "" for none). rt is req's route in the Policy's table, or
// nil to have it matched here. No retry is planned past deadline (zero:
// only the request context's deadline bounds them). Start counts the
// request for the retry budget and, when the request may be retried,
// reads its body into a replay buffer; on error the body is closed.
func (p *Policy) Start(req *http.Request, key string, rt *fusioo.Route, deadline time.Time) (*Exchange, error) {
	if rt == nil || !p.routes.Owns(rt) {
		rt = p.routes.Match(req.Method, req.URL.Path)
	}
	if d, ok := req.Context().Deadline(); ok && (deadline.IsZero() || d.Before(deadline)) {
		deadline = d
	}
	x := &Exchange{
		p: p, req: req, key: key, deadline: deadline, turn: nop,
		replaySafe: rt.Kind == fusioo.KindRead || (rt.Kind == fusioo.KindWrite && p.idemWrites),
		app:        appOf(rt, req.URL.Path),
	}
	p.budget.request()
	if err := p.prepareBody(&x.body, req, rt, key); err != nil {
		return nil, err
	}
	return x, nil
}

// Bind makes req, the client's request as rewritten for the upstream
// (same method, path and body), the one each attempt copies.
func (x *Exchange) Bind(req *http.Request) { x.req = req }

// Turn waits, for a create to an App in its cooling period after a 30054,
// for the (key, App) turn, unless the Exchange holds it already; other
// requests pass at once. It reports false when the turn did not come
// before the deadline or the end of ctx.
func (x *Exchange) Turn(ctx context.Context) bool {
	if x.held {
		return true
	}
	var ok bool
	x.turn, x.held, ok = x.p.serial.acquire(ctx, x.key, x.app, x.deadline)
	return ok
}

// Request returns the next attempt's request: a shallow copy of the
// client's with the attempt's body and a trace that tells the Exchange
// when it was written. No transport can replay it on its own: GetBody is
// nil and the body is not one http.Transport considers replayable. A
// bodiless GET, HEAD, OPTIONS or TRACE gets a non-nil empty body sent
// unframed (TransferEncoding "identity"); a bodiless request of another
// method keeps a nil body, and its canonical Idempotency-Key or
// X-Idempotency-Key header entry is moved to the lower-case spelling,
// which the wire and Fusioo read the same (header names are
// case-insensitive) but http.Transport does not take as a licence to
// replay. The wire bytes are those of the request as given.
func (x *Exchange) Request() *http.Request {
	x.n++
	tr := &attemptTrace{t: x.p}
	tr.ct.WroteHeaders, tr.ct.WroteRequest = tr.wroteHeaders, tr.wroteRequest
	out := x.req.WithContext(httptrace.WithClientTrace(x.req.Context(), &tr.ct))
	out.GetBody = nil
	out.Body, out.ContentLength, tr.buf = x.body.next()
	switch x.body.mode {
	case bodyEmpty:
		out.TransferEncoding = identity
	case bodyBuffered:
		// The length is known now: send it, even if the client's body
		// came chunked.
		out.TransferEncoding = nil
	}
	if x.body.header != nil {
		out.Header = x.body.header
	}
	x.last = tr
	x.p.attempts.Add(1)
	return out
}

// Outcome classifies what the last Request's attempt got: resp or err
// from the transport, d its duration. An error answer's body is peeked for
// its Fusioo code (at most fusioo.MaxErrorBody bytes) and restored, so the
// caller passes resp on unchanged.
func (x *Exchange) Outcome(resp *http.Response, err error, d time.Duration) Attempt {
	a := Attempt{N: x.n, Duration: d, Written: x.last != nil && x.last.wrote.Load() > 0}
	if err != nil {
		a.Err = err
		if x.req.Context().Err() == nil {
			a.Reason = classifyError(err, a.Written, x.replaySafe)
		}
		return a
	}
	a.Status = resp.StatusCode
	a.Code = fusioo.PeekCode(resp)
	if v := resp.Header.Get("Retry-After"); v != "" {
		a.RetryAfter, a.raOK = ParseRetryAfter(v, x.p.clock.Now(), x.p.maxRetryAfter)
	}
	a.Reason = classifyAnswer(resp.StatusCode, a.Code, x.replaySafe)
	if a.Reason == ReasonConcurrent {
		x.p.serial.mark(x.key, x.app)
	}
	return a
}

// Plan decides whether the attempt a (from Outcome) is retried, and how
// long to wait first, within MaxAttempts, the retry budget, the deadline
// and a replayable body. When it is, a turn held for a reason other than
// 30054 is given back (a create that met 30054 in its turn keeps it
// through its backoff: one create of the pair at a time probes the App's
// lock), and the caller waits, charges the retry to the quota and calls
// Turn; when the retry is abandoned after that, the client gets a's
// answer.
func (x *Exchange) Plan(ctx context.Context, a Attempt) (wait time.Duration, retry bool) {
	wait, retry = x.p.plan(ctx, a.Reason, a.N, a.RetryAfter, a.raOK, x.deadline, &x.body)
	if retry && !x.p.budget.take() {
		x.p.obs.BudgetExhausted()
		retry = false
	}
	if retry && x.held && a.Reason != ReasonConcurrent {
		x.turn()
		x.turn, x.held = nop, false
	}
	return wait, retry
}

// Retrying is called when the retry of a is certain: a's answer is
// drained and closed, and the retry counted.
func (x *Exchange) Retrying(resp *http.Response, a Attempt) {
	discard(resp)
	x.p.obs.Retry(a.Reason)
}

// Close gives back the turn held and the replay buffer.
func (x *Exchange) Close() {
	x.turn()
	x.turn, x.held = nop, false
	x.body.release()
}
