// Package fusioosim is an in-memory simulator of Fusioo's REST API, the one
// the gateway's tests, benchmarks, fault scripts and demo all run against.
//
// It answers Fusioo's routes (fusioo.DefaultRoutes) with Fusioo's envelope,
// keeps a per-scope hourly quota (rolling or fixed window, configurable
// limit and length), raises 30054 for creates that overlap on one App's
// auto-increment lock, injects 503, 504 (also after a create was applied),
// connection resets and latency, and keeps a Ledger of what it saw: the
// numbers tests assert on (requests over the quota, duplicate creates, the
// most requests any scope had in one rolling window).
//
// # Order of events for one request
//
//  1. Paths under /_sim/ are the control endpoints (see below): no token,
//     never charged, never counted.
//  2. Authorization: a missing or empty "Bearer" token, or one starting with
//     "revoked", is answered 10003; one starting with "lite" 20007. Nothing
//     else about the request is looked at or counted.
//  3. The request is counted (Ledger.Requests, Ledger.ByRoute), its body is
//     read (uploads up to MaxUpload, other bodies up to MaxBody) and the
//     fault dice are rolled once, so a seeded run is deterministic whenever
//     requests arrive in a deterministic order.
//  4. Faults.Hang: wait until the client goes away, answer nothing.
//  5. Injected 503/10004 (Faults.Unavailable): not charged, not applied.
//  6. Quota: a charged route counts against its scope now, when it is
//     received; over the limit it is answered 20005 and not counted. Paths
//     that match no route (wrong method, unknown path, a version other than
//     /v1/–/v3/ or none) are charged, as the gateway assumes Fusioo may do,
//     and answered 10002.
//  7. Injected 504/10001 (Faults.GatewayTimeout): not applied.
//  8. Validation (30050, 30104, 30105, 30252, …), then the route itself. A
//     create to an App first takes the App's auto-increment lock and holds
//     it for Faults.CreateHold; a create that finds the lock held is
//     answered 30054 and not applied.
//  9. After a create was applied: injected 504 (Faults.TimeoutAfterApply) or
//     a connection reset (Faults.ResetAfterApply).
//
// Every answer but the control endpoints' is delayed by Faults.Latency plus
// jitter. The delay is the server's processing time: a request whose client
// goes away during it is still applied, as a real server would, and only the
// answer is lost.
//
// # Control endpoints
//
// They take and give JSON with snake_case keys (a key is matched ignoring
// case, "_" and "-", so "GatewayTimeout" and "gateway_timeout" both work):
//
//	GET  /_sim/ledger   the Ledger
//	GET  /_sim/history  the charge times per scope (Config.History)
//	GET  /_sim/faults   the faults in effect
//	PUT  /_sim/faults   replace the faults (absent keys become zero) and
//	                    answer the faults now in effect. Fractions are numbers
//	                    in [0,1]; durations are Go duration strings ("250ms")
//	                    or integer nanoseconds. Unknown keys are an error.
//	POST /_sim/reset    Reset; answers 204
//
// For example:
//
//	curl -X PUT localhost:8081/_sim/faults -d '{"unavailable":0.05,"concurrent":0.05,"latency":"20ms","jitter":"10ms"}'
package fusioosim

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fusioo-gateway/gateway/internal/fusioo"
)

// MaxUpload is the largest file upload body the simulator accepts, as
// Fusioo accepts files up to 25 MB; a larger one is answered 30252.
const MaxUpload = 25 << 20

// MaxBody bounds every other request body, so a misbehaving client cannot
// make the simulator buffer without limit; a larger one is answered 30050.
const MaxBody = 1 << 20

