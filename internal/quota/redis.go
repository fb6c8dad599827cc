package quota

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	_ "embed" // the Lua scripts
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

var (
	//go:embed redis_take.lua
	takeLua string
	//go:embed redis_block.lua
	blockLua string
	//go:embed redis_writeback.lua
	writeBackLua string
	//go:embed redis_release.lua
	releaseLua string
	//go:embed redis_heartbeat.lua
	heartbeatLua string

	// The scripts are shared by every RedisStore: go-redis's Script runs
	// EVALSHA and falls back to EVAL (which caches the script) on NOSCRIPT,
	// so a Redis that restarted empty costs one extra round trip, once.
	takeScript      = redis.NewScript(takeLua)
	blockScript     = redis.NewScript(blockLua)
	writeBackScript = redis.NewScript(writeBackLua)
	releaseScript   = redis.NewScript(releaseLua)
	heartbeatScript = redis.NewScript(heartbeatLua)
)

var (
	_ Store = (*RedisStore)(nil)
	_ Store = (*FallbackStore)(nil)
)

// RedisOptions tunes a RedisStore.
//
// Zero values follow the convention of every Config and Options struct
// of retry, limiter, quota and proxy (docs/design.md): a zero field means
// none (the feature off, as the field says), never a hidden default; nil
// interfaces mean what the field says; Required fields are refused.
//
// DefaultRedisOptions returns this package's defaults.
type RedisOptions struct {
	// KeyPrefix starts every key name (redis.key_prefix), so several
	// gateways or environments can share one Redis. Required: a key
	// without a prefix could be any application's.
	KeyPrefix string
	// Timeout bounds every call to Redis (redis.timeout), so a Redis that
	// stops answering cannot hold a request longer. Required: unbounded,
	// such a Redis would hold every request.
	Timeout time.Duration
	// AutoPipeline sends concurrent takes through go-redis's autopipeliner
	// (redis.auto_pipeline): each take is still its own atomic script, but
	// scripts from concurrent requests share one write and one read.
	AutoPipeline bool
	// MaxHold is the longest Take.Hold the store honours (cmd/gateway sets
	// three lease times: a refill holds up to 2.5): a take asking to hold
	// longer is an ordinary take, its one slot counted now and Granted 0.
	// It also bounds how far ahead reconciliation writes buckets back.
	// 0: no leases.
	MaxHold time.Duration
	// Settle is how long no slot is used after Redis (a standalone server
	// or a Sentinel-managed primary) lost all its data, so that every
	// replica holding counts can write them back before anything is
	// admitted on them (see redis_take.lua's instance key). 0: no settling,
	// the instance key off; it is always off in a Redis Cluster, where a
	// script may touch one hash slot only.
	Settle time.Duration
	// Clock, when set, replaces Redis TIME in the scripts: tests that run
	// a limiter and the store on one fake clock. Nil (always, outside
	// tests): Redis's own clock, the one clock of every replica.
	Clock clockwork.Clock
}

// DefaultRedisOptions returns a RedisStore's defaults: keys prefixed
// "fgw", calls bounded by 50ms; no leases, no settling, no autopipelining.
func DefaultRedisOptions() RedisOptions {
	return RedisOptions{KeyPrefix: "fgw", Timeout: 50 * time.Millisecond}
}

// Validate reports what NewRedisStore refuses, naming the fields.
func (o RedisOptions) Validate() error {
	var errs []error
	if o.KeyPrefix == "" {
		errs = append(errs, &OptionError{Option: "KeyPrefix", Msg: "is required"})
	}
	if o.Timeout <= 0 {
		errs = append(errs, &OptionError{Option: "Timeout", Msg: fmt.Sprintf("must be positive, got %s", o.Timeout)})
	}
	return errors.Join(errs...)
}

