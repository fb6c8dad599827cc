package config

import (
	"strings"
	"testing"
)

// TestHostileSecretInMalformedURL: a password in a malformed upstream.url or
// redis.url is never quoted by the config error (found by review).
func TestHostileSecretInMalformedURL(t *testing.T) {
	t.Parallel()
	const pw = "987654321"
	for _, doc := range []string{
		"[upstream]\nurl = \"user:" + pw + "@api.fusioo.com\"\n",                          // no scheme
		"[upstream]\nurl = \"https:/user:" + pw + "@api.fusioo.com\"\n",                   // one slash
		"[upstream]\nurl = \"http//user:" + pw + "@api.fusioo.com\"\n",                    // no colon
		"[quota]\nstore = \"redis\"\n[redis]\nurl = \"redis://:12/" + pw + "@h:6379\"\n",  // unescaped '/' in the password
		"[quota]\nstore = \"redis\"\n[redis]\nurl = \"redis://u:12?" + pw + "@h:6379\"\n", // unescaped '?'
	} {
		refusedWithoutSecret(t, pw, doc)
	}
}

// refusedWithoutSecret checks that Parse refuses each doc with an error
// that does not show secret.
func refusedWithoutSecret(t *testing.T, secret string, docs ...string) {
	t.Helper()
	for _, doc := range docs {
		_, err := Parse([]byte(doc), nil)
		if err == nil {
			t.Errorf("%q: accepted", strings.TrimSpace(doc))
		} else if strings.Contains(err.Error(), secret) {
			t.Errorf("%q: the error shows the secret:\n  %v", strings.TrimSpace(doc), err)
		}
	}
}
