// Package config loads the gateway's one TOML file: defaults that work for
// every key, environment overrides for secrets and addresses, and validation
// that reports every bad or unknown key in one run.
package config

import (
	"encoding"
	"errors"
	"fmt"
	"maps"
	"math"
	"net"
	"net/url"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/fusioo-gateway/gateway/internal/quota"
)

// EnvPrefix starts every environment override: FUSIOO_GATEWAY_REDIS_URL
// overrides redis.url, FUSIOO_GATEWAY_QUOTA_LIMIT overrides quota.limit.
const EnvPrefix = "FUSIOO_GATEWAY_"

// Duration is a time.Duration written as a Go duration string ("1h", "250ms").
type Duration struct{ time.Duration }

// Config is the whole file. Field tags name the TOML keys; `secret:"true"`
// marks values Redacted hides.
type Config struct {
	Server    Server    `toml:"server"`
	Upstream  Upstream  `toml:"upstream"`
	Quota     Quota     `toml:"quota"`
	Redis     Redis     `toml:"redis"`
	Smoothing Smoothing `toml:"smoothing"`
	Queue     Queue     `toml:"queue"`
	Retry     Retry     `toml:"retry"`
	Coalesce  Coalesce  `toml:"coalesce"`
	Log       Log       `toml:"log"`
	Routes    []Route   `toml:"routes"`
	Cache     []Cache   `toml:"cache"`
}

// maxHeapFloor bounds server.gc_heap_floor: a floor is a few MB, a
// larger one is a typo, not a tuning.
const maxHeapFloor = 4 << 30

// Server configures the two listeners.
type Server struct {
	Listen            string   `toml:"listen"`
	AdminListen       string   `toml:"admin_listen"`
	ShutdownTimeout   Duration `toml:"shutdown_timeout"`
	ReadHeaderTimeout Duration `toml:"read_header_timeout"`
	BodyTimeout       Duration `toml:"body_timeout"`
	IdleTimeout       Duration `toml:"idle_timeout"`
	MaxBodyBytes      int64    `toml:"max_body_bytes"`
	MaxHeaderBytes    int      `toml:"max_header_bytes"`
	// GCHeapFloor is the heap the collector may let garbage grow to
	// before collecting while the live heap is smaller (bytes, at most
	// 4 GB; 0: Go's own pacing, a 4 MB goal at least).
	GCHeapFloor int64 `toml:"gc_heap_floor"`
	Pprof       bool  `toml:"pprof"`
}

// Upstream is the one place requests go.
type Upstream struct {
	URL                 string   `toml:"url"`
	Timeout             Duration `toml:"timeout"`
	DialTimeout         Duration `toml:"dial_timeout"`
	MaxIdleConnsPerHost int      `toml:"max_idle_conns_per_host"`
	MaxPause            Duration `toml:"max_pause"`
	BodyTimeout         Duration `toml:"body_timeout"`
	// ForwardedHeaders decides what the upstream learns of the client's
	// address: "none" (the default), "set" or "append" (see
	// config.example.toml).
	ForwardedHeaders string `toml:"forwarded_headers"`
}

// Quota is each token's allowance.
type Quota struct {
	Limit          int      `toml:"limit"`
	Window         Duration `toml:"window"`
	Margin         Duration `toml:"margin"`
	Buckets        int      `toml:"buckets"`
	Store          string   `toml:"store"`
	FallbackShare  float64  `toml:"fallback_share"`
	OnStoreFailure string   `toml:"on_store_failure"`
	PolicyName     string   `toml:"policy_name"`
	KeySecret      string   `toml:"key_secret" secret:"true"`
	MaxKeys        int      `toml:"max_keys"`
}

// Redis configures the shared quota store.
type Redis struct {
	URL              string   `toml:"url" secret:"true"`
	SentinelMaster   string   `toml:"sentinel_master"`
	SentinelAddrs    []string `toml:"sentinel_addrs"`
	SentinelPassword string   `toml:"sentinel_password" secret:"true"`
	ClusterAddrs     []string `toml:"cluster_addrs"`
	Username         string   `toml:"username"`
	Password         string   `toml:"password" secret:"true"`
	TLS              bool     `toml:"tls"`
	CAFile           string   `toml:"ca_file"`
	CertFile         string   `toml:"cert_file"`
	KeyFile          string   `toml:"key_file"`
	ServerName       string   `toml:"server_name"`
	KeyPrefix        string   `toml:"key_prefix"`
	Timeout          Duration `toml:"timeout"`
	PoolSize         int      `toml:"pool_size"`
	AutoPipeline     bool     `toml:"auto_pipeline"`
	LeaseTime        Duration `toml:"lease_time"`
	LeaseMax         int      `toml:"lease_max"`
}

