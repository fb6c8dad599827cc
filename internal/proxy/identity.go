package proxy

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"strings"
)

// Identifier turns an access token into the key its quota is counted under:
// SHA-256 of the whole token (Fusioo's tokens are opaque, about 1 KB), keyed
// with a secret when one is configured so the keys in Redis cannot be tested
// against a guessed token. The token itself goes nowhere else.
type Identifier struct {
	secret []byte
}

// NewIdentifier returns an Identifier keyed with secret (may be empty).
func NewIdentifier(secret []byte) *Identifier {
	return &Identifier{secret: append([]byte(nil), secret...)}
}

// Key returns the hex key for token.
func (id *Identifier) Key(token string) string {
	var sum [sha256.Size]byte
	if len(id.secret) == 0 {
		sum = sha256.Sum256([]byte(token))
	} else {
		h := hmac.New(sha256.New, id.secret)
		_, _ = io.WriteString(h, token)
		h.Sum(sum[:0])
	}
	var out [2 * sha256.Size]byte
	hex.Encode(out[:], sum[:])
	return string(out[:])
}

// Fingerprint is what logs show of a key: its first 8 hex characters,
// enough to tell tokens apart, useless to recover one.
func Fingerprint(key string) string {
	if len(key) < 8 {
		return key
	}
	return key[:8]
}

// BearerToken returns the token of an "Authorization: Bearer …" header
// (scheme case-insensitive, RFC 6750), or "" when there is none.
func BearerToken(h http.Header) string {
	v := h.Get("Authorization")
	const prefix = "bearer "
	if len(v) <= len(prefix) || !strings.EqualFold(v[:len(prefix)], prefix) {
		return ""
	}
	return strings.TrimSpace(v[len(prefix):])
}
