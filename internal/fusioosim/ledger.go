package fusioosim

// Ledger is what the simulator saw, the numbers tests and benchmarks assert
// on. Sim.Ledger returns a snapshot; its maps are the caller's.
type Ledger struct {
	// Requests counts every request that passed authentication, ping
	// included.
	Requests int `json:"requests"`
	// ByRoute counts them by route name (method and template, "GET
	// {unknown}" for unknown paths), so its keys are bounded.
	ByRoute map[string]int `json:"by_route"`
	// Charged counts the requests counted against a quota.
	Charged int `json:"charged"`
	// OverQuota counts the requests answered 20005. A gateway in front of
	// the simulator aims to keep it at 0.
	OverQuota int `json:"over_quota"`
	// Creates counts the creates applied (records, discussions, webhooks
	// and files), including those answered 504 or reset after the fact.
	Creates int `json:"creates"`
	// Duplicates counts the creates applied with an identity already
	// applied: the X-Sim-Request-Id header if present, else the
	// Idempotency-Key header if present, else the SHA-256 of method, path
	// (version prefix removed) and body. Identities of the last
	// DefaultMaxRecords creates are remembered.
	Duplicates int `json:"duplicates"`
	// Concurrent30054 counts the 30054 answers, overlapping and random.
	Concurrent30054 int `json:"concurrent_30054"`
	// Injected counts the injected faults by kind: "503", "504",
	// "504_after_apply", "reset_after_apply" and "30054_random"; every key
	// is present.
	Injected map[string]int `json:"injected"`
	// MaxInWindow is the largest number of charged requests one scope had
	// in one rolling window of Config.Window. With a rolling quota it never
	// exceeds Config.Limit; a fixed one allows up to twice as many. Without
	// a limit it saturates at 65536.
	MaxInWindow int `json:"max_in_window"`
	// PerScope counts the charged requests per scope, keyed by the first 12
	// hex digits of the SHA-256 of the scope: tokens never appear in clear.
	PerScope map[string]int `json:"per_scope"`
}

// injectedKinds are the keys of Ledger.Injected.
var injectedKinds = []string{"503", "504", "504_after_apply", "reset_after_apply", "30054_random"}

// counters are the ledger counts kept under Sim.mu (the quota's are kept
// with the quota state).
type counters struct {
	requests        int
	byRoute         map[string]int
	creates         int
	duplicates      int
	concurrent30054 int
	injected        map[string]int
}

func newCounters() counters {
	c := counters{byRoute: map[string]int{}, injected: map[string]int{}}
	for _, k := range injectedKinds {
		c.injected[k] = 0
	}
	return c
}

// Ledger returns a snapshot of the ledger.
func (s *Sim) Ledger() Ledger {
	s.mu.Lock()
	l := Ledger{
		Requests:        s.led.requests,
		ByRoute:         clone(s.led.byRoute),
		Creates:         s.led.creates,
		Duplicates:      s.led.duplicates,
		Concurrent30054: s.led.concurrent30054,
		Injected:        clone(s.led.injected),
	}
	s.mu.Unlock()
	s.qmu.Lock()
	l.Charged = s.q.charged
	l.OverQuota = s.q.overQuota
	l.MaxInWindow = s.q.maxInWindow
	l.PerScope = clone(s.q.perScope)
	s.qmu.Unlock()
	return l
}

func clone(m map[string]int) map[string]int {
	out := make(map[string]int, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func (s *Sim) countRequest(route string) {
	s.mu.Lock()
	s.led.requests++
	s.led.byRoute[route]++
	s.mu.Unlock()
}

func (s *Sim) inject(kind string) {
	s.mu.Lock()
	s.led.injected[kind]++
	if kind == "30054_random" {
		s.led.concurrent30054++
	}
	s.mu.Unlock()
}

func (s *Sim) count30054() {
	s.mu.Lock()
	s.led.concurrent30054++
	s.mu.Unlock()
}