// Smoothing is the local per-key rate (0 = derived from the quota).
type Smoothing struct {
	Rate           float64 `toml:"rate"`
	Burst          int     `toml:"burst"`
	AnonymousRate  float64 `toml:"anonymous_rate"`
	AnonymousBurst int     `toml:"anonymous_burst"`
}

// Queue bounds waiting for quota.
type Queue struct {
	MaxWait   Duration `toml:"max_wait"`
	MaxDepth  int      `toml:"max_depth"`
	MaxQueued int      `toml:"max_queued"`
}

// Retry tunes the retry policy.
type Retry struct {
	MaxAttempts       int      `toml:"max_attempts"`
	BaseDelay         Duration `toml:"base_delay"`
	MaxDelay          Duration `toml:"max_delay"`
	BudgetRatio       float64  `toml:"budget_ratio"`
	MaxBodyBytes      int64    `toml:"max_body_bytes"`
	MaxBufferBytes    int64    `toml:"max_buffer_bytes"`
	IdempotentWrites  bool     `toml:"idempotent_writes"`
	SerializeCooldown Duration `toml:"serialize_cooldown"`
}

// Coalesce shares one upstream exchange among identical reads of one
// token in flight together.
type Coalesce struct {
	Enabled        bool  `toml:"enabled"`
	MaxBufferBytes int   `toml:"max_buffer_bytes"`
	MaxTotalBytes  int64 `toml:"max_total_bytes"`
}

// Cache opts one read route into the response cache ([[cache]]).
type Cache struct {
	Route    string   `toml:"route"`
	TTL      Duration `toml:"ttl"`
	MaxBytes int64    `toml:"max_bytes"`
}

// Log configures zap.
type Log struct {
	Level  string `toml:"level"`
	Format string `toml:"format"`
}

// Route overrides or extends one entry of the built-in route table.
type Route struct {
	Method   string `toml:"method"`
	Template string `toml:"template"`
	Charged  bool   `toml:"charged"`
	Kind     string `toml:"kind"`
}

// Default returns the configuration used for every key a file leaves out.
func Default() Config {
	return Config{
		Server: Server{
			Listen:            ":8080",
			AdminListen:       "127.0.0.1:9090",
			ShutdownTimeout:   Duration{25 * time.Second},
			ReadHeaderTimeout: Duration{10 * time.Second},
			BodyTimeout:       Duration{30 * time.Second},
			IdleTimeout:       Duration{120 * time.Second},
			MaxBodyBytes:      26 << 20,
			MaxHeaderBytes:    64 << 10,
			GCHeapFloor:       16 << 20,
		},
		Upstream: Upstream{
			URL:                 "https://api.fusioo.com",
			Timeout:             Duration{60 * time.Second},
			DialTimeout:         Duration{5 * time.Second},
			MaxIdleConnsPerHost: 256,
			MaxPause:            Duration{time.Minute},
			BodyTimeout:         Duration{30 * time.Second},
			ForwardedHeaders:    "none",
		},
		Quota: Quota{
			Limit:          1000,
			Window:         Duration{time.Hour},
			Margin:         Duration{0}, // derived: QuotaMargin
			Buckets:        60,
			Store:          "memory",
			FallbackShare:  0.5,
			MaxKeys:        100000,
			OnStoreFailure: "", // local once Redis has answered
			PolicyName:     "hourly",
		},
		Redis: Redis{
			KeyPrefix:    "fgw",
			Timeout:      Duration{50 * time.Millisecond},
			PoolSize:     0,
			LeaseTime:    Duration{250 * time.Millisecond},
			AutoPipeline: true,
			LeaseMax:     32,
		},
		Smoothing: Smoothing{AnonymousRate: 10, AnonymousBurst: 20},
		Queue:     Queue{MaxWait: Duration{30 * time.Second}, MaxDepth: 1000, MaxQueued: 10000},
		Coalesce:  Coalesce{Enabled: true, MaxBufferBytes: 1 << 20, MaxTotalBytes: 64 << 20},
		Retry: Retry{
			MaxAttempts:       5,
			BaseDelay:         Duration{100 * time.Millisecond},
			MaxDelay:          Duration{5 * time.Second},
			BudgetRatio:       0.2,
			MaxBodyBytes:      1 << 20,
			MaxBufferBytes:    64 << 20,
			IdempotentWrites:  true,
			SerializeCooldown: Duration{10 * time.Second},
		},
		Log: Log{Level: "info", Format: "json"},
	}
}

// Errors is every problem found in one load, one per key.
type Errors []error