// RedisStore is the quota store shared by every gateway replica: each Take
// is one Lua script, run atomically by Redis, that applies exactly
// MemoryStore's algorithm (window.go: takes per sub-bucket of
// Policy.BucketWidth, reservations for waiting requests, leases, Block) to
// a HASH per key. Any number of replicas therefore never admit more than
// Policy.Limit in any rolling Policy.Window between them, and a slot
// reserved for a waiter at one replica is seen by all.
//
// Time source: the scripts read Redis TIME, never the gateway's clock. Every
// replica's admission is stamped by the one clock that also decides what
// still counts, so skew between the replicas' clocks cannot over-admit (a
// replica whose clock ran ahead would otherwise age other replicas'
// attempts out early). Counts are kept in milliseconds: the bucket width is
// a whole number of milliseconds and the span is rounded up to one.
//
// Keys: one HASH per key, PREFIX:{KEY}:q. The braces make KEY the Redis
// Cluster hash tag, so every script touches one slot; KEY is the hash of a
// token (the proxy never passes a token). Fields are the live buckets'
// counts, the live reservations (one field per distinct start, as many as
// the requests waiting for the key at most) and one field "m" holding the
// key's epoch and the end of a block. The scripts remove dead fields and
// keep the key's TTL at the moment its last count (or block) stops
// counting: an idle token costs nothing.
//
// RedisStore does no I/O until used and starts no goroutine. Wrap it in a
// FallbackStore to survive Redis outages.
type RedisStore struct {
	client  redis.UniversalClient
	policy  Policy
	prefix  string
	timeout time.Duration
	width   int64 // bucket width, ms
	span    int64 // Policy.Span rounded up, ms
	maxHold time.Duration

	settle      time.Duration
	instanceKey string // "" when Settle is 0 or in a Redis Cluster
	// The take script's fixed arguments, boxed once (each take would
	// allocate them again).
	limitAny, widthArg, spanArg, settleArg any

	autoPipe bool
	apOnce   sync.Once
	ap       *redis.AutoPipeliner // made on first use (pipeliner)

	// now, when set (tests only), replaces Redis TIME in the scripts so
	// they can be compared step by step with MemoryStore on a fake clock.
	now func() int64
}

// NewRedisStore returns a store enforcing p in Redis through client. It
// does no I/O and starts nothing. It panics if p or opts does not
// Validate.
func NewRedisStore(client redis.UniversalClient, p Policy, opts RedisOptions) *RedisStore {
	p.mustValidate("NewRedisStore")
	if err := opts.Validate(); err != nil {
		panic("quota: NewRedisStore: RedisOptions." + strings.ReplaceAll(err.Error(), "\n", "; RedisOptions."))
	}
	s := &RedisStore{
		client:   client,
		policy:   p,
		prefix:   opts.KeyPrefix,
		timeout:  opts.Timeout,
		width:    p.BucketWidth().Milliseconds(),
		span:     ceilMillis(p.Span()),
		autoPipe: opts.AutoPipeline,
		settle:   max(opts.Settle, 0),
		maxHold:  max(opts.MaxHold, 0),
	}
	s.limitAny, s.widthArg, s.spanArg, s.settleArg = int64(p.Limit), s.width, s.span, s.settle.Milliseconds()
	if opts.Clock != nil {
		s.now = func() int64 { return opts.Clock.Now().UnixMilli() }
	}
	if _, cluster := client.(*redis.ClusterClient); !cluster && s.settle > 0 {
		s.instanceKey = opts.KeyPrefix + ":instance"
	}
	return s
}

// Policy returns the policy the store enforces.
func (s *RedisStore) Policy() Policy { return s.policy }

// limitArg is the limit the take script enforces: the policy's, less the
// slots held back for silent replicas.
func (s *RedisStore) limitArg(holdBack int) any {
	if holdBack <= 0 {
		return s.limitAny
	}
	return int64(max(s.policy.Limit-holdBack, 0))
}

// Client returns the client the store talks through.
func (s *RedisStore) Client() redis.UniversalClient { return s.client }

// Key returns the name of the HASH that holds key's window. Neither the
// prefix nor key may contain braces, or the hash tag would not be key.
func (s *RedisStore) Key(key string) string { return s.prefix + ":{" + key + "}:q" }

