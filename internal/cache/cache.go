// Package cache keeps 200 answers of read routes, per token, for the
// routes an operator opts in ([[cache]]): each route has a TTL and a byte
// budget with least-recently-used eviction. A write of a token drops that
// token's entries it can change (Invalidate), judged from the route
// table's parameters: this package knows keys, routes and parameters,
// nothing of HTTP exchanges or quotas.
package cache

import (
	"container/list"
	"net/http"
	"sync"
	"time"
)

// Key names a read: a digest of the token, method, path, query, the
// headers that change the answer and the body (the caller's to compute).
type Key = [32]byte

// Rule is one route's caching: how long an answer is served, and how
// many bytes its entries may take together.
type Rule struct {
	TTL      time.Duration
	MaxBytes int64
}

// Entry is a cached answer: the header and body of a 200.
type Entry struct {
	Header http.Header // read-only
	Body   []byte      // read-only
	Stored time.Time

	key      Key
	token    string
	route    string
	resource string
	params   map[string]string
	size     int64
	elem     *list.Element
}

// Write is a change a token sent: the route's resource and parameters
// (Unknown: a write the route table does not know, which may change
// anything of the token's).
type Write struct {
	Resource string
	Params   map[string]string
	Unknown  bool
}

// entryOverhead is what an entry costs beyond its body and its header
// and parameter strings (the struct, the index entries, the list element
// and the maps' buckets), and headerOverhead what each header name adds
// (a map slot and a value slice), counted against the budget: measured
// with the heap (TestCacheWithinBudget in internal/proxy).
const (
	entryOverhead  = 1200
	headerOverhead = 64
)

// Cache is the set of cached answers. Its methods are safe for concurrent
// use.
type Cache struct {
	mu      sync.Mutex
	rules   map[string]Rule
	lrus    map[string]*lru // by route
	byKey   map[Key]*Entry
	byToken map[string]map[*Entry]struct{}
	// gen counts invalidations: an answer fetched across one (Put's
	// since differs) may predate the write, and is not stored.
	gen uint64
}

// lru is one route's entries, most recently used first.
type lru struct {
	list  list.List
	bytes int64
}

// New returns a cache for rules, by route name ("GET /records/apps/{app}").
// It does no I/O.
func New(rules map[string]Rule) *Cache {
	c := &Cache{rules: rules, lrus: map[string]*lru{}, byKey: map[Key]*Entry{}, byToken: map[string]map[*Entry]struct{}{}}
	for r := range rules {
		c.lrus[r] = &lru{}
	}
	return c
}

// Rule returns route's rule, and whether the route is cached.
func (c *Cache) Rule(route string) (Rule, bool) {
	if c == nil {
		return Rule{}, false
	}
	r, ok := c.rules[route]
	return r, ok
}

// Get returns the entry of key stored within its route's TTL and within
// maxAge (negative: no bound of the client's), and its age.
func (c *Cache) Get(key Key, now time.Time, maxAge time.Duration) (*Entry, time.Duration, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.byKey[key]
	if e == nil {
		return nil, 0, false
	}
	age := now.Sub(e.Stored)
	if age >= c.rules[e.route].TTL {
		c.drop(e)
		return nil, 0, false
	}
	if maxAge >= 0 && age > maxAge {
		return nil, 0, false
	}
	c.lrus[e.route].list.MoveToFront(e.elem)
	return e, age, true
}

// Put stores a 200 answer of token's read of route (its parameters
// params) under key, evicting the route's least recently used entries to
// stay within its budget; an answer larger than the budget is not stored.
// It reports whether it stored.
//
// since is Generation as of when the answer was asked for: an answer
// asked for before a write that may have changed it is not stored.
func (c *Cache) Put(key Key, token, route, resource string, params map[string]string, h http.Header, body []byte, now time.Time, since uint64) bool {
	rule, ok := c.rules[route]
	if !ok {
		return false
	}
	size := int64(len(body)) + entryOverhead + int64(len(token)+len(route))
	for k, vs := range h {
		size += int64(len(k)) + headerOverhead
		for _, v := range vs {
			size += int64(len(v))
		}
	}
	for k, v := range params {
		size += int64(len(k) + len(v))
	}
	if size > rule.MaxBytes {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != since {
		return false
	}
	if old := c.byKey[key]; old != nil {
		c.drop(old)
	}
	l := c.lrus[route]
	for l.bytes+size > rule.MaxBytes && l.list.Len() > 0 {
		c.drop(l.list.Back().Value.(*Entry))
	}
	e := &Entry{Header: h, Body: body, Stored: now, key: key, token: token, route: route, resource: resource, params: params, size: size}
	e.elem = l.list.PushFront(e)
	l.bytes += size
	c.byKey[key] = e
	if c.byToken[token] == nil {
		c.byToken[token] = map[*Entry]struct{}{}
	}
	c.byToken[token][e] = struct{}{}
	return true
}

// drop removes e. Called with c.mu held.
func (c *Cache) drop(e *Entry) {
	l := c.lrus[e.route]
	l.list.Remove(e.elem)
	l.bytes -= e.size
	delete(c.byKey, e.key)
	if m := c.byToken[e.token]; m != nil {
		delete(m, e)
		if len(m) == 0 {
			delete(c.byToken, e.token)
		}
	}
}

// Invalidate drops token's entries that w can change, and returns how
// many: every entry when w is unknown; those that name one of w's
// parameters with the same value (a record's update and its read, a
// create into an App and the App's lists); and those of w's resource (a
// file change counts as a records change too: files are record fields)
// that name none of w's parameters (a record's update and the lists,
// filters and counts of whatever App it is in).
func (c *Cache) Invalidate(token string, w Write) int {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	n := 0
	for e := range c.byToken[token] {
		if w.Unknown || affects(w, e) {
			c.drop(e)
			n++
		}
	}
	return n
}

func affects(w Write, e *Entry) bool {
	named := false
	for k, v := range w.Params {
		if ev, ok := e.params[k]; ok {
			if ev == v {
				return true
			}
			named = true
		}
	}
	if named {
		return false
	}
	return e.resource == w.Resource || (w.Resource == "files" && e.resource == "records")
}

// Generation is the count of invalidations so far, for Put.
func (c *Cache) Generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// Bytes is what the entries of route take, as counted against its budget.
func (c *Cache) Bytes(route string) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if l := c.lrus[route]; l != nil {
		return l.bytes
	}
	return 0
}

// Len is the number of entries.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.byKey)
}