func (e Errors) Error() string {
	msgs := make([]string, len(e))
	for i, err := range e {
		msgs[i] = err.Error()
	}
	return strings.Join(msgs, "\n")
}

// Unwrap lets errors.Is and errors.As see each problem.
func (e Errors) Unwrap() []error { return e }

// Load reads path (TOML), applies environment overrides from env (a list of
// KEY=VALUE, as os.Environ returns) and validates the result. The error,
// when not nil, is an Errors naming every bad key.
func Load(path string, env []string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	return Parse(data, env)
}

// Parse is Load on the file's contents.
func Parse(data []byte, env []string) (Config, error) {
	var doc map[string]toml.Primitive
	md, err := toml.Decode(string(data), &doc)
	if err != nil {
		return Config{}, Errors{syntaxError(data, err)}
	}
	cfg := Default()
	d := decoder{md: md}
	d.fields(doc, reflect.ValueOf(&cfg).Elem(), "")
	slices.Sort(d.unknown)
	for _, k := range d.unknown {
		d.errs = append(d.errs, fmt.Errorf("%s: unknown key", k))
	}
	applyEnv(&cfg, env, &d.errs)
	if errs := append(d.errs, cfg.validate()...); len(errs) > 0 {
		return Config{}, errs
	}
	return cfg, nil
}

var durationType = reflect.TypeOf(Duration{})

// syntaxError reports a TOML syntax error; when it is in the value of a
// secret key (or of any key so named, as the parser may only know the
// section), only where it is: the parser's message may quote the value.
func syntaxError(data []byte, err error) error {
	var pe toml.ParseError
	if !errors.As(err, &pe) {
		return fmt.Errorf("config is not valid TOML: %s", elideQuoted(err.Error()))
	}
	// The key as written may be a misspelt secret's ("Password",
	// "key-secret"): compared by its letters only.
	secret := false
	leaf := func(k string) string { return normKey(k[strings.LastIndex(k, ".")+1:]) }
	if lines := strings.Split(string(data), "\n"); pe.Position.Line >= 1 && pe.Position.Line <= len(lines) {
		k, _, _ := strings.Cut(lines[pe.Position.Line-1], "=")
		written := leaf(strings.Trim(strings.TrimSpace(k), `"'`))
		for sk := range secretKeys() {
			secret = secret || written == leaf(sk) || leaf(pe.LastKey) == leaf(sk)
		}
	}
	if secret {
		return fmt.Errorf("config is not valid TOML: line %d, in the value of a secret key (not shown)", pe.Position.Line)
	}
	// The parser quotes what it found, which may be a value: never shown.
	return fmt.Errorf("config is not valid TOML: line %d: %s", pe.Position.Line, elideQuoted(pe.Message))
}

// quoted matches a double-quoted span of a parser message.
var quoted = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)

// elideQuoted replaces every quoted span of msg: a parser quotes the
// input it choked on, which may be a secret.
func elideQuoted(msg string) string { return quoted.ReplaceAllString(msg, `"…"`) }

// normKey is a key's letters and digits, lower-cased: how a misspelt
// secret key is still recognised as one.
func normKey(k string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			return r
		case r >= 'A' && r <= 'Z':
			return r + 'a' - 'A'
		}
		return -1
	}, k)
}

// secretKeys returns the keys whose fields are tagged secret, such as
// "redis.password".
func secretKeys() map[string]bool {
	keys := map[string]bool{}
	walkLeaves(reflect.ValueOf(&Config{}).Elem(), "", func(key string, _ reflect.Value, secret bool) {
		if secret {
			keys[key] = true
		}
	})
	return keys
}

// decoder has the library decode a parsed file one key at a time, because
// one Decode into Config stops at the first value of the wrong type and a
// run must report every bad key.
type decoder struct {
	md      toml.MetaData
	errs    Errors
	unknown []string // full keys, such as "routes[0].bogus"
}

// fields decodes each key of a TOML table into the field of the struct dst
// its toml tag names, exactly (the library's own struct decoding would also
// take "Listen" for "listen"). A key no field names is unknown: found here,
// not by MetaData.Undecoded, which knows no route index and counts every key
// of a table decoded into a map as decoded.
func (d *decoder) fields(table map[string]toml.Primitive, dst reflect.Value, prefix string) {
	t := dst.Type()
	for i := 0; i < t.NumField(); i++ {
		name := t.Field(i).Tag.Get("toml")
		if p, ok := table[name]; ok {
			delete(table, name)
			d.value(p, dst.Field(i), prefix+name, t.Field(i).Tag.Get("secret") == "true")
		}
	}
	for name := range table {
		d.unknown = append(d.unknown, prefix+name)
	}
}

