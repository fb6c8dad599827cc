package config

import (
	"fmt"
	"strings"
	"testing"
)

// TestReview21SecretInSectionOfWrongShape: a section holding secrets
// written as an array of tables ([[redis]] for [redis]) or an array of
// inline tables is a type error; the error must not print the section's
// values, which include its secrets. config.go: "secret values (fields
// tagged secret) never shown in any error"; the decoder prints the raw
// value of a non-secret key, and here the key is the whole section.
func TestReview21SecretInSectionOfWrongShape(t *testing.T) {
	t.Parallel()
	const pw = "correcthorsebattery"
	for _, doc := range []string{
		"[[redis]]\npassword = \"" + pw + "\"\n",
		"[[redis]]\nurl = \"redis://u:" + pw + "@h:6379\"\n",
		"redis = [{ sentinel_password = \"" + pw + "\" }]\n",
		"[[quota]]\nkey_secret = \"" + pw + "\"\n",
	} {
		refusedWithoutSecret(t, pw, doc)
	}
}

// TestReview21SecretUnderMisspeltKey: a secret key written with another
// case or a typo (Password, PASSWORD, key-secret) and an unquoted value is
// a TOML syntax error whose library message quotes the value. syntaxError
// only hides it for the exact key names, so the secret is printed by -check
// and at startup. Expected: a syntax error in the value of any key of a
// section that holds secrets, or at least of any key matching a secret's
// name case-insensitively / modulo - and _, is reported without the value
// (the unknown-key check would reject the key anyway).
func TestReview21SecretUnderMisspeltKey(t *testing.T) {
	t.Parallel()
	const pw = "correcthorsebattery"
	for _, doc := range []string{
		"[redis]\nPassword = " + pw + "\n",
		"[redis]\nSENTINEL_PASSWORD = " + pw + "\n",
		"[quota]\nkey-secret = " + pw + "\n",
		"[quota]\nKey_Secret = " + pw + "\n",
	} {
		refusedWithoutSecret(t, pw, doc)
	}
}

// TestReview21OpaqueRedisURLShownInSettings: redis.url = "redis:user:pw@host"
// (the // forgotten) parses as an opaque URL without userinfo. Validate
// accepts it (go-redis reads it as localhost:6379), and redact() returns it
// unchanged because u.User is nil, so the startup log ("starting", config
// = Redacted().Settings()) prints the password. Expected per config.go
// ("every secret replaced") and config.example.toml (redis.url with a
// password is a secret): the value is redacted, or the URL is refused.
func TestReview21OpaqueRedisURLShownInSettings(t *testing.T) {
	t.Parallel()
	const pw = "correcthorsebattery"
	cfg, err := Parse([]byte("[quota]\nstore = \"redis\"\n[redis]\nurl = \"redis:user:"+pw+"@10.0.0.7:6380\"\n"), nil)
	if err != nil {
		if strings.Contains(err.Error(), pw) {
			t.Fatalf("the error shows the secret: %v", err)
		}
		return // refused: fine
	}
	if s := fmt.Sprint(cfg.Redacted().Settings()["redis.url"]); strings.Contains(s, pw) {
		t.Errorf("accepted, and the startup log's redis.url is %q: the password shown", s)
	}
	if s := cfg.Redacted().Redis.URL; strings.Contains(s, pw) {
		t.Errorf("Redacted().Redis.URL = %q: the password shown", s)
	}
}

// TestReview21UpstreamURLTypeErrorQuotesCredentials: validate never quotes
// an upstream.url that may carry credentials ("The URL is shown redacted,
// or not at all: it may carry a password"), but a type error (the URL in
// an array) prints it whole through the decoder's "got an array [...]".
func TestReview21UpstreamURLTypeErrorQuotesCredentials(t *testing.T) {
	t.Parallel()
	const pw = "correcthorsebattery"
	_, err := Parse([]byte("[upstream]\nurl = [\"https://user:"+pw+"@api.fusioo.com\"]\n"), nil)
	if err == nil {
		t.Fatal("accepted")
	}
	if strings.Contains(err.Error(), pw) {
		t.Errorf("the error shows the password: %v", err)
	}
}