// Take implements Store with one script call (one round trip).
func (s *RedisStore) Take(ctx context.Context, key string, t Take) (Result, error) {
	var res Result
	err := s.TakeKnowing(ctx, key, t, Known{}, &res, new(Answer))
	return res, err
}

// TakeKnowing implements Shared: if Redis lost the key whose epoch the
// caller holds counts of, nothing is admitted and Answer.Lost says so; if
// it lost everything (the instance key is gone), no slot is used for
// Settle, so every replica can write back first. The script enforces the
// limit less k.HoldBack.
func (s *RedisStore) TakeKnowing(ctx context.Context, key string, t Take, k Known, res *Result, info *Answer) error {
	want, hold := 1, int64(0)
	if t.Hold > 0 && t.Hold <= s.maxHold {
		want, hold = max(t.Want, 1), ceilMillis(t.Hold)
	}
	peek := 0
	if t.Peek {
		peek = 1
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	// The wait is rounded down and the smoothing turn up: a slot is never
	// later than the caller can wait, nor earlier than it asked.
	keys := []string{s.Key(key)}
	if s.instanceKey != "" {
		keys = append(keys, s.instanceKey)
	}
	vals, err := s.runTake(ctx, keys,
		s.limitArg(k.HoldBack), s.widthArg, s.spanArg, max(t.Wait, 0).Milliseconds(), s.testNow(), want, hold,
		ceilMillis(max(t.NotBefore, 0)), peek, k.Epoch, k.Instance, s.settleArg)
	if err != nil {
		return fmt.Errorf("redis take: %w", err)
	}
	return s.takeResult(vals, res, info)
}

// takeResult reads the take script's answer. It is apart from TakeKnowing,
// which calls Redis: a frame on that way is stack the handler goroutine
// keeps (see limiter's ask).
func (s *RedisStore) takeResult(vals []any, res *Result, info *Answer) error {
	const nvals = 14
	if len(vals) != nvals {
		return fmt.Errorf("redis take: script returned %d values, want %d", len(vals), nvals)
	}
	var n [nvals]int64
	for i := range n {
		if i == 7 || i == 13 {
			continue // the epochs, strings
		}
		v, ok := vals[i].(int64)
		if !ok {
			return fmt.Errorf("redis take: value %d is %T, want an integer", i, vals[i])
		}
		n[i] = v
	}
	epoch, _ := vals[7].(string)
	inst, _ := vals[13].(string)
	ms := func(v int64) time.Duration { return time.Duration(v) * time.Millisecond }
	*res = Result{
		Allowed:    n[0] == 1,
		Limit:      s.policy.Limit,
		Remaining:  int(n[1]),
		RetryAfter: ms(n[2]),
		ResetAfter: ms(n[3]),
		Blocked:    n[4] == 1,
		Settling:   n[4] == 2,
		Granted:    int(n[8]),
	}
	*info = Answer{At: n[5], Reserved: n[11] == 1, Now: n[6], Epoch: epoch, Lost: n[12] == 1, Instance: inst}
	if res.Allowed {
		res.Delay, res.Usable = ms(n[9]), ms(n[10])
		res.Slot = Reservation{at: info.At, reserved: info.Reserved, epoch: epoch, ok: true}
	}
	return nil
}

// Release implements Store: the slot is given back only if the key is
// still the incarnation that counted it.
func (s *RedisStore) Release(ctx context.Context, key string, r Reservation) error {
	if !r.ok || r.epoch == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := releaseScript.Run(ctx, s.client, []string{s.Key(key)}, slotField(r.at, r.reserved), r.epoch).Err(); err != nil {
		return fmt.Errorf("redis release: %w", err)
	}
	return nil
}

// slotField is the HASH field a slot is counted in (see redis_take.lua).
func slotField(at int64, reserved bool) string {
	if reserved {
		return "q" + strconv.FormatInt(at, 10)
	}
	return strconv.FormatInt(at, 10)
}

// runTake runs the take script on key. Without autopipelining it is the
// client's EVALSHA (EVAL on NOSCRIPT), bounded by ctx like any command.
// With it, the command is submitted to go-redis's asynchronous
// autopipeliner and waited for with ctx: go-redis does not honour a
// command's deadline once it is queued there (a batch stuck on a Redis
// that stopped answering holds every command behind it), so the wait is
// what enforces redis.timeout. A command given up on may still run later;
// it then counts a slot nobody uses, which costs quota, never exceeds it.
func (s *RedisStore) runTake(ctx context.Context, keys []string, args ...any) ([]any, error) {
	ap := s.pipeliner(ctx, keys[0])
	if ap == nil {
		return takeScript.Run(ctx, s.client, keys, args...).Slice()
	}
	eval := func(cmd string, script string) (*redis.Cmd, error) {
		a := make([]any, 0, 3+len(keys)+len(args))
		a = append(a, cmd, script, len(keys))
		for _, k := range keys {
			a = append(a, k)
		}
		c := redis.NewCmd(ctx, append(a, args...)...)
		return c, ap.Submit(ctx, c).WaitContext(ctx)
	}
	c, err := eval("evalsha", takeScript.Hash())
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		// Redis lost its script cache (a restart, SCRIPT FLUSH): EVAL
		// loads it again.
		c, err = eval("eval", takeLua)
	}
	if err != nil {
		return nil, err
	}
	return c.Slice()
}