// value decodes the TOML value p into f, key by key for tables. A leaf is
// decoded by the library into a fresh value, so that a bad one leaves f at
// its default and validate does not report the key a second time.
func (d *decoder) value(p toml.Primitive, f reflect.Value, key string, secret bool) {
	var raw any // the value as parsed, for errors
	_ = d.md.PrimitiveDecode(p, &raw)
	var err error
	switch _, isString := raw.(string); {
	case f.Kind() == reflect.Struct && f.Type() != durationType:
		var table map[string]toml.Primitive // left nil, silently, for a non-table
		if err = d.md.PrimitiveDecode(p, &table); err == nil && table != nil {
			d.fields(table, f, key+".")
			return
		}
	case f.Kind() == reflect.Slice && f.Type().Elem().Kind() == reflect.Struct:
		var items []toml.Primitive
		if err = d.md.PrimitiveDecode(p, &items); err == nil {
			f.Set(reflect.MakeSlice(f.Type(), len(items), len(items)))
			for i, item := range items {
				d.value(item, f.Index(i), fmt.Sprintf("%s[%d]", key, i), secret)
			}
			return
		}
	case f.Type() == durationType && !isString:
		// Not for UnmarshalText: the library hands it any scalar as text,
		// and the integer 0 would pass for "0".
	default:
		v := reflect.New(f.Type())
		if err = d.md.PrimitiveDecode(p, v.Interface()); err == nil {
			f.Set(v.Elem())
			return
		}
	}
	// The library's error is not passed on as it is: it names Go types
	// ("int64", "map[string]any"), and some (a bad duration, a float out of
	// range) quote the value, which for a secret is never shown.
	msg := fmt.Sprintf("%s: want %s, got %s", key, want(f.Type()), tomlType(raw))
	var pe toml.ParseError
	switch {
	case secret:
		msg += " (not shown: it is a secret)"
	case errors.As(err, &pe):
		msg += ": " + pe.Message
	case isScalar(raw):
		msg += fmt.Sprintf(" %v", raw)
	default:
		// A table or an array may hold a secret (a [[redis]] section) or
		// credentials (upstream.url in an array): only its type is shown.
	}
	d.errs = append(d.errs, errors.New(msg))
}

// isScalar reports whether a parsed value is a string, number, boolean or
// date: safe to quote for a key that is not secret.
func isScalar(v any) bool {
	switch v.(type) {
	case []any, []map[string]any, map[string]any:
		return false
	}
	return true
}

// want names what a field of type t takes, for errors.
func want(t reflect.Type) string {
	switch {
	case t == durationType:
		return `a duration string such as "30s"`
	case t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Struct:
		return "an array of tables"
	}
	return map[reflect.Kind]string{reflect.Struct: "a table", reflect.Slice: "an array of strings", reflect.String: "a string",
		reflect.Bool: "true or false", reflect.Int: "an integer", reflect.Int64: "an integer", reflect.Float64: "a number"}[t.Kind()]
}

// tomlType names the TOML type of a parsed value, for errors. It goes by
// the value, not MetaData.Type, which keeps one type per key for all the
// routes.
func tomlType(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case time.Time:
		return "a date-time"
	case []any, []map[string]any:
		return "an array"
	case map[string]any:
		return "a table"
	}
	return fmt.Sprintf("%T", v)
}

// applyEnv overrides scalar keys from FUSIOO_GATEWAY_SECTION_KEY variables;
// lists take comma-separated values. A bad value leaves its key as it was,
// so that validate does not report the key a second time.
func applyEnv(cfg *Config, env []string, errs *Errors) {
	vars := map[string]string{}
	for _, kv := range env {
		if k, val, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, EnvPrefix) {
			vars[k] = val
		}
	}
	walkLeaves(reflect.ValueOf(cfg).Elem(), "", func(key string, f reflect.Value, secret bool) {
		name := EnvPrefix + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
		s, ok := vars[name]
		if !ok {
			return
		}
		delete(vars, name)
		v := reflect.New(f.Type())
		var err error
		switch p := v.Interface().(type) {
		case encoding.TextUnmarshaler:
			err = p.UnmarshalText([]byte(s))
		case *string:
			*p = s
		case *bool:
			*p, err = strconv.ParseBool(s)
		case *int:
			*p, err = strconv.Atoi(s)
		case *int64:
			*p, err = strconv.ParseInt(s, 10, 64)
		case *float64:
			*p, err = strconv.ParseFloat(s, 64)
		case *[]string:
			*p = []string{}
			for item := range strings.SplitSeq(s, ",") {
				if item = strings.TrimSpace(item); item != "" {
					*p = append(*p, item)
				}
			}
		default:
			err = errors.ErrUnsupported
		}
		if err != nil {
			*errs = append(*errs, fmt.Errorf("%s (from %s): want %s, got %s", key, name, want(f.Type()), shown(s, secret)))
			return
		}
		f.Set(v.Elem())
	})
	for _, k := range slices.Sorted(maps.Keys(vars)) {
		if !serviceLink.MatchString(k) {
			*errs = append(*errs, fmt.Errorf("%s: unknown environment override (no such key)", k))
		}
	}
}

