package retry

import (
	"context"
	"time"

	"github.com/fusioo-gateway/gateway/internal/fusioo"
)

// Attempt describes the outcome of one upstream attempt, as passed to
// Hooks.Answered.
type Attempt struct {
	N          int           // 1 for the first attempt
	Status     int           // HTTP status; 0 when no response arrived
	Code       fusioo.Code   // Fusioo code read from an error body (status >= 400); 0 if none
	RetryAfter time.Duration // the upstream's Retry-After, parsed and capped; 0 if absent
	Err        error         // the transport error, when no response arrived
	Written    bool          // the request was written to the connection (httptrace)
	Duration   time.Duration // from sending the attempt to its answer (headers) or error
	Final      bool          // the transport decided not to retry: this answer goes to the client (see Hooks.Answered)
}

// Hooks connect one request's attempts to the caller (the proxy), the way
// httptrace.ClientTrace does: the transport stays ignorant of quotas,
// tokens and metrics, and the caller decides what an attempt costs.
type Hooks struct {
	// Key identifies the quota the request is charged to (a hash, never a
	// token); "" for requests without a token. Creates are serialized per
	// (Key, App) after 30054.
	Key string
	// Deadline is the latest time a retry may be sent: the request's
	// arrival plus queue.max_wait, or the client's deadline if earlier.
	Deadline time.Time
	// Admit charges one more attempt (a retry, never the first attempt,
	// which the caller admitted) to the quota, waiting until it is admitted
	// or deadline passes. It returns false when the attempt may not be sent;
	// the client then gets the last upstream answer. Nil admits everything.
	Admit func(ctx context.Context, deadline time.Time) (bool, error)
	// Answered is called once per attempt, in order, when its outcome is
	// known, before the transport waits or calls Admit for a retry. Nil
	// ignores them. An attempt reported with Final false is followed by
	// another unless the retry is abandoned after the call (Admit refuses,
	// the client leaves during the backoff, or a serialized create's turn
	// does not come before the deadline): the client then gets that
	// attempt's answer, and no Final attempt is reported.
	Answered func(Attempt)
	// Callbacks, when non-nil, stands in for Admit and Answered where
	// those are nil: a caller keeping each request's state in one value
	// implements it there, instead of allocating two closures per request.
	Callbacks Callbacks
	// Route, when it is a route of the Transport's table, is the one the
	// request's method and path match there, so the Transport need not
	// match them again; the caller sets it only when the request's path is
	// the one it matched (the upstream URL adds no path prefix). A route
	// of another table is ignored.
	Route *fusioo.Route
}

// Callbacks is Hooks.Admit and Hooks.Answered as the methods of one value.
type Callbacks interface {
	// AdmitRetry does what Hooks.Admit does.
	AdmitRetry(ctx context.Context, deadline time.Time) (bool, error)
	// Answered does what Hooks.Answered does; ctx is the request's.
	Answered(ctx context.Context, a Attempt)
}

// admit asks h (nil: no hooks) whether a retry may be sent.
func (h *Hooks) admit(ctx context.Context, deadline time.Time) (bool, error) {
	switch {
	case h == nil:
	case h.Admit != nil:
		return h.Admit(ctx, deadline)
	case h.Callbacks != nil:
		return h.Callbacks.AdmitRetry(ctx, deadline)
	}
	return true, nil
}

// answered reports a to h (nil: no hooks).
func (h *Hooks) answered(ctx context.Context, a Attempt) {
	switch {
	case h == nil:
	case h.Answered != nil:
		h.Answered(a)
	case h.Callbacks != nil:
		h.Callbacks.Answered(ctx, a)
	}
}

type hooksKey struct{}

// WithHooks returns a context carrying h for the Transport.
func WithHooks(ctx context.Context, h *Hooks) context.Context {
	return context.WithValue(ctx, hooksKey{}, h)
}

// HooksFrom returns the hooks ctx carries, or nil.
func HooksFrom(ctx context.Context) *Hooks {
	h, _ := ctx.Value(hooksKey{}).(*Hooks)
	return h
}