// pipeliner is the asynchronous autopipeliner takes of the Redis key name
// go through when autopipelining is on (nil otherwise). In a Redis Cluster
// it is the pipeliner of the master serving name's slot: one shared by
// every shard would make a batch wait for its slowest node, so a dead
// master would hold the takes of the healthy ones. Pipeliners start
// goroutines, so they are made on first use, not in the constructor;
// closing the client closes them.
func (s *RedisStore) pipeliner(ctx context.Context, name string) *redis.AutoPipeliner {
	if !s.autoPipe {
		return nil
	}
	if cc, ok := s.client.(*redis.ClusterClient); ok {
		node, err := cc.MasterForKey(ctx, name)
		if err != nil {
			return nil // the cluster client finds the node itself
		}
		ap, err := node.AsyncAutoPipeline()
		if err != nil {
			return nil
		}
		return ap
	}
	s.apOnce.Do(func() {
		if ap, err := s.client.AsyncAutoPipeline(); err == nil {
			s.ap = ap
		}
	})
	return s.ap
}

// Block implements Store: every Take for key, from any replica, is refused
// until Redis TIME + d (a longer block already set is kept).
func (s *RedisStore) Block(ctx context.Context, key string, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := blockScript.Run(ctx, s.client, []string{s.Key(key)}, ceilMillis(d), s.testNow()).Err(); err != nil {
		return fmt.Errorf("redis block: %w", err)
	}
	return nil
}

// replicasKey is the ZSET of the replicas' heartbeats.
func (s *RedisStore) replicasKey() string { return s.prefix + ":replicas" }

// Heartbeat implements Shared: replica b.ID is recorded in a ZSET as alive
// now, unless the call reaches Redis after b.ValidUntil (Redis ms: stale).
func (s *RedisStore) Heartbeat(ctx context.Context, b Beat) (Beats, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	vals, err := heartbeatScript.Run(ctx, s.client, []string{s.replicasKey()}, b.ID, b.ValidUntil,
		b.Alive.Milliseconds(), b.Forget.Milliseconds(), s.testNow()).Int64Slice()
	if err != nil {
		return Beats{}, fmt.Errorf("redis heartbeat: %w", err)
	}
	if len(vals) != 3 {
		return Beats{}, fmt.Errorf("redis heartbeat: script returned %d values, want 3", len(vals))
	}
	return Beats{Silent: int(max(vals[0], 0)), Members: int(vals[1]), Now: vals[2], Stale: vals[0] < 0}, nil
}

