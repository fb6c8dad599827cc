package retry

import (
	"bytes"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"math/bits"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/fusioo-gateway/gateway/internal/fusioo"
)

// How a request's body is sent, attempt after attempt.
const (
	bodyNil      = iota // no body: Body nil (not replayable by the transport for this method and header)
	bodyEmpty           // no body: a non-nil empty body sent unframed, so the transport cannot replay it
	bodyBuffered        // buffered: each attempt reads the buffer again
	bodyStream          // streamed once: never retried
)

// body is one request's body as an Exchange sends it.
type body struct {
	mode   int
	buf    *buffer       // bodyBuffered: the owner's reference
	prefix *buffer       // bodyStream: the buffer holding its first bytes, if any
	stream io.ReadCloser // bodyStream: the body, given out once
	length int64         // bodyStream: its ContentLength
	given  bool          // bodyStream: given out already
	// header replaces the request's header when idempotency keys had to be
	// re-spelled (see Exchange.Request); nil otherwise.
	header http.Header
}

// prepareBody decides how req's body is sent and, when it may be retried,
// reads it into a replay buffer. On error the request's body is closed.
func (t *Policy) prepareBody(b *body, req *http.Request, rt *fusioo.Route, key string) error {
	if req.Body == nil || req.Body == http.NoBody {
		b.setEmpty(req)
		return nil
	}
	if t.maxAttempts == 1 || t.maxBody <= 0 || rt.Kind == fusioo.KindUpload || req.ContentLength > t.maxBody {
		b.setStream(req.Body, req.ContentLength)
		return nil
	}
	return t.bufferBody(b, req, key)
}

// setEmpty prepares a request without a body. http.Transport replays a
// bodiless GET, HEAD, OPTIONS or TRACE on its own, and any bodiless request
// whose header map holds a canonical Idempotency-Key or X-Idempotency-Key
// entry. The former get a non-nil empty body sent with TransferEncoding
// "identity" (so no framing header, no body and no probe of the body: on
// HTTP/1.1 the same bytes as a nil body, on HTTP/2 an empty DATA frame
// ends the stream); the latter keep a nil body, and
// so Go's own framing (Content-Length: 0 on POST, PUT and PATCH), with the
// idempotency keys re-spelled.
func (b *body) setEmpty(req *http.Request) {
	switch req.Method {
	case "", "GET", "HEAD", "OPTIONS", "TRACE":
		b.mode = bodyEmpty
	default:
		b.mode = bodyNil
		b.header = respellIdempotencyKeys(req.Header)
	}
}

// identity is the TransferEncoding of a bodyEmpty attempt: with it, Base
// writes a body of unknown length unframed (here: nothing) instead of
// probing it or sending it chunked (net/http's Request.Write documents it).
var identity = []string{"identity"}

// respellIdempotencyKeys returns a copy of h in which the canonical
// Idempotency-Key and X-Idempotency-Key entries are stored under their
// lower-case spelling, or nil when h has neither. http.Transport replays a
// bodiless request on its own when its header map holds one of those
// canonical entries; header names are case-insensitive, so the upstream
// reads the same request.
func respellIdempotencyKeys(h http.Header) http.Header {
	_, a := h["Idempotency-Key"]
	_, x := h["X-Idempotency-Key"]
	if !a && !x {
		return nil
	}
	h = h.Clone()
	for _, k := range [...]string{"Idempotency-Key", "X-Idempotency-Key"} {
		if v, ok := h[k]; ok {
			delete(h, k)
			lk := strings.ToLower(k)
			h[lk] = append(h[lk], v...)
		}
	}
	return h
}

func (b *body) setStream(rc io.ReadCloser, length int64) {
	b.mode, b.stream, b.length = bodyStream, rc, length
}

// replayable reports whether another attempt can carry the same body.
func (b *body) replayable() bool { return b.mode != bodyStream }

// next returns the body and ContentLength of the next attempt, and for a
// buffered body the buffer the attempt holds a reference to: the caller
// releases it when the attempt's request was written (httptrace
// WroteRequest), after which the transport reads the body no more.
//
// The buffered body is an io.NopCloser around a *bytes.Reader, a reader
// http.Transport knows to be in memory, so it writes the headers and a
// small body in one write instead of flushing the headers first. Its
// Close says nothing about when reading ended, hence WroteRequest.
func (b *body) next() (io.ReadCloser, int64, *buffer) {
	switch b.mode {
	case bodyEmpty:
		return emptyBody{}, 0, nil
	case bodyBuffered:
		b.buf.refs.Add(1)
		return io.NopCloser(bytes.NewReader(b.buf.data[:b.buf.n])), int64(b.buf.n), b.buf
	case bodyStream:
		if b.given {
			// plan never retries a stream; this is a safety net.
			return errBody{errors.New("retry: streamed request body already sent")}, b.length, nil
		}
		b.given = true
		return b.stream, b.length, nil
	}
	return nil, 0, nil
}

