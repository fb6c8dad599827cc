package retry

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"net/http"
	"os"
	"strings"

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

// peekCode returns the Fusioo code of an error answer (status >= 400), read
// from at most fusioo.MaxErrorBody bytes of its body, and replaces
// resp.Body with one that yields exactly the upstream bytes again and
// closes the original. Other answers are left untouched.
//
// It does what fusioo.PeekCode does, and keeps the raw bytes so that a
// gzip-encoded body (the client asked for it, and the proxy passes
// Accept-Encoding through) can be decoded for its code too.
func peekCode(resp *http.Response) fusioo.Code {
	if resp.StatusCode < 400 || resp.Body == nil || resp.Body == http.NoBody {
		return 0
	}
	buf := make([]byte, fusioo.MaxErrorBody)
	n, err := io.ReadFull(resp.Body, buf)
	buf = buf[:n]
	var rest io.Reader
	switch err {
	case io.EOF, io.ErrUnexpectedEOF:
		// The whole body was read: the connection is free already.
	case nil:
		rest = resp.Body
	default:
		rest = errReader{err}
	}
	resp.Body = &peekedBody{data: buf, rest: rest, orig: resp.Body}
	return codeOf(buf, resp.Header.Get("Content-Encoding"))
}

// codeOf returns the Fusioo code in the first bytes of an error body with
// the given Content-Encoding; 0 when there is none to be read.
func codeOf(b []byte, encoding string) fusioo.Code {
	switch strings.ToLower(strings.TrimSpace(encoding)) {
	case "", "identity":
		return fusioo.ParseCode(b)
	case "gzip", "x-gzip":
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			return 0
		}
		plain := make([]byte, fusioo.MaxErrorBody)
		n, _ := io.ReadFull(zr, plain)
		return fusioo.ParseCode(plain[:n])
	}
	return 0
}

// peekedBody is an answer's body after peekCode: the bytes read, then the
// rest of the original; Close closes the original.
type peekedBody struct {
	data []byte
	rest io.Reader
	orig io.Closer
}

func (b *peekedBody) Read(p []byte) (int, error) {
	if len(b.data) > 0 {
		n := copy(p, b.data)
		b.data = b.data[n:]
		return n, nil
	}
	if b.rest == nil {
		return 0, io.EOF
	}
	return b.rest.Read(p)
}

func (b *peekedBody) Close() error { return b.orig.Close() }

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }
