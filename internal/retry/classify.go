package retry

import (
	"errors"
	"net/http"
	"os"

	"github.com/fusioo-gateway/gateway/internal/fusioo"
)

// Reasons a retry is made: the bounded label set of retries_total.
const (
	ReasonRateLimited    = "rate_limited"    // 429 or code 20005
	ReasonConcurrent     = "concurrent"      // code 30054
	ReasonUnavailable    = "unavailable"     // 503 or code 10004
	ReasonGatewayTimeout = "gateway_timeout" // 504
	ReasonTimeout        = "timeout"         // no answer in time after the request was written
	ReasonReset          = "reset"           // connection broken after the request was written
	ReasonDial           = "dial"            // failed before anything was written
)

// Reasons returns every reason label, for metrics that pre-initialise them.
func Reasons() []string {
	return []string{ReasonRateLimited, ReasonConcurrent, ReasonUnavailable, ReasonGatewayTimeout, ReasonTimeout, ReasonReset, ReasonDial}
}

// Observer is told what the Policy decides beyond single attempts.
// internal/metrics implements it; its methods must be safe for concurrent
// use and must not block.
type Observer interface {
	// Retry is called for each retry sent, with one of the Reason values.
	Retry(reason string)
	// BudgetExhausted is called when a retry was due but the retry budget
	// was spent, so the upstream answer went to the client.
	BudgetExhausted()
}

type nopObserver struct{}

func (nopObserver) Retry(string)     {}
func (nopObserver) BudgetExhausted() {}

// classifyAnswer returns the reason an upstream answer may be retried for,
// or "" when it is final. replaySafe says whether the route may be sent
// again after an attempt whose outcome is unknown.
func classifyAnswer(status int, code fusioo.Code, replaySafe bool) string {
	if status < 400 {
		return ""
	}
	switch {
	case code == fusioo.CodeUnauthorized || code == fusioo.CodeInvalidUser:
		// Final whatever the status: a revoked token or a Lite user will
		// not get better by asking again.
		return ""
	case fusioo.RateLimited(status, code):
		return ReasonRateLimited
	case code == fusioo.CodeConcurrentRequests:
		return ReasonConcurrent
	case fusioo.Unavailable(status, code):
		return ReasonUnavailable
	case status == http.StatusGatewayTimeout && replaySafe:
		return ReasonGatewayTimeout
	}
	return ""
}

// classifyError returns the reason a transport error may be retried for,
// or "" when it is final. written says whether the request's headers
// reached a connection: before that, Fusioo cannot have seen the request,
// so any method may be sent again; after it, only replay-safe routes.
// The caller has already excluded errors of a done context.
func classifyError(err error, written, replaySafe bool) string {
	if !written {
		return ReasonDial
	}
	if !replaySafe {
		return ""
	}
	if isTimeout(err) {
		return ReasonTimeout
	}
	return ReasonReset
}

func isTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}
