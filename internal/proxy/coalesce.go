package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"net/http"

	"github.com/fusioo-gateway/gateway/internal/flight"
)

// answerHeaders are the request headers that can change a read's answer,
// and so part of what makes two reads the same (with the token, method,
// path and query, and the body): Fusioo's API reads Authorization and
// Content-Type; content negotiation, ranges and conditions are HTTP's.
// Other headers (User-Agent, tracing, forwarding) do not make a read
// another.
var answerHeaders = [...]string{
	"Accept", "Accept-Encoding", "Accept-Language", "Content-Type", "Range",
	"If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since", "If-Range",
}

// readKey names a read of the token of key: what coalescing shares. A body
// (the POST search routes') is read whole here (the gateway's body limits
// and timeout apply) and put back for the exchange.
func readKey(r *http.Request, key string) (flight.Key, error) {
	var buf [512]byte
	b := appendPart(buf[:0], key)
	b = appendPart(b, r.Method)
	b = appendPart(b, r.URL.EscapedPath())
	b = appendPart(b, r.URL.RawQuery)
	for _, name := range answerHeaders {
		vals := r.Header[name]
		b = binary.AppendUvarint(b, uint64(len(vals)))
		for _, v := range vals {
			b = appendPart(b, v)
		}
	}
	if r.Body != nil && r.Body != http.NoBody {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return flight.Key{}, err
		}
		sum := sha256.Sum256(body)
		b = append(b, sum[:]...)
		r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
	}
	return sha256.Sum256(b), nil
}

// appendPart appends s, length first, so that no two lists of parts
// digest alike.
func appendPart(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// serveShared answers a read that identical reads of the same token in
// flight share. The first runs the exchange (admission, attempts, the
// answer) in its own goroutine, under the flight's context, answering its
// client through a writer that records the answer; the others stream the
// recording to theirs. Neither the first client nor any other leaving
// cancels the exchange while one still waits. The others cost no attempt
// and no quota: their RateLimit headers are the first one's, the quota
// left as it stands.
func (h *Handler) serveShared(w http.ResponseWriter, r *http.Request, rs *reqState) {
	key, err := readKey(r, rs.key)
	if err != nil {
		h.errorHandler(w, r, err)
		return
	}
	f, leader := h.flights.Join(h.ctx, key)
	if leader {
		h.lead(f, w, r, rs)
		return
	}
	rs.coalesced = true
	h.obs.Coalesced(rs.route.Name())
	// The client's leaving ends its wait; the end of the shutdown grace
	// period (which cancels r's context too) does not: it cancels the
	// exchange, whose 503 or 504 this client is then told.
	ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
	defer cancel()
	stop := context.AfterFunc(r.Context(), func() {
		if !errors.Is(context.Cause(r.Context()), ErrShutdown) {
			cancel()
		}
	})
	defer stop()
	status, err := f.Serve(ctx, w, nil)
	rs.mu.Lock()
	rs.status = status
	if err != nil && ctx.Err() != nil {
		rs.status = statusClientClosed
	}
	rs.mu.Unlock()
	if errors.Is(err, flight.ErrAborted) || errors.Is(err, flight.ErrLagged) {
		// The shared answer was cut (or this client fell too far behind
		// it): cut this one too, as ReverseProxy cuts a client whose
		// upstream body failed.
		panic(http.ErrAbortHandler)
	}
}

// lead runs a shared read's exchange into its flight, answering w.
func (h *Handler) lead(f *flight.Flight, w http.ResponseWriter, r *http.Request, rs *reqState) {
	gone := false
	stop := context.AfterFunc(r.Context(), func() {
		if !errors.Is(context.Cause(r.Context()), ErrShutdown) {
			f.LeaderLeft()
		}
	})
	complete := false
	defer func() {
		stop()
		f.Finish(complete)
		if gone {
			rs.mu.Lock()
			rs.status = statusClientClosed
			rs.mu.Unlock()
		}
	}()
	tw := f.Writer(w)
	rs.w = tw
	h.forward(tw, r.WithContext(context.WithValue(f.Context(), stateKey{}, rs)), rs)
	complete = true
	gone = r.Context().Err() != nil && !errors.Is(context.Cause(r.Context()), ErrShutdown)
}