// serviceLink matches the variables Kubernetes injects for a Service named
// fusioo-gateway (FUSIOO_GATEWAY_SERVICE_HOST, FUSIOO_GATEWAY_PORT_8080_TCP…):
// they are not overrides, and must not stop the gateway from starting.
var serviceLink = regexp.MustCompile(`^FUSIOO_GATEWAY_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT(_[0-9]+_(TCP|UDP|SCTP)(_[A-Z]+)?)?)$`)

// walkLeaves calls fn for every scalar or list key of the sections (not the
// route list, which has no environment form).
// fn is told whether the key is tagged secret.
func walkLeaves(v reflect.Value, prefix string, fn func(key string, f reflect.Value, secret bool)) {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f, name := v.Field(i), t.Field(i).Tag.Get("toml")
		secret := t.Field(i).Tag.Get("secret") == "true"
		switch {
		case f.Type() == durationType:
			fn(prefix+name, f, secret)
		case f.Kind() == reflect.Struct:
			walkLeaves(f, prefix+name+".", fn)
		case f.Kind() == reflect.Slice && f.Type().Elem().Kind() == reflect.Struct:
		default:
			fn(prefix+name, f, secret)
		}
	}
}

// redisKey names a quota.RedisClientOptions field by its TOML key: the
// redis.* key of the Redis field of the same name; the database lives in
// redis.url.
func redisKey(field string) string {
	if f, ok := reflect.TypeOf(Redis{}).FieldByName(field); ok {
		return "redis." + f.Tag.Get("toml")
	}
	if field == "DB" {
		return "redis.url"
	}
	return "redis." + strings.ToLower(field)
}

// shown quotes an environment value for an error, unless it is a secret's.
func shown(s string, secret bool) string {
	if secret {
		return "a value not shown (it is a secret)"
	}
	return strconv.Quote(s)
}