// Leave implements Shared.
func (s *RedisStore) Leave(ctx context.Context, id string) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.client.ZRem(ctx, s.replicasKey(), id).Err(); err != nil {
		return fmt.Errorf("redis leave: %w", err)
	}
	return nil
}

// CallTimeout implements Shared: RedisOptions.Timeout.
func (s *RedisStore) CallTimeout() time.Duration { return s.timeout }

// Sharded implements Sharded: a Redis Cluster client.
func (s *RedisStore) Sharded() bool {
	_, ok := s.client.(*redis.ClusterClient)
	return ok
}

// Domain implements Sharded: the address of the master serving key's
// slot (of the replica registry's for ""), from the client's slot map.
func (s *RedisStore) Domain(ctx context.Context, key string) string {
	cc, ok := s.client.(*redis.ClusterClient)
	if !ok {
		return ""
	}
	name := s.replicasKey()
	if key != "" {
		name = s.Key(key)
	}
	c, err := cc.MasterForKey(ctx, name)
	if err != nil {
		return "?"
	}
	return c.Options().Addr
}

// Refresh implements Sharded: the Cluster client reloads its slot map.
func (s *RedisStore) Refresh(ctx context.Context) {
	if cc, ok := s.client.(*redis.ClusterClient); ok {
		cc.ReloadState(ctx)
	}
}

// InstanceEpoch implements Shared: it reads the instance key (see
// RedisOptions.Settle): the instance epoch, "" when the key is missing
// (Redis lost its data, or no take created it yet), or ok false when there
// is no instance key.
func (s *RedisStore) InstanceEpoch(ctx context.Context) (epoch string, ok bool, err error) {
	if s.instanceKey == "" {
		return "", false, nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	v, err := s.client.Get(ctx, s.instanceKey).Result()
	switch {
	case errors.Is(err, redis.Nil):
		return "", true, nil
	case err != nil:
		return "", true, fmt.Errorf("redis get instance: %w", err)
	}
	epoch, _, _ = strings.Cut(v, ":")
	return epoch, true, nil
}

// Ping checks that Redis answers within the store's timeout: /readyz and
// the fallback's recovery probe use it.
func (s *RedisStore) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.client.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis ping: %w", err)
	}
	return nil
}

// WriteBack implements Shared: it adds to key's HASH every count whose tag
// is not the key's current epoch (see redis_writeback.lua), and a block
// until blockUntil (Redis ms, 0: none).
func (s *RedisStore) WriteBack(ctx context.Context, key string, counts []Count, blockUntil int64) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	args := make([]any, 0, 5+4*len(counts))
	// Leased slots sit in buckets up to maxHold ahead: they may be written
	// back there, one bucket of slack for the clock estimate.
	ahead := (ceilMillis(s.maxHold)+s.width-1)/s.width + 1
	args = append(args, s.width, s.span, blockUntil, s.testNow(), ahead)
	for _, c := range counts {
		kind := 0
		if c.Reserved {
			kind = 1
		}
		args = append(args, c.Tag, kind, c.At, c.N)
	}
	vals, err := writeBackScript.Run(ctx, s.client, []string{s.Key(key)}, args...).Slice()
	if err != nil {
		return "", fmt.Errorf("redis write-back: %w", err)
	}
	if len(vals) != 2 {
		return "", fmt.Errorf("redis write-back: script returned %d values, want 2", len(vals))
	}
	epoch, _ := vals[0].(string)
	return epoch, nil
}

func (s *RedisStore) testNow() string {
	if s.now == nil {
		return ""
	}
	return strconv.FormatInt(s.now(), 10)
}

// ceilMillis rounds d up to whole milliseconds: a slot held a fraction of a
// millisecond longer than needed never over-admits; a shorter one could.
func ceilMillis(d time.Duration) int64 {
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}

// RedisClientOptions describes how to reach Redis (the redis.* settings).
// Exactly one of URL, SentinelMaster or ClusterAddrs selects the topology.
//
// Zero values follow the convention of every Config and Options struct
// of retry, limiter, quota and proxy (docs/design.md): a zero field means
// none (the feature off, as the field says), never a hidden default; nil
// interfaces mean what the field says; Required fields are refused.
//
// DefaultRedisClientOptions returns this package's defaults.
type RedisClientOptions struct {
	// URL is a standalone server: redis://[user:password@]host:port[/db],
	// rediss:// for TLS, or unix:///path/to/redis.sock?db=N.
	URL string

	// SentinelMaster and SentinelAddrs select a Sentinel-managed primary.
	// SentinelPassword authenticates to the sentinels themselves.
	SentinelMaster   string
	SentinelAddrs    []string
	SentinelPassword string

	// ClusterAddrs is a seed list of Redis Cluster nodes.
	ClusterAddrs []string

	// Username and Password authenticate to the data nodes (AUTH/ACL).
	// With URL they may be given here or in the URL, not both.
	Username string
	Password string
	// DB selects a database (standalone and Sentinel only; with URL it may
	// be given in the URL path instead); 0 is database 0.
	DB int
	// TLS connects with TLS (implied by rediss://). CAFile is a PEM file
	// of the CAs to trust instead of the system's ("": none, the system's
	// are trusted); CertFile and KeyFile a client certificate for mutual
	// TLS ("": none); ServerName the name to verify the server's
	// certificate against ("": none given, the host dialled is verified).
	TLS               bool
	CAFile            string
	CertFile, KeyFile string
	ServerName        string

	// PoolSize is the number of connections per node. 0 sets no size:
	// go-redis sizes the pool (10 connections per GOMAXPROCS, 5 per node
	// in a Cluster). This zero is the one exception to the convention
	// above, because the size that fits follows the machine and the
	// topology, which go-redis knows when it builds the client.
	PoolSize int
	// Timeout is the store's per-call timeout; socket read and write
	// deadlines follow it and dials get a few multiples of it. Required:
	// unbounded, a Redis that stops answering would hold every request.
	Timeout time.Duration
}

// DefaultRedisClientOptions returns the client's defaults: calls bounded
// as DefaultRedisOptions bounds the store's, and no topology (URL,
// SentinelMaster or ClusterAddrs is the caller's to set).
func DefaultRedisClientOptions() RedisClientOptions {
	return RedisClientOptions{Timeout: DefaultRedisOptions().Timeout}
}

// OptionError is one problem of an options field (Policy, RedisOptions,
// RedisClientOptions, FallbackOptions). Option is the Go field's name; Msg may name other fields as {Field}. A caller
// names them its own way (the gateway: by its TOML keys, see Render);
// Error names them as Go fields.
type OptionError struct {
	Option string
	Msg    string
}

func (e *OptionError) Error() string { return e.Render(func(f string) string { return f }) }

// Render is the error with each field named by name.
func (e *OptionError) Render(name func(field string) string) string {
	msg := e.Msg
	for {
		i := strings.IndexByte(msg, '{')
		if i < 0 {
			break
		}
		j := strings.IndexByte(msg[i+1:], '}')
		if j < 0 {
			break
		}
		msg = msg[:i] + name(msg[i+1:i+1+j]) + msg[i+2+j:]
	}
	return name(e.Option) + ": " + msg
}

