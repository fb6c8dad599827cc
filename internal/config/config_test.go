package config

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

func TestExampleIsDefault(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("../../config.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := Parse(b, nil)
	if err != nil {
		t.Fatal(err)
	}
	def := Default()
	// The example documents every default: loading it changes nothing.
	if cfg.Server != def.Server || cfg.Upstream != def.Upstream || cfg.Quota != def.Quota || cfg.Smoothing != def.Smoothing ||
		cfg.Redis.AutoPipeline != def.Redis.AutoPipeline || cfg.Redis.Timeout != def.Redis.Timeout || cfg.Redis.KeyPrefix != def.Redis.KeyPrefix ||
		cfg.Queue != def.Queue || cfg.Retry != def.Retry || cfg.Log != def.Log || cfg.Coalesce != def.Coalesce {
		t.Fatalf("example differs from defaults:\n%+v\n%+v", cfg, def)
	}
}

func TestMinimalFile(t *testing.T) {
	t.Parallel()
	cfg, err := Parse([]byte(`
[server]
listen = "127.0.0.1:8000"
[upstream]
url = "http://127.0.0.1:9"
[quota]
limit = 300
window = "10s"
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	r, b := cfg.SmoothingRate()
	if r < 30 || b < 20 {
		t.Fatalf("smoothing %v/%d slower than the quota", r, b)
	}
}

// TestDerivedMargin: left out, quota.margin is a fiftieth of the window, at
// most 5 s, so an hour keeps today's 5 s and short windows most of their
// quota; a configured margin is kept.
func TestDerivedMargin(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		file string
		want time.Duration
	}{
		{"[quota]\nlimit = 1000\n", 5 * time.Second},
		{"[quota]\nwindow = \"1m\"\n", 1200 * time.Millisecond},
		{"[quota]\nwindow = \"10s\"\n", 200 * time.Millisecond},
		{"[quota]\nwindow = \"6s\"\n", 120 * time.Millisecond},
		{"[quota]\nwindow = \"6s\"\nmargin = \"1s\"\n", time.Second},
	} {
		cfg, err := Parse([]byte(tc.file), nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := cfg.QuotaMargin(); got != tc.want {
			t.Errorf("%q: margin %s, want %s", tc.file, got, tc.want)
		}
	}
}

func TestEnvOverrides(t *testing.T) {
	t.Parallel()
	cfg, err := Parse([]byte(`[quota]
limit = 5`), []string{
		"FUSIOO_GATEWAY_REDIS_URL=redis://:pw@localhost:6379/0", "FUSIOO_GATEWAY_QUOTA_STORE=redis",
		"FUSIOO_GATEWAY_QUOTA_LIMIT=7", "FUSIOO_GATEWAY_QUEUE_MAX_WAIT=2s", "FUSIOO_GATEWAY_RETRY_IDEMPOTENT_WRITES=false",
		"FUSIOO_GATEWAY_REDIS_CLUSTER_ADDRS=", "PATH=/bin",
	})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Quota.Limit != 7 || cfg.Quota.Store != "redis" || cfg.Queue.MaxWait.Duration != 2*time.Second || cfg.Retry.IdempotentWrites {
		t.Fatalf("%+v", cfg)
	}
	red := cfg.Redacted()
	if strings.Contains(red.Redis.URL, "pw") || !strings.Contains(cfg.Redis.URL, "pw") {
		t.Fatalf("redaction: %q / original %q", red.Redis.URL, cfg.Redis.URL)
	}
}

func TestEveryBadKeyReported(t *testing.T) {
	t.Parallel()
	_, err := Parse([]byte(`
[server]
listen = "x"
admin_listen = 3
nope = true
gc_heap_floor = -1
[upstream]
url = "ftp://a"
[quota]
margin = "2h"
on_store_failure = "panic"
store = "redis"
[redis]
url = "redis://a:1"
cluster_addrs = ["b:2"]
[retry]
budget_ratio = 2.0
max_delay = "1ms"
[log]
format = "xml"
[[routes]]
method = ""
template = "/x"
kind = "read"
bogus = 1
[typo]
`), nil)
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("%v", err)
	}
	want := []string{"server.listen", "server.admin_listen", "server.nope", "server.gc_heap_floor", "upstream.url", "quota.margin", "quota.on_store_failure",
		"redis.url: redis.url, redis.sentinel_master and redis.cluster_addrs are exclusive", "retry.budget_ratio", "retry.max_delay", "log.format", "routes[0].method", "routes[0].bogus", "typo: unknown key"}
	msg := err.Error()
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("missing %q in:\n%s", w, msg)
		}
	}
	if len(errs) != len(want) {
		t.Errorf("%d errors, want %d:\n%s", len(errs), len(want), msg)
	}
}

func TestSyntaxError(t *testing.T) {
	t.Parallel()
	_, err := Parse([]byte("[server\nlisten="), nil)
	if err == nil || !strings.Contains(err.Error(), "not valid TOML") {
		t.Fatalf("%v", err)
	}
}

func TestKubernetesServiceLinksIgnored(t *testing.T) {
	t.Parallel()
	_, err := Parse(nil, []string{
		"FUSIOO_GATEWAY_SERVICE_HOST=10.0.0.1", "FUSIOO_GATEWAY_SERVICE_PORT=8080", "FUSIOO_GATEWAY_SERVICE_PORT_ADMIN=9090",
		"FUSIOO_GATEWAY_PORT=tcp://10.0.0.1:8080", "FUSIOO_GATEWAY_PORT_8080_TCP=tcp://10.0.0.1:8080",
		"FUSIOO_GATEWAY_PORT_8080_TCP_PROTO=tcp", "FUSIOO_GATEWAY_PORT_8080_TCP_PORT=8080", "FUSIOO_GATEWAY_PORT_8080_TCP_ADDR=10.0.0.1",
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Parse(nil, []string{"FUSIOO_GATEWAY_QUOTA_LIMT=5"}); err == nil {
		t.Fatal("a misspelt override was accepted")
	}
}

// TestSecretsNeverPrinted: no value of a secret key appears in any error,
// whatever its type or syntax, from the file or the environment, nor a
// password inside the upstream URL.
func TestSecretsNeverPrinted(t *testing.T) {
	t.Parallel()
	const pw = "987654321"
	sections := map[string]string{
		"quota.key_secret":        "[quota]\nkey_secret = %s\n",
		"redis.password":          "[quota]\nstore = \"redis\"\n[redis]\nurl = \"redis://127.0.0.1:1\"\npassword = %s\n",
		"redis.sentinel_password": "[quota]\nstore = \"redis\"\n[redis]\nsentinel_master = \"m\"\nsentinel_addrs = [\"127.0.0.1:1\"]\nsentinel_password = %s\n",
		"redis.url":               "[quota]\nstore = \"redis\"\n[redis]\nurl = %s\n",
	}
	values := []string{
		pw,                          // an integer
		pw + ".5",                   // a float
		"[" + pw + ", \"x\"]",       // an array
		"[\"" + pw + "\"]",          // an array of strings
		"{ a = " + pw + " }",        // an inline table
		pw + "abc",                  // bad syntax quoting the value
		"\"" + pw + "",              // an unterminated string
		"'''" + pw + "\n",           // an unterminated literal
		"1979-05-27T07:32:00Z" + pw, // a bad date
		"abc" + pw,                  // a bare word
	}
	for key, tmpl := range sections {
		for _, v := range values {
			_, err := Parse([]byte(fmt.Sprintf(tmpl, v)), nil)
			if err == nil {
				t.Errorf("%s = %s: accepted", key, v)
				continue
			}
			if strings.Contains(err.Error(), pw) || strings.Contains(err.Error(), "'a'") {
				t.Errorf("%s = %s: the error shows the secret: %v", key, v, err)
			}
		}
	}
	// Wrong values from the environment.
	for _, env := range []string{"FUSIOO_GATEWAY_REDIS_PASSWORD=" + pw, "FUSIOO_GATEWAY_QUOTA_KEY_SECRET=" + pw, "FUSIOO_GATEWAY_REDIS_URL=ftp://u:" + pw + "@h"} {
		_, err := Parse([]byte("[quota]\nstore = \"redis\"\n[redis]\nsentinel_master = \"m\"\n"), []string{env})
		if err == nil || strings.Contains(err.Error(), pw) {
			t.Errorf("%s: %v", env, err)
		}
	}
	// A password in the upstream URL, well-formed or not.
	for _, u := range []string{"ftp://user:" + pw + "@example.com", "http://user:" + pw + "@example.com", "http://user:" + pw + "@[::1", "http://user:" + pw + "@exa mple.com/%zz"} {
		_, err := Parse([]byte("[upstream]\nurl = \""+u+"\"\n"), nil)
		if err == nil || strings.Contains(err.Error(), pw) {
			t.Errorf("upstream.url %s: %v", u, err)
		}
	}
}

// TestSettingsNameKeys: the startup log's view names TOML keys, with
// durations as the file writes them and secrets redacted.
func TestSettingsNameKeys(t *testing.T) {
	t.Parallel()
	cfg, err := Parse([]byte("[quota]\nkey_secret = \"s3cret-value\"\n[queue]\nmax_wait = \"7s\"\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	s := cfg.Redacted().Settings()
	if s["queue.max_wait"] != "7s" || s["quota.limit"] != 1000 || s["quota.key_secret"] != "REDACTED" || s["server.listen"] == nil {
		t.Fatalf("settings %v", s)
	}
	for k := range s {
		if k != "routes" && k != "cache" && !strings.Contains(k, ".") {
			t.Fatalf("key %q is not a TOML key", k)
		}
	}
	if strings.Contains(fmt.Sprint(s), "s3cret") {
		t.Fatalf("secret in settings")
	}
}

// TestRedisTimeoutNamedOnce: a redis.timeout that is not positive is
// reported once, by the client's rules with store = "redis" (which
// require a timeout), by the file's own otherwise.
func TestRedisTimeoutNamedOnce(t *testing.T) {
	t.Parallel()
	for _, file := range []string{
		"[quota]\nstore = \"redis\"\n[redis]\nurl = \"redis://127.0.0.1:6379\"\ntimeout = \"0s\"\n",
		"[quota]\nstore = \"redis\"\n[redis]\nurl = \"redis://127.0.0.1:6379\"\ntimeout = \"-1s\"\n",
		"[redis]\ntimeout = \"0s\"\n",
	} {
		_, err := Parse([]byte(file), nil)
		if err == nil || strings.Count(err.Error(), "redis.timeout: must be positive") != 1 || strings.Count(err.Error(), "redis.timeout") != 1 {
			t.Errorf("%q: %v, want redis.timeout named once", file, err)
		}
	}
}

// TestCacheEntries: [[cache]] entries are read, and every bad key of them
// is named at once.
func TestCacheEntries(t *testing.T) {
	t.Parallel()
	cfg, err := Parse([]byte("[[cache]]\nroute = \"GET /records/apps/{app}\"\nttl = \"10s\"\nmax_bytes = 1048576\n"), nil)
	if err != nil || len(cfg.Cache) != 1 || cfg.Cache[0].TTL.Duration != 10*time.Second || cfg.Cache[0].MaxBytes != 1<<20 {
		t.Fatalf("%+v %v", cfg.Cache, err)
	}
	_, err = Parse([]byte("[[cache]]\nroute = \"records\"\nttl = \"0s\"\nmax_bytes = -1\n[[cache]]\nroute = \"GET /apps\"\nttl = \"1s\"\nmax_bytes = 1\nsize = 3\n"), nil)
	for _, k := range []string{"cache[0].route", "cache[0].ttl", "cache[0].max_bytes", "cache[1].size"} {
		if err == nil || !strings.Contains(err.Error(), k) {
			t.Fatalf("error %v does not name %s", err, k)
		}
	}
}
