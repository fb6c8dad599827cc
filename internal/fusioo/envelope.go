package fusioo

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
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

// PeekCode reads at most MaxErrorBody bytes of body, returns the Fusioo code
// found there and a reader that yields the whole body again (what was read,
// then the rest). The caller closes the original body as before.
func PeekCode(body io.Reader) (Code, io.Reader, error) {
	buf := make([]byte, MaxErrorBody)
	n, err := io.ReadFull(body, buf)
	buf = buf[:n]
	switch err {
	case nil:
		// The body may be longer than the bound: it is not a small
		// envelope, but keep what was read for the client.
		return ParseCode(buf), io.MultiReader(bytes.NewReader(buf), body), nil
	case io.EOF, io.ErrUnexpectedEOF:
		return ParseCode(buf), bytes.NewReader(buf), nil
	default:
		return ParseCode(buf), io.MultiReader(bytes.NewReader(buf), body), err
	}
}