// Validate reports every problem of o as an *OptionError (never quoting
// a secret's value): what both -check and startup refuse. It reads the
// TLS files to check them.
func (o RedisClientOptions) Validate() error {
	var errs []error
	bad := func(option, format string, args ...any) {
		errs = append(errs, &OptionError{Option: option, Msg: fmt.Sprintf(format, args...)})
	}
	modes := 0
	for _, set := range []bool{o.URL != "", o.SentinelMaster != "" || len(o.SentinelAddrs) > 0, len(o.ClusterAddrs) > 0} {
		if set {
			modes++
		}
	}
	switch {
	case modes == 0:
		bad("URL", "set one of {URL}, {SentinelMaster} (with {SentinelAddrs}) or {ClusterAddrs}")
	case modes > 1:
		bad("URL", "{URL}, {SentinelMaster} and {ClusterAddrs} are exclusive: set only one")
	}
	if o.SentinelMaster != "" && len(o.SentinelAddrs) == 0 {
		bad("SentinelAddrs", "required with {SentinelMaster}")
	}
	if len(o.SentinelAddrs) > 0 && o.SentinelMaster == "" {
		bad("SentinelMaster", "required with {SentinelAddrs}")
	}
	if o.SentinelPassword != "" && o.SentinelMaster == "" {
		bad("SentinelPassword", "only applies with {SentinelMaster}")
	}
	if len(o.ClusterAddrs) > 0 && o.DB != 0 {
		bad("DB", "Redis Cluster has only database 0")
	}
	if o.DB < 0 {
		bad("DB", "database must not be negative, got %d", o.DB)
	}
	if o.PoolSize < 0 {
		bad("PoolSize", "must not be negative (0 = go-redis default), got %d", o.PoolSize)
	}
	if o.Timeout <= 0 {
		bad("Timeout", "must be positive, got %s", o.Timeout)
	}
	for _, a := range o.SentinelAddrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			bad("SentinelAddrs", "%q: want host:port", a)
		}
	}
	for _, a := range o.ClusterAddrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			bad("ClusterAddrs", "%q: want host:port", a)
		}
	}
	if o.URL != "" {
		// The URL may hold a password: no error quotes it.
		u, err := url.Parse(o.URL)
		switch {
		case err != nil:
			bad("URL", "not a URL")
		case u.Scheme != "redis" && u.Scheme != "rediss" && u.Scheme != "unix":
			bad("URL", "scheme must be redis://, rediss:// or unix://, got %q", u.Scheme)
		case u.Opaque != "" || (u.Scheme != "unix" && u.Host == ""):
			// "redis:host:6380" parses, and go-redis would dial
			// localhost:6379 for it: not the Redis the file names.
			bad("URL", "must be redis://[user:password@]host[:port][/db] or rediss://… (the // is missing or there is no host; not shown: it may carry credentials)")
		default:
			opt, err := redis.ParseURL(o.URL)
			if err != nil {
				if _, pw := u.User.Password(); strings.Contains(o.URL, "@") && !pw {
					// What go-redis quotes may be part of a password the
					// URL parser did not recognise as one.
					bad("URL", "not a valid Redis URL (details not shown: it may carry credentials)")
				} else {
					bad("URL", "%s", strings.TrimPrefix(redactURLError(err, u), "redis: "))
				}
				break
			}
			if (o.Username != "" || o.Password != "") && (opt.Username != "" || opt.Password != "") {
				bad("Password", "credentials given both in {URL} and in {Username}/{Password}: use one")
			}
			if o.DB != 0 && opt.DB != 0 {
				bad("DB", "database given twice (in {URL} too): use one")
			}
		}
	}
	if _, err := o.tlsConfig(""); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// redactURLError is err's text without the URL's password.
func redactURLError(err error, u *url.URL) string {
	msg := err.Error()
	if p, ok := u.User.Password(); ok && p != "" {
		msg = strings.ReplaceAll(msg, p, "xxxxx")
	}
	return msg
}

// usesTLS reports whether o connects with TLS.
func (o RedisClientOptions) usesTLS() bool {
	return o.TLS || strings.HasPrefix(o.URL, "rediss://")
}

