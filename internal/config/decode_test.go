package config

import (
	"encoding"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
)

// Duration is read by the TOML library, and by environment overrides,
// through encoding.TextUnmarshaler.
var _ encoding.TextUnmarshaler = (*Duration)(nil)

// parseErrors returns the messages of Parse's Errors for doc and env.
func parseErrors(t *testing.T, doc string, env ...string) []string {
	t.Helper()
	_, err := Parse([]byte(doc), env)
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("%q: want Errors, got %v", doc, err)
	}
	msgs := make([]string, len(errs))
	for i, e := range errs {
		msgs[i] = e.Error()
	}
	return msgs
}

// TestEveryTypeErrorReported: type errors in several sections, the route
// list and the environment, and unknown keys (all of them, sorted, and
// named in full) come out of one Parse, not the first alone; a bad value
// leaves its key at the default, so validate adds nothing for it.
func TestEveryTypeErrorReported(t *testing.T) {
	t.Parallel()
	got := parseErrors(t, `
[server]
max_body_bytes = "big"
pprof = "yes"
Listen = ":1"
[upstream]
timeout = 30
[quota]
limitt = 5
fallback_share = "half"
store = "redis"
[redis]
url = "redis://127.0.0.1:1"
cluster_addrs = ["a:1", 2]
[log]
level = 3
[[routes]]
method = "GET"
template = "/x"
kind = "read"
charged = "no"
extra = true
[bogus]
`, "FUSIOO_GATEWAY_QUEUE_MAX_DEPTH=deep")
	want := []string{
		"server.max_body_bytes: want an integer, got a string big",
		"server.pprof: want true or false, got a string yes",
		`upstream.timeout: want a duration string such as "30s", got an integer 30`,
		"quota.fallback_share: want a number, got a string half",
		"redis.cluster_addrs: want an array of strings, got an array",
		"log.level: want a string, got an integer 3",
		"routes[0].charged: want true or false, got a string no",
		"bogus: unknown key",
		"quota.limitt: unknown key",
		"routes[0].extra: unknown key",
		"server.Listen: unknown key", // keys are case-sensitive
		`queue.max_depth (from FUSIOO_GATEWAY_QUEUE_MAX_DEPTH): want an integer, got "deep"`,
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestTableTypeErrors: a section, the route list or a route that is not a
// table is reported as such.
func TestTableTypeErrors(t *testing.T) {
	t.Parallel()
	for doc, want := range map[string]string{
		"server = 3\n":         "server: want a table, got an integer 3",
		"[[server]]\n":         "server: want a table, got an array",
		"routes = \"GET /\"\n": "routes: want an array of tables, got a string GET /",
		"routes = [1]\n":       "routes[0]: want a table, got an integer 1",
	} {
		if got := parseErrors(t, doc); len(got) == 0 || got[0] != want {
			t.Errorf("%q: got %q, want %q first", doc, got, want)
		}
	}
}

// TestSecretTypeErrors: a secret key given a value of the wrong type, or
// malformed, is named with the type it wants, never with its value.
func TestSecretTypeErrors(t *testing.T) {
	t.Parallel()
	const pw = "987654321"
	keys := slices.Sorted(maps.Keys(secretKeys()))
	if want := []string{"quota.key_secret", "redis.password", "redis.sentinel_password", "redis.url"}; !slices.Equal(keys, want) {
		t.Fatalf("secret keys %v, want %v", keys, want)
	}
	for _, key := range keys {
		section, name, _ := strings.Cut(key, ".")
		for _, tc := range []struct{ doc, want string }{
			{"[" + section + "]\n" + name + " = " + pw + "\n", key + ": want a string, got an integer (not shown: it is a secret)"},
			{"[" + section + "]\n" + name + " = " + pw + ".5\n", key + ": want a string, got a float (not shown: it is a secret)"},
			{"[" + section + "]\n" + name + " = [\"" + pw + "\", " + pw + "]\n", key + ": want a string, got an array (not shown: it is a secret)"},
			{"[" + section + "]\n" + name + " = { a = \"" + pw + "\" }\n", key + ": want a string, got a table (not shown: it is a secret)"},
			{"[" + section + "]\n" + name + ".a = " + pw + "\n", key + ": want a string, got a table (not shown: it is a secret)"},
			{"[" + section + "." + name + "]\na = \"" + pw + "\"\n", key + ": want a string, got a table (not shown: it is a secret)"},
			{"[" + section + "]\n" + name + " = 1979-05-27T07:32:00Z\n", key + ": want a string, got a date-time (not shown: it is a secret)"},
			{"[" + section + "]\n" + name + " = \"" + pw + "\\q\"\n", "config is not valid TOML: line 2, in the value of a secret key (not shown)"},
			{"[" + section + "]\n" + name + " = \"\"\"" + pw + "\n", "config is not valid TOML: line 2, in the value of a secret key (not shown)"},
			{"[" + section + "]\n" + name + " = '" + pw + "\n", "config is not valid TOML: line 2, in the value of a secret key (not shown)"},
		} {
			got := parseErrors(t, tc.doc)
			if !slices.Contains(got, tc.want) {
				t.Errorf("%q: got %q, want %q among them", tc.doc, got, tc.want)
			}
			if msg := strings.Join(got, "\n"); strings.Contains(msg, pw) {
				t.Errorf("%q: the error shows the secret: %s", tc.doc, msg)
			}
		}
	}
}

// TestDurationErrors: a duration is a Go duration string; an integer (even
// 0) or a bad string is reported, from the file or the environment, and a
// good one from either is read.
func TestDurationErrors(t *testing.T) {
	t.Parallel()
	for doc, want := range map[string]string{
		"[queue]\nmax_wait = 30\n":      `queue.max_wait: want a duration string such as "30s", got an integer 30`,
		"[queue]\nmax_wait = 0\n":       `queue.max_wait: want a duration string such as "30s", got an integer 0`,
		"[queue]\nmax_wait = 1.5\n":     `queue.max_wait: want a duration string such as "30s", got a float 1.5`,
		"[queue]\nmax_wait = \"30\"\n":  `queue.max_wait: want a duration string such as "30s", got a string: time: missing unit in duration "30"`,
		"[queue]\nmax_wait = \"abc\"\n": `queue.max_wait: want a duration string such as "30s", got a string: time: invalid duration "abc"`,
	} {
		if got := parseErrors(t, doc); !slices.Equal(got, []string{want}) {
			t.Errorf("%q: got %q, want %q", doc, got, want)
		}
	}
	if got, want := parseErrors(t, "", "FUSIOO_GATEWAY_QUEUE_MAX_WAIT=5"), []string{
		`queue.max_wait (from FUSIOO_GATEWAY_QUEUE_MAX_WAIT): want a duration string such as "30s", got "5"`,
	}; !slices.Equal(got, want) {
		t.Errorf("environment: got %q, want %q", got, want)
	}
	cfg, err := Parse([]byte("[queue]\nmax_wait = \"1m30s\"\n[retry]\nbase_delay = \"0.25s\"\n"), []string{"FUSIOO_GATEWAY_REDIS_TIMEOUT=75ms"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Queue.MaxWait.Duration != 90*time.Second || cfg.Retry.BaseDelay.Duration != 250*time.Millisecond || cfg.Redis.Timeout.Duration != 75*time.Millisecond {
		t.Fatalf("durations %s %s %s", cfg.Queue.MaxWait, cfg.Retry.BaseDelay, cfg.Redis.Timeout)
	}
	var d Duration
	if err := d.UnmarshalText([]byte("2h")); err != nil || d.Duration != 2*time.Hour {
		t.Fatalf("UnmarshalText: %v %s", err, d)
	}
	if err := d.UnmarshalText([]byte("x")); err == nil || d.Duration != 2*time.Hour {
		t.Fatalf("a bad duration was taken or changed d: %v %s", err, d)
	}
}