// release ends the request's hold on its buffer: its bytes leave the
// MaxBufferBytes budget now, and the buffer returns to the pool once no
// attempt can read it any more (an attempt never written keeps it from the
// pool, and the garbage collector takes it). A stream never given out is
// closed, as RoundTrip must close the request body.
func (b *body) release() {
	if b.buf != nil {
		b.buf.unreserve()
		b.buf.release()
		b.buf = nil
	}
	if b.prefix != nil {
		b.prefix.unreserve()
		b.prefix = nil
	}
	if b.mode == bodyStream && !b.given {
		_ = b.stream.Close()
	}
}

// bufferBody reads req's body into a pooled buffer. A body that turns out
// larger than MaxBodyBytes, or that would take the buffers past
// MaxBufferBytes, is streamed instead: what was read, then the rest.
func (t *Policy) bufferBody(b *body, req *http.Request, key string) error {
	rc, cl := req.Body, req.ContentLength
	if cl > 0 {
		buf := t.bufs.get(key, int(cl))
		if buf == nil {
			b.setStream(rc, cl)
			return nil
		}
		if _, err := io.ReadFull(rc, buf.data[:cl]); err != nil {
			buf.release()
			_ = rc.Close()
			return fmt.Errorf("retry: reading request body: %w", err)
		}
		buf.n = int(cl)
		b.mode, b.buf = bodyBuffered, buf
		_ = rc.Close()
		return nil
	}

	// Unknown length: read, growing the buffer up to MaxBodyBytes.
	max := int(t.maxBody)
	buf := t.bufs.get(key, min(initialBuf, max))
	if buf == nil {
		b.setStream(rc, -1)
		return nil
	}
	for {
		if buf.n == len(buf.data) || buf.n == max {
			if buf.n == max {
				// Full: one more byte says whether the body is larger.
				var one [1]byte
				k, err := io.ReadFull(rc, one[:])
				if k == 0 && err == io.EOF {
					break
				}
				if err != nil && k == 0 {
					buf.release()
					_ = rc.Close()
					return fmt.Errorf("retry: reading request body: %w", err)
				}
				b.setStream(&bufReader{buf: buf, n: buf.n, extra: one[:k], rest: rc}, -1)
				b.prefix = buf
				return nil
			}
			nb := t.bufs.get(key, min(2*len(buf.data), max))
			if nb == nil {
				b.setStream(&bufReader{buf: buf, n: buf.n, rest: rc}, -1)
				b.prefix = buf
				return nil
			}
			nb.n = copy(nb.data, buf.data[:buf.n])
			buf.release()
			buf = nb
		}
		k, err := rc.Read(buf.data[buf.n:min(len(buf.data), max)])
		buf.n += k
		if err == io.EOF {
			break
		}
		if err != nil {
			buf.release()
			_ = rc.Close()
			return fmt.Errorf("retry: reading request body: %w", err)
		}
	}
	_ = rc.Close()
	if buf.n == 0 {
		buf.release()
		b.setEmpty(req)
		return nil
	}
	b.mode, b.buf = bodyBuffered, buf
	return nil
}

// initialBuf is the first buffer tried for a body of unknown length.
const initialBuf = 4 << 10

// emptyBody is a request body with nothing in it that is not http.NoBody:
// http.Transport treats a request with it as not replayable.
type emptyBody struct{}

func (emptyBody) Read([]byte) (int, error) { return 0, io.EOF }
func (emptyBody) Close() error             { return nil }

// WriteTo spares io.Copy, which the transport uses to send a body of unknown length,
// its 32 KiB buffer.
func (emptyBody) WriteTo(io.Writer) (int64, error) { return 0, nil }

type errBody struct{ err error }

func (b errBody) Read([]byte) (int, error) { return 0, b.err }
func (errBody) Close() error               { return nil }