// tlsConfig is the client's TLS configuration (nil without TLS): the CA
// file's pool instead of the system roots, the client certificate, the
// server name (host when ServerName is empty).
func (o RedisClientOptions) tlsConfig(host string) (*tls.Config, error) {
	files := o.CAFile != "" || o.CertFile != "" || o.KeyFile != "" || o.ServerName != ""
	if !o.usesTLS() {
		if files {
			return nil, &OptionError{Option: "TLS", Msg: "{CAFile}, {CertFile}, {KeyFile} and {ServerName} need {TLS} = true (or a rediss:// URL)"}
		}
		return nil, nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: cmp.Or(o.ServerName, host)}
	var errs []error
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			errs = append(errs, &OptionError{Option: "CAFile", Msg: err.Error()})
		} else if c.RootCAs = x509.NewCertPool(); !c.RootCAs.AppendCertsFromPEM(pem) {
			errs = append(errs, &OptionError{Option: "CAFile", Msg: fmt.Sprintf("%s holds no PEM certificate", o.CAFile)})
		}
	}
	switch {
	case (o.CertFile == "") != (o.KeyFile == ""):
		errs = append(errs, &OptionError{Option: "CertFile", Msg: "{CertFile} and {KeyFile} go together"})
	case o.CertFile != "":
		cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			errs = append(errs, &OptionError{Option: "CertFile", Msg: err.Error()})
		} else {
			c.Certificates = []tls.Certificate{cert}
		}
	}
	return c, errors.Join(errs...)
}

// NewRedisClient builds a go-redis client from o without network I/O
// (go-redis connects lazily; the TLS files are read). The client is tuned
// for a quota store behind a circuit breaker: no command retries (a retry
// would double the time a dead Redis holds a request; the breaker and the
// fallback decide instead), one dial attempt, context deadlines honoured,
// maintenance notifications off (they would relax the timeouts during a
// failover), and RESP2 unless the URL asks for another protocol: the
// store needs no RESP3 push, whose check before every reply cost 2.5 µs
// of CPU per call (profile of 2,000 tokens, one call per admission). Its
// errors are Validate's.
func NewRedisClient(o RedisClientOptions) (redis.UniversalClient, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	timeout := o.Timeout
	// A dial runs in the background of the call that needs it, so it may
	// take longer than one call (TLS handshakes do) without holding it.
	dial := min(max(10*timeout, 100*time.Millisecond), 5*time.Second)
	off := &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}

	if o.URL != "" {
		u, _ := url.Parse(o.URL) // checked by Validate
		opt, _ := redis.ParseURL(o.URL)
		if o.Username != "" || o.Password != "" {
			opt.Username, opt.Password = o.Username, o.Password
		}
		if o.DB != 0 {
			opt.DB = o.DB
		}
		if opt.Network != "unix" {
			opt.TLSConfig, _ = o.tlsConfig(u.Hostname())
		}
		opt.PoolSize = o.PoolSize
		opt.MaxRetries = -1 // -1, not 0: 0 means go-redis's default of 3
		opt.DialerRetries = 1
		opt.DialTimeout = dial
		opt.ReadTimeout = timeout
		opt.WriteTimeout = timeout
		opt.PoolTimeout = timeout
		opt.ContextTimeoutEnabled = true
		opt.MaintNotificationsConfig = off
		if opt.Protocol == 0 {
			opt.Protocol = 2
		}
		return redis.NewClient(opt), nil
	}

	tc, _ := o.tlsConfig("")
	uo := &redis.UniversalOptions{
		Username:              o.Username,
		Password:              o.Password,
		DB:                    o.DB,
		PoolSize:              o.PoolSize,
		Protocol:              2,
		MaxRetries:            -1,
		DialerRetries:         1,
		DialTimeout:           dial,
		ReadTimeout:           timeout,
		WriteTimeout:          timeout,
		PoolTimeout:           timeout,
		ContextTimeoutEnabled: true,
		TLSConfig:             tc,
	}
	if o.SentinelMaster != "" {
		uo.MasterName = o.SentinelMaster
		uo.Addrs = o.SentinelAddrs
		uo.SentinelPassword = o.SentinelPassword
		return redis.NewFailoverClient(uo.Failover()), nil
	}
	uo.Addrs = o.ClusterAddrs
	uo.IsClusterMode = true
	uo.MaintNotificationsConfig = off
	return redis.NewClusterClient(uo.Cluster()), nil
}