// validate checks values, not types: every problem, not the first.
func (c *Config) validate() Errors {
	var errs Errors
	add := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	checkAddr := func(key, addr string) {
		if _, port, err := net.SplitHostPort(addr); err != nil {
			add(key, "want host:port, got %q (%v)", addr, err)
		} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			add(key, "bad port in %q", addr)
		}
	}
	positive := func(key string, d Duration) {
		if d.Duration <= 0 {
			add(key, "must be positive, got %s", d)
		}
	}
	checkAddr("server.listen", c.Server.Listen)
	checkAddr("server.admin_listen", c.Server.AdminListen)
	if c.Server.Listen == c.Server.AdminListen && !strings.HasSuffix(c.Server.Listen, ":0") {
		add("server.admin_listen", "must differ from server.listen: metrics and admin listen on their own address")
	}
	positive("server.shutdown_timeout", c.Server.ShutdownTimeout)
	positive("server.read_header_timeout", c.Server.ReadHeaderTimeout)
	positive("server.idle_timeout", c.Server.IdleTimeout)
	if c.Server.MaxBodyBytes <= 0 {
		add("server.max_body_bytes", "must be positive, got %d", c.Server.MaxBodyBytes)
	}
	if c.Server.GCHeapFloor < 0 || c.Server.GCHeapFloor > maxHeapFloor {
		add("server.gc_heap_floor", "must be 0 (off) or a size in bytes up to %d, got %d", int64(maxHeapFloor), c.Server.GCHeapFloor)
	}
	if c.Server.MaxHeaderBytes < 4096 {
		add("server.max_header_bytes", "must be at least 4096 (Fusioo tokens alone are about 1 KB), got %d", c.Server.MaxHeaderBytes)
	}

	// The URL is shown redacted, or not at all: it may carry a password.
	if u, err := url.Parse(c.Upstream.URL); err != nil {
		add("upstream.url", "not a valid URL (not shown: it may carry credentials)")
	} else if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		if strings.Contains(c.Upstream.URL, "@") {
			add("upstream.url", "want an absolute http or https URL (not shown: it may carry credentials)")
		} else {
			add("upstream.url", "want an absolute http or https URL, got %q", c.Upstream.URL)
		}
	} else if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		add("upstream.url", "must not carry credentials, a query or a fragment")
	}
	positive("upstream.timeout", c.Upstream.Timeout)
	positive("upstream.dial_timeout", c.Upstream.DialTimeout)
	if c.Upstream.MaxIdleConnsPerHost <= 0 {
		add("upstream.max_idle_conns_per_host", "must be positive, got %d", c.Upstream.MaxIdleConnsPerHost)
	}
	switch c.Upstream.ForwardedHeaders {
	case "none", "set", "append":
	default:
		add("upstream.forwarded_headers", "want \"none\", \"set\" or \"append\", got %q", c.Upstream.ForwardedHeaders)
	}

	if c.Quota.Limit <= 0 {
		add("quota.limit", "must be positive, got %d", c.Quota.Limit)
	}
	positive("quota.window", c.Quota.Window)
	if c.Quota.Margin.Duration < 0 {
		add("quota.margin", "must not be negative (0 = derived from the window), got %s", c.Quota.Margin)
	} else if c.Quota.Window.Duration > 0 && c.Quota.Margin.Duration >= c.Quota.Window.Duration {
		add("quota.margin", "must be shorter than quota.window (%s), got %s", c.Quota.Window, c.Quota.Margin)
	}
	if c.Quota.Buckets < 1 || c.Quota.Buckets > 3600 {
		add("quota.buckets", "must be between 1 and 3600, got %d", c.Quota.Buckets)
	}
	if c.Quota.MaxKeys <= 0 {
		add("quota.max_keys", "must be positive, got %d", c.Quota.MaxKeys)
	}
	switch c.Quota.Store {
	case "memory":
	case "redis":
		// The client's rules are the client's (quota): what startup
		// refuses, -check refuses, each problem once.
		if err := c.RedisClientOptions().Validate(); err != nil {
			all := []error{err}
			if j, ok := err.(interface{ Unwrap() []error }); ok {
				all = j.Unwrap()
			}
			for _, e := range all {
				var oe *quota.OptionError
				if errors.As(e, &oe) {
					e = errors.New(oe.Render(redisKey))
				}
				errs = append(errs, e)
			}
		}
	default:
		add("quota.store", "want \"memory\" or \"redis\", got %q", c.Quota.Store)
	}
	if c.Quota.FallbackShare <= 0 || c.Quota.FallbackShare > 1 || math.IsNaN(c.Quota.FallbackShare) {
		add("quota.fallback_share", "must be in (0, 1], got %v", c.Quota.FallbackShare)
	}
	switch c.Quota.OnStoreFailure {
	case "", "local", "reject":
	default:
		add("quota.on_store_failure", "want \"\" (local once Redis has answered), \"local\" or \"reject\", got %q", c.Quota.OnStoreFailure)
	}
	if c.Quota.PolicyName == "" || strings.ContainsAny(c.Quota.PolicyName, "\"\\;,= ") {
		add("quota.policy_name", "must be a non-empty token without quotes, spaces or ;,=, got %q", c.Quota.PolicyName)
	}

	if c.Redis.KeyPrefix == "" || strings.ContainsAny(c.Redis.KeyPrefix, "{} ") {
		add("redis.key_prefix", "must be non-empty without braces or spaces, got %q", c.Redis.KeyPrefix)
	}
	if c.Quota.Store != "redis" {
		// With redis, the client's Validate (above) reports it.
		positive("redis.timeout", c.Redis.Timeout)
	}
	positive("upstream.max_pause", c.Upstream.MaxPause)
	positive("upstream.body_timeout", c.Upstream.BodyTimeout)
	positive("server.body_timeout", c.Server.BodyTimeout)
	if c.Redis.LeaseTime.Duration < 0 || c.Redis.LeaseTime.Duration > time.Second {
		add("redis.lease_time", "must be between 0 (no leases) and 1s, got %s", c.Redis.LeaseTime)
	}
	if c.Redis.LeaseMax < 0 || c.Redis.LeaseMax > 1000 {
		add("redis.lease_max", "must be between 0 (no leases) and 1000, got %d", c.Redis.LeaseMax)
	}

	if c.Smoothing.Rate < 0 || math.IsNaN(c.Smoothing.Rate) {
		add("smoothing.rate", "must not be negative (0 = derived from the quota), got %v", c.Smoothing.Rate)
	}
	if c.Smoothing.Burst < 0 {
		add("smoothing.burst", "must not be negative (0 = derived), got %d", c.Smoothing.Burst)
	}
	if c.Smoothing.Rate > 0 && c.Quota.Window.Duration > 0 && c.Smoothing.Rate < float64(c.Quota.Limit)/c.Quota.Window.Seconds() {
		add("smoothing.rate", "%v/s is slower than the quota (%d per %s): the gateway would never use its quota", c.Smoothing.Rate, c.Quota.Limit, c.Quota.Window)
	}
	if c.Smoothing.AnonymousRate < 0 || c.Smoothing.AnonymousBurst < 0 {
		add("smoothing.anonymous_rate", "rate and burst must not be negative")
	}

	if c.Queue.MaxWait.Duration < 0 {
		add("queue.max_wait", "must not be negative, got %s", c.Queue.MaxWait)
	}
	if c.Queue.MaxDepth < 0 {
		add("queue.max_depth", "must not be negative, got %d", c.Queue.MaxDepth)
	}
	if c.Queue.MaxQueued < 0 {
		add("queue.max_queued", "must not be negative, got %d", c.Queue.MaxQueued)
	}

	if c.Coalesce.MaxBufferBytes < 1 {
		add("coalesce.max_buffer_bytes", "must be positive, got %d", c.Coalesce.MaxBufferBytes)
	}
	if c.Coalesce.MaxTotalBytes < int64(c.Coalesce.MaxBufferBytes) {
		add("coalesce.max_total_bytes", "must be at least coalesce.max_buffer_bytes (%d), got %d", c.Coalesce.MaxBufferBytes, c.Coalesce.MaxTotalBytes)
	}
	if c.Retry.MaxAttempts < 1 || c.Retry.MaxAttempts > 20 {
		add("retry.max_attempts", "must be between 1 (no retry) and 20, got %d", c.Retry.MaxAttempts)
	}
	positive("retry.base_delay", c.Retry.BaseDelay)
	if c.Retry.MaxDelay.Duration < c.Retry.BaseDelay.Duration {
		add("retry.max_delay", "must be at least retry.base_delay (%s), got %s", c.Retry.BaseDelay, c.Retry.MaxDelay)
	}
	if c.Retry.BudgetRatio < 0 || c.Retry.BudgetRatio > 1 || math.IsNaN(c.Retry.BudgetRatio) {
		add("retry.budget_ratio", "must be in [0, 1], got %v", c.Retry.BudgetRatio)
	}
	if c.Retry.MaxBodyBytes < 0 {
		add("retry.max_body_bytes", "must not be negative, got %d", c.Retry.MaxBodyBytes)
	}
	if c.Retry.MaxBufferBytes < c.Retry.MaxBodyBytes {
		add("retry.max_buffer_bytes", "must be at least retry.max_body_bytes (%d), got %d", c.Retry.MaxBodyBytes, c.Retry.MaxBufferBytes)
	}
	if c.Retry.SerializeCooldown.Duration < 0 {
		add("retry.serialize_cooldown", "must not be negative, got %s", c.Retry.SerializeCooldown)
	}

	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		add("log.level", "want debug, info, warn or error, got %q", c.Log.Level)
	}
	if c.Log.Format != "json" && c.Log.Format != "console" {
		add("log.format", "want \"json\" or \"console\", got %q", c.Log.Format)
	}

	seen := map[string]bool{}
	for i, cr := range c.Cache {
		key := fmt.Sprintf("cache[%d]", i)
		method, tmpl, ok := strings.Cut(cr.Route, " ")
		switch {
		case !ok || method == "" || !strings.HasPrefix(tmpl, "/"):
			add(key+".route", `want a route of the table, "METHOD /template" (such as "GET /records/apps/{app}"), got %q`, cr.Route)
		case seen[cr.Route]:
			add(key+".route", "%q has a [[cache]] entry already", cr.Route)
		}
		seen[cr.Route] = true
		if cr.TTL.Duration <= 0 {
			add(key+".ttl", "must be positive, got %s", cr.TTL)
		}
		if cr.MaxBytes <= 0 {
			add(key+".max_bytes", "must be positive, got %d", cr.MaxBytes)
		}
	}
	for i, r := range c.Routes {
		key := fmt.Sprintf("routes[%d]", i)
		if r.Method == "" {
			add(key+".method", "required")
		}
		if !strings.HasPrefix(r.Template, "/") {
			add(key+".template", "must start with /, got %q", r.Template)
		}
		switch r.Kind {
		case "read", "write", "create", "upload":
		default:
			add(key+".kind", "want read, write, create or upload, got %q", r.Kind)
		}
	}
	return errs
}