// Config configures a Sim. The zero value is an unlimited simulator with no
// faults.
type Config struct {
	// Limit is the number of charged requests a scope may make per Window;
	// 0 means unlimited. Each scope keeps the times of its requests of the
	// last window (8 bytes each, at most 2×Limit, 65536 when unlimited).
	Limit int
	// Window is the quota window; 0 means one hour, as Fusioo's quota is
	// hourly.
	Window time.Duration
	// Fixed counts in fixed windows aligned to Window (from the Unix epoch)
	// instead of a rolling window. Fusioo does not document which it uses;
	// a fixed window lets a client through twice the limit around a
	// boundary, which Ledger.MaxInWindow shows.
	Fixed bool
	// Scope maps a token to its quota scope; nil means the token itself.
	// It lets several tokens share one quota, as one Fusioo user's tokens
	// may.
	Scope func(token string) string
	// RetryAfter sends a Retry-After header (whole seconds) with 20005
	// answers. Fusioo does not, so the default is false.
	RetryAfter bool
	// Status is the HTTP status sent with each code. Fusioo does not
	// document the pairing; the defaults are 20005→429, 10003→401,
	// 10002→404, 10001→500, 10004→503 and 400 for any other code. Entries
	// override the defaults. Injected 504s are always HTTP 504 (code 10001).
	Status map[fusioo.Code]int
	// Now is the clock of the quota windows; nil means time.Now. Latency
	// and lock holds always use real time.
	Now func() time.Time
	// Seed seeds the fault dice, so a run with the same seed and the same
	// order of requests injects the same faults.
	Seed int64
	// Faults are the faults in effect at start; see Sim.SetFaults.
	Faults Faults
	// History keeps the time of every charged request, per scope, for
	// Sim.History (tests and benchmarks judge a quota's use by every
	// rolling window the upstream saw). Its memory grows with every
	// charged request: for bounded runs only.
	History bool
}

// Faults says which faults the simulator injects. Fractions are in [0,1]
// and are rolled independently per request; a create that draws both
// TimeoutAfterApply and ResetAfterApply gets the 504. Its JSON form (used by
// the /_sim/faults endpoint) has snake_case keys and duration strings.
type Faults struct {
	// Unavailable is the fraction of requests answered 503/10004 before
	// anything is charged or applied.
	Unavailable float64
	// UnavailableRetryAfter, if positive, is sent as Retry-After (whole
	// seconds, at least 1) with those answers.
	UnavailableRetryAfter time.Duration
	// Concurrent is the fraction of creates answered 30054 at random, in
	// addition to the real overlap detection.
	Concurrent float64
	// GatewayTimeout is the fraction of requests answered HTTP 504 (code
	// 10001) without being applied.
	GatewayTimeout float64
	// TimeoutAfterApply is the fraction of creates that are applied and
	// then answered HTTP 504 (code 10001): the client cannot know the
	// create happened.
	TimeoutAfterApply float64
	// ResetAfterApply is the fraction of creates that are applied and then
	// see their connection reset (TCP RST) without an answer.
	ResetAfterApply float64
	// Latency is added to every answer, plus a uniform jitter below Jitter.
	Latency time.Duration
	Jitter  time.Duration
	// CreateHold is how long a create to an App holds the App's
	// auto-increment lock; 0 means the request's latency. A create to the
	// same App that arrives meanwhile is answered 30054.
	CreateHold time.Duration
	// Hang makes every request wait, unanswered, until its client goes
	// away: an upstream that accepts connections and never answers.
	Hang bool
}

// Sim is the simulator: an http.Handler with its data, quota state, faults
// and ledger. It is safe for concurrent use.
type Sim struct {
	window time.Duration
	limit  int
	fixed  bool
	retry  bool
	hist   bool
	scope  func(string) string
	now    func() time.Time
	seed   int64
	status map[fusioo.Code]int
	routes *fusioo.Routes

	// fmu guards the faults and the dice.
	fmu    sync.Mutex
	faults Faults
	rng    *rand.Rand

	// qmu guards the quota state.
	qmu sync.Mutex
	q   quota

	// lmu guards the Apps' auto-increment locks.
	lmu    sync.Mutex
	locked map[string]bool

	// mu guards the data and the ledger counters.
	mu  sync.Mutex
	d   *data
	led counters

	// maxRecords bounds every stored collection (records, files, webhooks,
	// create identities); tests lower it.
	maxRecords int

	// Test hooks, set before serving: onLock runs when a create has taken
	// an App's lock, onHang when a request starts hanging.
	onLock func(app string)
	onHang func()
}

