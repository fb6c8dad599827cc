package fusioo

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// Envelope is the JSON shape of every Fusioo response, success included.
type Envelope struct {
	Code    Code            `json:"code"`
	Message string          `json:"message"`
	Data    json.RawMessage `json:"data"`
}

// emptyData is what Fusioo sends as "data" with an error.
var emptyData = json.RawMessage(`{}`)

// ErrorBody returns the encoded envelope for an error answer with code c
// and message msg (c's table message when msg is empty).
func ErrorBody(c Code, msg string) []byte {
	if msg == "" {
		msg = c.Message()
	}
	b, _ := json.Marshal(Envelope{Code: c, Message: msg, Data: emptyData})
	return b
}

// WriteError answers w with status and Fusioo's error envelope for c. It is
// the one way the gateway and the simulator write an error, so every error
// they make has the same shape and headers.
func WriteError(w http.ResponseWriter, status int, c Code, msg string) {
	b := ErrorBody(c, msg)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// WriteSuccess answers w with 200 and a success envelope around data.
func WriteSuccess(w http.ResponseWriter, data any) {
	raw, err := json.Marshal(data)
	if err != nil {
		WriteError(w, http.StatusInternalServerError, CodeInternal, "")
		return
	}
	b, _ := json.Marshal(Envelope{Code: CodeSuccess, Message: CodeSuccess.Message(), Data: raw})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
}

// MaxErrorBody is how much of an error body ParseCode reads: Fusioo's
// error envelopes are a few hundred bytes, and a bounded read keeps a huge
// or endless body from costing memory.
const MaxErrorBody = 4 << 10

// ParseCode returns the "code" of a Fusioo envelope in b, or 0 when b is not
// one. It never fails: a body that is not JSON simply has no code.
func ParseCode(b []byte) Code {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '{' {
		return 0
	}
	var env struct {
		Code json.Number `json:"code"`
	}
	if err := json.Unmarshal(b, &env); err != nil {
		return 0
	}
	n, err := env.Code.Int64()
	if err != nil || n <= 0 || n > 1<<31-1 {
		return 0
	}
	return Code(n)
}

// PeekCode returns the Fusioo code of an error answer (status >= 400), read
// from at most MaxErrorBody bytes of its body, and replaces resp.Body with
// one that yields exactly the upstream bytes again and closes the
// original. Other answers are left untouched. A gzip-encoded body (the
// client asked for it, and the gateway passes Accept-Encoding through) is
// decoded for its code too.
func PeekCode(resp *http.Response) Code {
	if resp.StatusCode < 400 || resp.Body == nil || resp.Body == http.NoBody {
		return 0
	}
	buf := make([]byte, MaxErrorBody)
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
	return CodeOf(resp.StatusCode, resp.Header, buf)
}

// CodeOf returns the Fusioo code of an answer of status and header whose
// body starts with b, as PeekCode reads it (at most MaxErrorBody bytes,
// only for status >= 400): for an answer recorded rather than received,
// such as one shared by coalesced reads.
func CodeOf(status int, h http.Header, b []byte) Code {
	if status < 400 {
		return 0
	}
	return codeOf(b[:min(len(b), MaxErrorBody)], h.Get("Content-Encoding"))
}

// codeOf returns the Fusioo code in the first bytes of an error body with
// the given Content-Encoding; 0 when there is none to be read.
func codeOf(b []byte, encoding string) Code {
	switch strings.ToLower(strings.TrimSpace(encoding)) {
	case "", "identity":
		return ParseCode(b)
	case "gzip", "x-gzip":
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			return 0
		}
		plain := make([]byte, MaxErrorBody)
		n, _ := io.ReadFull(zr, plain)
		return ParseCode(plain[:n])
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