// bufReader is a body that outgrew its buffer, streamed once: the bytes
// buffered, extra bytes, then the rest of the original body. Close gives
// the buffer back; it waits for a Read of the buffer in progress, as Base
// may close a body from another goroutine, so a recycled buffer is never
// read.
type bufReader struct {
	mu     sync.Mutex
	buf    *buffer
	off, n int
	extra  []byte
	rest   io.ReadCloser
	closed bool
}

func (r *bufReader) Read(p []byte) (int, error) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return 0, errClosedBody
	}
	if r.off < r.n {
		k := copy(p, r.buf.data[r.off:r.n])
		r.off += k
		r.mu.Unlock()
		return k, nil
	}
	if len(r.extra) > 0 {
		k := copy(p, r.extra)
		r.extra = r.extra[k:]
		r.mu.Unlock()
		return k, nil
	}
	rest := r.rest
	r.mu.Unlock()
	if rest == nil {
		return 0, io.EOF
	}
	// Not under the lock: the client's body may block, and Close must
	// not wait for it.
	return rest.Read(p)
}

func (r *bufReader) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	r.buf.release()
	r.mu.Unlock()
	if r.rest != nil {
		return r.rest.Close()
	}
	return nil
}

var errClosedBody = errors.New("retry: read on closed request body")

// buffer is a pooled replay buffer, reference counted: the request owns
// one reference and each attempt that may still read it one, so it returns
// to the pool only when nothing can read it any more.
type buffer struct {
	data     []byte // len == cap == the class size
	n        int    // bytes of body held
	class    int
	refs     atomic.Int32
	reserved atomic.Bool   // its size counts in the pool's inUse
	share    *atomic.Int64 // and in its key's share (bufPool.shares)
	pool     *bufPool
}

// release drops a reference; the last one recycles the buffer.
func (b *buffer) release() {
	if b.refs.Add(-1) == 0 {
		b.unreserve()
		b.pool.recycled.Add(1)
		b.pool.pools[b.class].Put(b)
	}
}

// unreserve takes the buffer's size out of the pool's inUse, once.
func (b *buffer) unreserve() {
	if b.reserved.CompareAndSwap(true, false) {
		b.pool.inUse.Add(-int64(len(b.data)))
		b.share.Add(-int64(len(b.data)))
	}
}

// minBufShift is log2 of the smallest buffer class (1 KiB).
const minBufShift = 10

// bufPool recycles replay buffers by power-of-two size class and bounds the
// bytes held by buffers in use to max, and those of one key (a token, by
// its share of keys: shares are sharded by hash, so their number is
// bounded whatever the tokens) to perKey, so that one token's slow or many
// bodies cannot take the buffers every other token's retries need.
type bufPool struct {
	max, perKey int64
	inUse       atomic.Int64
	shares      [256]atomic.Int64
	seed        maphash.Seed
	// allocs and recycled count the buffers made and those given back to
	// the pool, for tests.
	allocs, recycled atomic.Int64
	pools            []sync.Pool // class i holds buffers of 1<<(minBufShift+i) bytes
}

func newBufPool(maxBody, limit int64) *bufPool {
	classes := 1
	if maxBody > 1<<minBufShift {
		classes = bits.Len64(uint64(maxBody-1)) - minBufShift + 1
	}
	// A key may hold an eighth of the budget, and at least one body.
	perKey := max(limit/8, min(maxBody, limit))
	return &bufPool{max: limit, perKey: perKey, seed: maphash.MakeSeed(), pools: make([]sync.Pool, classes)}
}

func classOf(size int) int {
	if size <= 1<<minBufShift {
		return 0
	}
	return bits.Len(uint(size-1)) - minBufShift
}

// get returns a buffer of at least size bytes for key with one reference,
// or nil when holding it would exceed max, or key's share.
func (p *bufPool) get(key string, size int) *buffer {
	c := classOf(size)
	if c >= len(p.pools) {
		return nil
	}
	sz := int64(1) << (minBufShift + c)
	share := &p.shares[maphash.String(p.seed, key)%uint64(len(p.shares))]
	if share.Add(sz) > p.perKey {
		share.Add(-sz)
		return nil
	}
	if p.inUse.Add(sz) > p.max {
		p.inUse.Add(-sz)
		share.Add(-sz)
		return nil
	}
	b, _ := p.pools[c].Get().(*buffer)
	if b == nil {
		p.allocs.Add(1)
		b = &buffer{data: make([]byte, sz), class: c, pool: p}
	}
	b.n = 0
	b.refs.Store(1)
	b.share = share
	b.reserved.Store(true)
	return b
}
