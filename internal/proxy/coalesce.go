package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/fusioo-gateway/gateway/internal/cache"
	"github.com/fusioo-gateway/gateway/internal/flight"
	"github.com/fusioo-gateway/gateway/internal/fusioo"
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

// keyable reports whether r's body is small enough to read whole for its
// key (readKey): none, or a declared length within coalesce's buffer. A
// larger or chunked body (a search POST can be up to server.max_body_bytes)
// is streamed as any request's, not shared, so that shared reads never
// hold more than a buffer's worth of a client's body.
func (h *Handler) keyable(r *http.Request) bool {
	if r.Body == nil || r.Body == http.NoBody {
		return true
	}
	return r.ContentLength >= 0 && r.ContentLength <= h.flights.Buffer()
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
//
// cached says the route has a [[cache]] rule (ServeHTTP looked it up).
func (h *Handler) serveShared(w http.ResponseWriter, r *http.Request, rs *reqState, cached bool) {
	key, err := readKey(r, rs.key)
	if err != nil {
		h.errorHandler(w, withState(r, rs), err)
		return
	}
	store := false
	var since uint64
	if cached {
		cc := requestCacheControl(r.Header)
		switch {
		case cc.noStore || cc.noCache:
			h.obs.CacheRequest(rs.route.Name(), "bypass")
		default:
			if e, age, ok := h.cfg.Cache.Get(key, h.clock.Now(), cc.maxAge); ok {
				h.obs.CacheRequest(rs.route.Name(), "hit")
				h.serveCached(w, r, rs, e, age)
				return
			}
			h.obs.CacheRequest(rs.route.Name(), "miss")
		}
		store, since = !cc.noStore, h.cfg.Cache.Generation()
	}
	var f *flight.Flight
	leader := true
	if h.cfg.Coalesce {
		f, leader = h.flights.Join(h.flightCtx, key)
	} else {
		f = h.flights.Solo(h.flightCtx)
	}
	if leader {
		if h.lead(f, w, r, rs, store) && store {
			h.store(f, r, rs, key, since)
		}
		return
	}
	h.follow(f, w, r, rs)
}

// follow answers w from the flight f another request leads. It is apart
// from serveShared, whose leader calls the quota store: a frame on that way
// is stack the handler goroutine keeps (see limiter.Limiter.ask).
func (h *Handler) follow(f *flight.Flight, w http.ResponseWriter, r *http.Request, rs *reqState) {
	rs.coalesced = true
	h.obs.Coalesced(rs.route.Name())
	// The client's leaving ends its wait; the end of the shutdown grace
	// period (which cancels r's context too) does not: it cancels the
	// exchange, whose 503 or 504 this client is then told.
	ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
	defer cancel()
	stop := context.AfterFunc(r.Context(), func() {
		if clientLeft(r.Context()) {
			cancel()
		}
	})
	defer stop()
	status, err := f.Serve(ctx, w, nil)
	var code fusioo.Code
	if status >= 400 {
		if b, ok := f.Body(); ok {
			// The shared answer's code, as the first request's log
			// tells it.
			code = fusioo.CodeOf(status, f.SentHeader(), b)
		}
	}
	rs.mu.Lock()
	rs.status, rs.code = status, code
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

// clientLeft reports whether ctx, a client request's, ended because the
// client went away, not because the shutdown's grace period ran out
// (which cancels it too, with cause ErrShutdown): a client that left is
// logged 499 and stops waiting for a shared answer, while a shutdown
// cancels the shared exchange itself, whose answer is then told.
func clientLeft(ctx context.Context) bool {
	return ctx.Err() != nil && !errors.Is(context.Cause(ctx), ErrShutdown)
}

// lead runs a shared read's exchange into its flight, answering w; it
// reports whether the exchange ended with a whole answer. keep: the
// answer is to be stored, so recorded even when nobody shares it.
func (h *Handler) lead(f *flight.Flight, w http.ResponseWriter, r *http.Request, rs *reqState, keep bool) bool {
	stop := context.AfterFunc(r.Context(), func() {
		if clientLeft(r.Context()) {
			f.LeaderLeft()
		}
	})
	complete := false
	defer func() {
		stop()
		f.Finish(complete)
		// Here, not after forward: also when ReverseProxy aborts (a
		// panic, below), the log says the client left.
		if clientLeft(r.Context()) {
			rs.mu.Lock()
			rs.status = statusClientClosed
			rs.mu.Unlock()
		}
	}()
	tw := f.Writer(w, keep)
	rs.w = tw
	ctx := contextWithState(f.Context(), rs)
	if srv := r.Context().Value(http.ServerContextKey); srv != nil {
		// ReverseProxy cuts a client whose answer's body failed
		// (http.ErrAbortHandler) only under a server, which it finds in
		// the request's context; the flight's has none of the client's
		// values. Without it, a cut body ended as if whole: a truncated
		// answer, Finish(true), and the other callers told it was all.
		ctx = context.WithValue(ctx, http.ServerContextKey, srv)
	}
	h.forward(tw, r.WithContext(ctx), rs)
	complete = true
	return true
}

// store caches a read's answer when it is a whole 200 the upstream let
// be stored, asked for at the cache's generation since.
func (h *Handler) store(f *flight.Flight, r *http.Request, rs *reqState, key flight.Key, since uint64) {
	body, ok := f.Body()
	hd := f.SentHeader()
	if !ok || f.Status() != http.StatusOK || responseNoStore(hd) {
		return
	}
	hd = hd.Clone()
	for _, k := range quotaHeaderNames {
		delete(hd, k) // the quota as of a hit is told then
	}
	h.cfg.Cache.Put(key, rs.key, rs.route.Name(), rs.route.Resource(), rs.route.Params(r.URL.Path), hd, body, h.clock.Now(), since)
}

// serveCached answers a read from the cache: the stored header and body,
// its Age, and the quota as it stands (a hit costs none).
func (h *Handler) serveCached(w http.ResponseWriter, r *http.Request, rs *reqState, e *cache.Entry, age time.Duration) {
	hd := w.Header()
	for k, v := range e.Header {
		hd[k] = v
	}
	hd.Set("Age", strconv.FormatInt(int64(age/time.Second), 10))
	if q, err := h.cfg.Limiter.Status(r.Context(), rs.key); err == nil {
		h.setQuotaHeaders(hd, rs, q)
	}
	rs.mu.Lock()
	rs.status, rs.cached = http.StatusOK, true
	rs.mu.Unlock()
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(e.Body)
	}
}

// invalidate drops the cached reads of rs's token that the write r can
// change.
func (h *Handler) invalidate(r *http.Request, rs *reqState) {
	w := cache.Write{Resource: rs.route.Resource(), Params: rs.route.Params(r.URL.Path), Unknown: rs.route.Resource() == ""}
	h.cfg.Cache.Invalidate(rs.key, w)
}

// cacheControl is what a request's Cache-Control (and Pragma) asks of the
// cache.
type cacheControl struct {
	noCache, noStore bool
	maxAge           time.Duration // negative: none given
}

func requestCacheControl(h http.Header) cacheControl {
	cc := cacheControl{maxAge: -1}
	for _, p := range h.Values("Pragma") {
		if strings.EqualFold(strings.TrimSpace(p), "no-cache") {
			cc.noCache = true
		}
	}
	for _, v := range h.Values("Cache-Control") {
		for d := range strings.SplitSeq(v, ",") {
			name, val, _ := strings.Cut(strings.TrimSpace(d), "=")
			switch strings.ToLower(name) {
			case "no-cache":
				cc.noCache = true
			case "no-store":
				cc.noStore = true
			case "max-age":
				n, err := strconv.ParseInt(strings.Trim(val, `"`), 10, 64)
				if err != nil || n < 0 {
					cc.noCache = true // unreadable: ask the upstream
					continue
				}
				if a := time.Duration(min(n, 1<<30)) * time.Second; cc.maxAge < 0 || a < cc.maxAge {
					cc.maxAge = a
				}
			}
		}
	}
	return cc
}

// responseNoStore reports whether an answer's Cache-Control forbids
// storing it.
func responseNoStore(h http.Header) bool {
	for _, v := range h.Values("Cache-Control") {
		for d := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(d), "no-store") {
				return true
			}
		}
	}
	return false
}