// DefaultMaxRecords bounds the records (and files, webhooks and remembered
// create identities) a Sim keeps, oldest dropped first, so long benchmark
// runs use bounded memory.
const DefaultMaxRecords = 100_000

// New returns a simulator configured by cfg. It does no I/O and starts no
// goroutines: serve it with any http.Server or httptest.Server.
func New(cfg Config) *Sim {
	routes, err := fusioo.NewRoutes(fusioo.DefaultRoutes())
	if err != nil {
		panic("fusioosim: default route table: " + err.Error())
	}
	s := &Sim{
		window:     cfg.Window,
		limit:      cfg.Limit,
		fixed:      cfg.Fixed,
		retry:      cfg.RetryAfter,
		hist:       cfg.History,
		scope:      cfg.Scope,
		now:        cfg.Now,
		seed:       cfg.Seed,
		status:     make(map[fusioo.Code]int, len(cfg.Status)),
		routes:     routes,
		faults:     cfg.Faults.clean(),
		locked:     map[string]bool{},
		maxRecords: DefaultMaxRecords,
	}
	if s.window <= 0 {
		s.window = time.Hour
	}
	if s.limit < 0 {
		s.limit = 0
	}
	if s.now == nil {
		s.now = time.Now
	}
	for c, st := range cfg.Status {
		s.status[c] = st
	}
	s.rng = newRNG(s.seed)
	s.q = newQuota()
	s.d = newData()
	s.led = newCounters()
	return s
}

func newRNG(seed int64) *rand.Rand {
	return rand.New(rand.NewPCG(uint64(seed), 0x9e3779b97f4a7c15))
}

// SetFaults replaces the faults in effect; requests already in progress keep
// the faults they started with. Fractions are clamped to [0,1] and negative
// durations to 0. It is safe to call while serving.
func (s *Sim) SetFaults(f Faults) {
	s.fmu.Lock()
	s.faults = f.clean()
	s.fmu.Unlock()
}

// Faults returns the faults in effect.
func (s *Sim) Faults() Faults {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	return s.faults
}

// Reset clears the ledger, the data (the default Apps are made again) and
// the quota state, and re-seeds the fault dice with Config.Seed, so a
// scripted run after Reset is as deterministic as one after New. The faults
// in effect are kept. Requests in progress finish against the new state.
func (s *Sim) Reset() {
	s.fmu.Lock()
	s.rng = newRNG(s.seed)
	s.fmu.Unlock()
	s.qmu.Lock()
	s.q = newQuota()
	s.qmu.Unlock()
	s.mu.Lock()
	s.d = newData()
	s.led = newCounters()
	s.mu.Unlock()
}

// statusOf is the HTTP status for code c: Config.Status, else the default.
func (s *Sim) statusOf(c fusioo.Code) int {
	if st, ok := s.status[c]; ok {
		return st
	}
	switch c {
	case fusioo.CodeSuccess:
		return http.StatusOK
	case fusioo.CodeRateLimited:
		return http.StatusTooManyRequests
	case fusioo.CodeUnauthorized:
		return http.StatusUnauthorized
	case fusioo.CodeNotFound:
		return http.StatusNotFound
	case fusioo.CodeInternal:
		return http.StatusInternalServerError
	case fusioo.CodeUnavailable:
		return http.StatusServiceUnavailable
	default:
		return http.StatusBadRequest
	}
}

func (s *Sim) fail(w http.ResponseWriter, c fusioo.Code, msg string) {
	fusioo.WriteError(w, s.statusOf(c), c, msg)
}

// dice are one request's draws, all made at once so every request consumes
// the same number of draws whatever its route and outcome.
type dice struct {
	unavailable, timeout, concurrent, timeoutAfter, resetAfter float64
	delay                                                      time.Duration
}

func (s *Sim) roll() (Faults, dice) {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	f := s.faults
	d := dice{
		unavailable:  s.rng.Float64(),
		timeout:      s.rng.Float64(),
		concurrent:   s.rng.Float64(),
		timeoutAfter: s.rng.Float64(),
		resetAfter:   s.rng.Float64(),
	}
	j := s.rng.Float64()
	d.delay = f.Latency
	if f.Jitter > 0 {
		d.delay += time.Duration(j * float64(f.Jitter))
	}
	return f, d
}

