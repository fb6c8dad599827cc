package proxy

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"net/http"
	"strings"
	"sync"
	"unsafe"
)

// Identifier turns an access token into the key its quota is counted under:
// SHA-256 of the whole token (Fusioo's tokens are opaque, about 1 KB), keyed
// with a secret when one is configured so the keys in Redis cannot be tested
// against a guessed token. The token itself goes nowhere else.
type Identifier struct {
	secret []byte
	macs   sync.Pool // of *keyedHash, when secret is set
}

// keyedHash is an HMAC-SHA256 keyed with the Identifier's secret, and room
// for its sum, lent out by Identifier.macs.
type keyedHash struct {
	h   hash.Hash
	sum [sha256.Size]byte
}

// NewIdentifier returns an Identifier keyed with secret (may be empty).
func NewIdentifier(secret []byte) *Identifier {
	id := &Identifier{secret: append([]byte(nil), secret...)}
	id.macs.New = func() any { return &keyedHash{h: hmac.New(sha256.New, id.secret)} }
	return id
}

// Key returns the hex key for token. It allocates only the key: the token
// is hashed where it lies (bytesOf), and the HMAC state is pooled.
func (id *Identifier) Key(token string) string {
	var out [2 * sha256.Size]byte
	if len(id.secret) == 0 {
		sum := sha256.Sum256(bytesOf(token))
		hex.Encode(out[:], sum[:])
	} else {
		kh := id.macs.Get().(*keyedHash)
		kh.h.Reset()
		_, _ = kh.h.Write(bytesOf(token))
		hex.Encode(out[:], kh.h.Sum(kh.sum[:0]))
		id.macs.Put(kh)
	}
	return string(out[:])
}

// bytesOf returns the bytes of s without copying them. The hashes above
// only read their input and keep no reference to it, which is what makes
// this safe: nothing may write to the result.
func bytesOf(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

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
