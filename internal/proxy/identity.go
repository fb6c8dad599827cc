package proxy

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"net/http"
	"net/url"
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

// Credential returns the Bearer token r carries for the upstream, or why
// r must be refused (401/10003, never forwarded) because the upstream could
// read a credential other than the one the gateway would charge:
//
//   - more than one Authorization field line;
//   - a Bearer credential (scheme matched case-insensitively, RFC 9110)
//     that is not exactly: the scheme, one or more spaces, a b64token
//     (RFC 6750: ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/", then
//     "=" padding), nothing after it; a value that merely starts with
//     "bearer" (a tab, a colon, no space) counts as malformed Bearer;
//   - an access_token query parameter (RFC 6750 §2.3), however spelled
//     or encoded (see accessTokenName): Fusioo documents only the header,
//     and a lenient upstream reading the query would be sent a token
//     nobody charged;
//   - an Authorization header named in Connection (it would be dropped
//     hop by hop, so the request charged to it would go without it).
//
// A request with no credential, or another scheme (Basic, …), gets
// neither: it is forwarded uncharged under the anonymous limit.
func Credential(r *http.Request) (token, refuse string) {
	if hasAccessToken(r.URL.RawQuery) {
		return "", "The access token must be sent in the Authorization header only, not as access_token in the query"
	}
	vals := r.Header["Authorization"]
	switch {
	case len(vals) == 0:
		return "", ""
	case len(vals) > 1:
		return "", "More than one Authorization header"
	case hasToken(r.Header["Connection"], "authorization"):
		// The credential would be dropped hop by hop: the request charged
		// to it would reach the upstream without it.
		return "", "The Authorization header may not be named in Connection"
	}
	// HTTP/2 may keep leading whitespace that HTTP/1 strips on the wire.
	v := strings.TrimLeft(vals[0], " \t")
	const scheme = "bearer"
	if len(v) < len(scheme) || !strings.EqualFold(v[:len(scheme)], scheme) {
		return "", "" // another scheme: anonymous
	}
	rest := v[len(scheme):]
	tok := strings.TrimLeft(rest, " ")
	if len(tok) == len(rest) || !isB64Token(tok) {
		return "", "Malformed Bearer credential: want \"Bearer\", spaces, and one token"
	}
	return tok, ""
}

// isB64Token reports whether s is an RFC 6750 b64token.
func isB64Token(s string) bool {
	i := 0
	for ; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/') {
			break
		}
	}
	if i == 0 {
		return false
	}
	for ; i < len(s); i++ {
		if s[i] != '=' {
			return false
		}
	}
	return true
}

// hasAccessToken reports whether a raw query has a parameter an upstream
// could read as access_token: names compared after percent-decoding (and
// "+" as space), case-insensitively, with "&" and ";" both separators.
func hasAccessToken(raw string) bool {
	if raw == "" {
		return false
	}
	for raw != "" {
		var part string
		if i := strings.IndexAny(raw, "&;"); i >= 0 {
			part, raw = raw[:i], raw[i+1:]
		} else {
			part, raw = raw, ""
		}
		name, _, _ := strings.Cut(part, "=")
		if len(name) >= len("access") && accessTokenName(name) {
			return true
		}
	}
	return false
}

// The spellings of "_" that common parsers read in a parameter name:
// IIS's %u005F, and PHP's "." and " ". Replacers are immutable, built once.
var (
	iisUnderscore = strings.NewReplacer("%u005f", "_", "%u005F", "_", "%U005F", "_", "%U005f", "_")
	phpUnderscore = strings.NewReplacer(".", "_", " ", "_")
)

// accessTokenName reports whether a raw query parameter name is one that
// common parsers read as access_token: percent-decoded (and IIS's %uXXXX),
// "+" as space, case-folded, then as PHP reads names (".", " " and an
// unclosed "[" become "_", and "name[…]" is an array named name).
func accessTokenName(raw string) bool {
	name := iisUnderscore.Replace(raw)
	if n, err := url.QueryUnescape(name); err == nil {
		name = n
	}
	name = strings.ToLower(strings.TrimSpace(name))
	if i := strings.IndexByte(name, '['); i >= 0 {
		if strings.IndexByte(name[i:], ']') >= 0 {
			name = name[:i]
		} else {
			name = name[:i] + "_" + name[i+1:]
		}
	}
	name = phpUnderscore.Replace(name)
	return name == "access_token"
}
