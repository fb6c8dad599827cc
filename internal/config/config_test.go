package config

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

func TestExampleIsDefault(t *testing.T) {
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
		cfg.Queue != def.Queue || cfg.Retry != def.Retry || cfg.Log != def.Log {
		t.Fatalf("example differs from defaults:\n%+v\n%+v", cfg, def)
	}
}

func TestMinimalFile(t *testing.T) {
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
	_, err := Parse([]byte(`
[server]
listen = "x"
admin_listen = 3
nope = true
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
	want := []string{"server.listen", "server.admin_listen", "server.nope", "upstream.url", "quota.margin", "quota.on_store_failure",
		"redis.url: redis.url, redis.sentinel_* and redis.cluster_addrs are exclusive", "retry.budget_ratio", "retry.max_delay", "log.format", "routes[0].method", "routes[0].bogus", "typo: unknown key"}
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
	_, err := Parse([]byte("[server\nlisten="), nil)
	if err == nil || !strings.Contains(err.Error(), "not valid TOML") {
		t.Fatalf("%v", err)
	}
}

func TestKubernetesServiceLinksIgnored(t *testing.T) {
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