// RedisClientOptions are the redis.* settings as the Redis client takes
// them.
func (c *Config) RedisClientOptions() quota.RedisClientOptions {
	r := c.Redis
	return quota.RedisClientOptions{
		URL:              r.URL,
		SentinelMaster:   r.SentinelMaster,
		SentinelAddrs:    r.SentinelAddrs,
		SentinelPassword: r.SentinelPassword,
		ClusterAddrs:     r.ClusterAddrs,
		Username:         r.Username,
		Password:         r.Password,
		TLS:              r.TLS,
		CAFile:           r.CAFile,
		CertFile:         r.CertFile,
		KeyFile:          r.KeyFile,
		ServerName:       r.ServerName,
		PoolSize:         r.PoolSize,
		Timeout:          r.Timeout.Duration,
	}
}

// Bounds of the derived quota.margin: MarginShare of the window, at most
// MaxDerivedMargin.
const (
	MarginShare      = 50 // the window's 1/50th: 2% of the quota
	MaxDerivedMargin = 5 * time.Second
)

// QuotaMargin returns quota.margin: configured, or derived so it fits the
// window: 1/MarginShare of it, at most MaxDerivedMargin (an hour: 5 s; a
// minute: 1.2 s; 10 s: 200 ms; 6 s: 120 ms). A counted slot is held for
// window + margin, so a fixed margin would cost short windows most of
// their quota (5 s on a 6 s window: 45%), while 5 s is ample for the send
// time of a request to Fusioo across the internet.
func (c *Config) QuotaMargin() time.Duration {
	if m := c.Quota.Margin.Duration; m > 0 {
		return m
	}
	return min(c.Quota.Window.Duration/MarginShare, MaxDerivedMargin)
}