// ServeHTTP answers one request; see the package documentation for the
// order in which it is checked, charged and applied.
func (s *Sim) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/_sim" || strings.HasPrefix(r.URL.Path, "/_sim/") {
		s.serveAdmin(w, r)
		return
	}
	token, ok := bearer(r)
	if !ok || strings.HasPrefix(token, "revoked") {
		s.fail(w, fusioo.CodeUnauthorized, "")
		return
	}
	if strings.HasPrefix(token, "lite") {
		s.fail(w, fusioo.CodeInvalidUser, "")
		return
	}

	v, path := fusioo.SplitVersion(r.URL.Path)
	match := path
	if v < 1 || v > 3 { // the versions Fusioo serves
		// "/" matches no route of the table, so Match answers the
		// method's "{unknown}" fallback: charged, like any unknown path.
		match = "/"
	}
	rt := s.routes.Match(r.Method, match)
	known := rt.Template != "{unknown}"
	s.countRequest(rt.Name())

	f, dc := s.roll()
	ctx := r.Context()

	b, berr := readBody(w, r, rt, path)
	if berr == errClientGone {
		return
	}

	if f.Hang {
		if s.onHang != nil {
			s.onHang()
		}
		<-ctx.Done()
		return
	}
	if dc.unavailable < f.Unavailable {
		s.inject("503")
		sleep(ctx, dc.delay)
		if f.UnavailableRetryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(seconds(f.UnavailableRetryAfter)))
		}
		s.fail(w, fusioo.CodeUnavailable, "")
		return
	}
	if rt.Charged {
		if ok, wait := s.charge(token); !ok {
			sleep(ctx, dc.delay)
			if s.retry {
				w.Header().Set("Retry-After", strconv.Itoa(seconds(wait)))
			}
			s.fail(w, fusioo.CodeRateLimited, "")
			return
		}
	}
	if !known {
		sleep(ctx, dc.delay)
		s.fail(w, fusioo.CodeNotFound, "")
		return
	}
	if dc.timeout < f.GatewayTimeout {
		s.inject("504")
		sleep(ctx, dc.delay)
		fusioo.WriteError(w, http.StatusGatewayTimeout, fusioo.CodeInternal, "Gateway timeout")
		return
	}
	switch {
	case berr == errTooLarge && rt.Kind == fusioo.KindUpload:
		sleep(ctx, dc.delay)
		s.fail(w, fusioo.CodeFileTooLarge, "")
		return
	case berr == errTooLarge:
		sleep(ctx, dc.delay)
		s.fail(w, fusioo.CodeValidation, "Request body too large")
		return
	}

	req := &request{route: rt, params: rt.Params(path), query: r, body: b}
	if rt.Kind != fusioo.KindCreate && rt.Kind != fusioo.KindUpload {
		sleep(ctx, dc.delay)
		s.answer(w, s.serveRoute(req))
		return
	}

	// A create.
	if res := s.validateCreate(req); res.code != fusioo.CodeSuccess {
		sleep(ctx, dc.delay)
		s.answer(w, res)
		return
	}
	if dc.concurrent < f.Concurrent {
		s.inject("30054_random")
		sleep(ctx, dc.delay)
		s.fail(w, fusioo.CodeConcurrentRequests, "")
		return
	}
	start := time.Now()
	var res result
	if app := req.params["app"]; app != "" {
		if !s.tryLock(app) {
			s.count30054()
			sleep(ctx, dc.delay)
			s.fail(w, fusioo.CodeConcurrentRequests, "")
			return
		}
		res = func() result {
			defer s.unlock(app)
			if s.onLock != nil {
				s.onLock(app)
			}
			hold := f.CreateHold
			if hold <= 0 {
				hold = dc.delay
			}
			sleep(ctx, hold)
			return s.create(req)
		}()
	} else {
		sleep(ctx, dc.delay)
		res = s.create(req)
	}
	sleep(ctx, dc.delay-time.Since(start))
	if res.code == fusioo.CodeSuccess {
		switch {
		case dc.timeoutAfter < f.TimeoutAfterApply:
			s.inject("504_after_apply")
			fusioo.WriteError(w, http.StatusGatewayTimeout, fusioo.CodeInternal, "Gateway timeout")
			return
		case dc.resetAfter < f.ResetAfterApply:
			s.inject("reset_after_apply")
			reset(w)
			return
		}
	}
	s.answer(w, res)
}