// SmoothingRate returns the local per-key rate (per second) and burst:
// configured, or derived so smoothing is never slower than the quota: twice
// the quota's average rate, at least 10/s, with a burst of at least 20.
func (c *Config) SmoothingRate() (float64, int) {
	r, b := c.Smoothing.Rate, c.Smoothing.Burst
	if r == 0 {
		r = max(10, 2*float64(c.Quota.Limit)/c.Quota.Window.Seconds())
	}
	if b == 0 {
		b = max(20, int(math.Ceil(r)))
	}
	return r, b
}

// Redacted returns a copy safe to log: every secret replaced.
func (c Config) Redacted() Config {
	v := reflect.ValueOf(&c).Elem()
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		sec := v.Field(i)
		if sec.Kind() != reflect.Struct || sec.Type() == durationType {
			continue
		}
		st := sec.Type()
		for j := 0; j < st.NumField(); j++ {
			if st.Field(j).Tag.Get("secret") == "true" && sec.Field(j).String() != "" {
				sec.Field(j).SetString(redact(st.Field(j).Tag.Get("toml"), sec.Field(j).String()))
			}
		}
	}
	c.Routes = append([]Route(nil), c.Routes...)
	c.Cache = append([]Cache(nil), c.Cache...)
	return c
}

// Settings returns every key of the file and its value, keyed as the
// file writes them ("queue.max_wait": "5s"), secrets redacted: what the
// startup log shows. The route table is a list of "METHOD template"
// with its charging.
func (c Config) Settings() map[string]any {
	out := map[string]any{}
	walkLeaves(reflect.ValueOf(&c).Elem(), "", func(key string, f reflect.Value, secret bool) {
		v := f.Interface()
		switch x := v.(type) {
		case Duration:
			v = x.String()
		case string:
			if secret && x != "" {
				v = redact(key[strings.LastIndex(key, ".")+1:], x)
			}
		}
		out[key] = v
	})
	routes := make([]string, 0, len(c.Routes))
	for _, r := range c.Routes {
		routes = append(routes, fmt.Sprintf("%s %s charged=%v kind=%s", r.Method, r.Template, r.Charged, r.Kind))
	}
	out["routes"] = routes
	caches := make([]string, 0, len(c.Cache))
	for _, cr := range c.Cache {
		caches = append(caches, fmt.Sprintf("%s ttl=%s max_bytes=%d", cr.Route, cr.TTL, cr.MaxBytes))
	}
	out["cache"] = caches
	return out
}

func redact(key, v string) string {
	if key == "url" {
		// Only a URL with a host keeps its shape: "redis:user:pw@host"
		// parses with no user, its password in the opaque part.
		if u, err := url.Parse(v); err == nil && u.Opaque == "" && u.Host != "" {
			if u.User != nil {
				u.User = url.UserPassword("REDACTED", "REDACTED")
			}
			return u.String()
		}
	}
	return "REDACTED"
}

// String renders a duration the way the file writes it.
func (d Duration) String() string { return d.Duration.String() }

// MarshalText lets a redacted config be logged or printed as TOML.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.Duration.String()), nil }

// UnmarshalText lets the TOML library, and environment overrides, read a
// duration string; a bad one leaves d as it was.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err == nil {
		d.Duration = v
	}
	return err
}