// result is what a route handler answers: a code and, on success, the data.
type result struct {
	code fusioo.Code
	msg  string
	data any
}

func success(data any) result                  { return result{code: fusioo.CodeSuccess, data: data} }
func failed(c fusioo.Code) result              { return result{code: c} }
func failedMsg(c fusioo.Code, m string) result { return result{code: c, msg: m} }

func (s *Sim) answer(w http.ResponseWriter, res result) {
	if res.code == fusioo.CodeSuccess {
		fusioo.WriteSuccess(w, res.data)
		return
	}
	s.fail(w, res.code, res.msg)
}

func (s *Sim) tryLock(app string) bool {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	if s.locked[app] {
		return false
	}
	s.locked[app] = true
	return true
}

func (s *Sim) unlock(app string) {
	s.lmu.Lock()
	delete(s.locked, app)
	s.lmu.Unlock()
}

// reset ends the connection without an answer: with an RST when the
// connection is TCP (SO_LINGER 0), so the client sees "connection reset by
// peer" as after a crashed upstream. Over HTTP/2, which cannot be hijacked,
// aborting the handler resets the stream instead.
func reset(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	c := conn
	for {
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		c = u.NetConn()
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// sleep waits d of real time, or until ctx is done.
func sleep(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// seconds rounds d up to whole seconds, at least 1, for Retry-After.
func seconds(d time.Duration) int {
	n := int((d + time.Second - 1) / time.Second)
	if n < 1 {
		n = 1
	}
	return n
}

// bearer returns the request's bearer token, if it has a non-empty one.
func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	scheme, tok, found := strings.Cut(strings.TrimSpace(h), " ")
	if !found || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}

var (
	errTooLarge   = errors.New("body too large")
	errClientGone = errors.New("client went away")
)

// body is a request body as the simulator keeps it: the bytes for JSON
// routes, only the size for uploads (which are streamed, never buffered),
// and the create identity.
type body struct {
	data  []byte
	size  int64
	files int    // upload: file parts of a multipart body, or 1 for a raw body
	name  string // upload: the first file's name
	ctype string // upload: the first file's content type
	ident [32]byte
	bad   bool // upload: a multipart body that could not be parsed
}

// readBody reads r's body within its route's bound and computes the create
// identity: the X-Sim-Request-Id header, else the Idempotency-Key header,
// else the SHA-256 of method, path and body.
func readBody(w http.ResponseWriter, r *http.Request, rt *fusioo.Route, path string) (body, error) {
	var b body
	h := sha256.New()
	rid, hasID := r.Header.Get("X-Sim-Request-Id"), r.Header.Get("X-Sim-Request-Id") != ""
	if !hasID {
		rid, hasID = r.Header.Get("Idempotency-Key"), r.Header.Get("Idempotency-Key") != ""
		if hasID {
			rid = "idem\x00" + rid
		}
	} else {
		rid = "sim\x00" + rid
	}
	if hasID {
		b.ident = sha256.Sum256([]byte(rid))
	}
	io.WriteString(h, r.Method+"\x00"+path+"\x00")

	var err error
	if rt.Kind == fusioo.KindUpload {
		rd := io.TeeReader(http.MaxBytesReader(w, r.Body, MaxUpload), h)
		b.size, b.files, b.name, b.ctype, b.bad, err = readUpload(rd, r.Header.Get("Content-Type"))
	} else {
		b.data, err = io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
		h.Write(b.data)
		b.size = int64(len(b.data))
	}
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return b, errTooLarge
		}
		return b, errClientGone
	}
	if !hasID {
		copy(b.ident[:], h.Sum(nil))
	}
	return b, nil
}
