package fusioo

import (
	"fmt"
	"net/http"
	"strings"
)

// Kind says what a route does to Fusioo's data, which decides whether an
// attempt whose outcome is unknown (504, reset after the request was
// written, timeout) may be sent again.
type Kind int

const (
	// KindRead has no side effect: GET, HEAD, OPTIONS and the POST search
	// routes. Always safe to send again.
	KindRead Kind = iota
	// KindWrite is an idempotent change (PUT, DELETE, RFC 9110): safe to
	// send again unless retry.idempotent_writes is false.
	KindWrite
	// KindCreate makes a new record, discussion or webhook: sending it
	// again may create a duplicate, so it is never re-sent once written.
	KindCreate
	// KindUpload creates a file: a create whose body (up to 25 MB) is
	// streamed once and never buffered for replay.
	KindUpload
)

var kindNames = [...]string{"read", "write", "create", "upload"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// ParseKind is the inverse of Kind.String, for configuration.
func ParseKind(s string) (Kind, error) {
	for i, n := range kindNames {
		if n == s {
			return Kind(i), nil
		}
	}
	return 0, fmt.Errorf("unknown route kind %q (want read, write, create or upload)", s)
}

// Route is one entry of the route table: a method and a path template
// (version prefix stripped, "{name}" matching one path segment), whether
// Fusioo charges it to the hourly quota, and what kind of call it is.
type Route struct {
	Method   string
	Template string
	Charged  bool
	Kind     Kind
	segs     []string
	name     string  // Method + " " + Template, set by NewRoutes
	owner    *Routes // the table that compiled it
}

// Name is the bounded label used for metrics and logs: method and template,
// never the raw path.
func (r *Route) Name() string {
	if r.name != "" {
		return r.name
	}
	return r.Method + " " + r.Template
}

// DefaultRoutes is Fusioo's v3 API as its guide documents it. GET /ping is
// the one route documented as not rate limited; everything else is charged.
func DefaultRoutes() []Route {
	return []Route{
		{Method: "GET", Template: "/ping", Charged: false, Kind: KindRead},
		{Method: "GET", Template: "/apps", Charged: true, Kind: KindRead},
		{Method: "GET", Template: "/apps/{app}", Charged: true, Kind: KindRead},
		{Method: "GET", Template: "/records/apps/{app}", Charged: true, Kind: KindRead},
		{Method: "POST", Template: "/records/apps/{app}", Charged: true, Kind: KindCreate},
		{Method: "POST", Template: "/records/apps/{app}/filter", Charged: true, Kind: KindRead},
		{Method: "GET", Template: "/records/apps/{app}/count", Charged: true, Kind: KindRead},
		{Method: "POST", Template: "/records/apps/{app}/count/filter", Charged: true, Kind: KindRead},
		{Method: "GET", Template: "/records/{record}", Charged: true, Kind: KindRead},
		{Method: "PUT", Template: "/records/{record}", Charged: true, Kind: KindWrite},
		{Method: "DELETE", Template: "/records/{record}", Charged: true, Kind: KindWrite},
		{Method: "GET", Template: "/records/{record}/discussions", Charged: true, Kind: KindRead},
		{Method: "POST", Template: "/records/{record}/discussions", Charged: true, Kind: KindCreate},
		{Method: "GET", Template: "/files/{file}", Charged: true, Kind: KindRead},
		{Method: "POST", Template: "/files/apps/{app}/fields/{field}", Charged: true, Kind: KindUpload},
		{Method: "DELETE", Template: "/files/{file}", Charged: true, Kind: KindWrite},
		{Method: "GET", Template: "/webhooks", Charged: true, Kind: KindRead},
		{Method: "POST", Template: "/webhooks", Charged: true, Kind: KindCreate},
		{Method: "GET", Template: "/webhooks/{webhook}", Charged: true, Kind: KindRead},
		{Method: "PUT", Template: "/webhooks/{webhook}", Charged: true, Kind: KindWrite},
		{Method: "DELETE", Template: "/webhooks/{webhook}", Charged: true, Kind: KindWrite},
	}
}

// Routes is a compiled route table. The zero value is not usable; build one
// with NewRoutes. It is read-only after construction and safe for
// concurrent use.
type Routes struct {
	routes []Route
	// unknown holds one fallback route per method, so an unmatched request
	// still has a bounded name ("GET {unknown}").
	unknown map[string]*Route
	other   *Route
}

// NewRoutes compiles table. A later entry with the same method and template
// replaces an earlier one, so configuration overrides are appended to
// DefaultRoutes.
func NewRoutes(table []Route) (*Routes, error) {
	rs := &Routes{unknown: map[string]*Route{}}
	index := map[string]int{}
	for _, r := range table {
		r.Method = strings.ToUpper(r.Method)
		if r.Method == "" {
			return nil, fmt.Errorf("route %q: empty method", r.Template)
		}
		if !strings.HasPrefix(r.Template, "/") {
			return nil, fmt.Errorf("route %s %q: template must start with /", r.Method, r.Template)
		}
		r.Template = stripVersion(r.Template)
		r.segs = split(r.Template)
		r.name = r.Method + " " + r.Template
		r.owner = rs
		for _, s := range r.segs {
			if strings.HasPrefix(s, "{") != strings.HasSuffix(s, "}") {
				return nil, fmt.Errorf("route %s %q: bad segment %q", r.Method, r.Template, s)
			}
		}
		if i, ok := index[r.Name()]; ok {
			rs.routes[i] = r
			continue
		}
		index[r.Name()] = len(rs.routes)
		rs.routes = append(rs.routes, r)
	}
	for _, m := range []string{"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"} {
		rs.unknown[m] = unknownRoute(m)
		rs.unknown[m].owner = rs
	}
	rs.other = unknownRoute("OTHER")
	rs.other.owner = rs
	return rs, nil
}

// Owns reports whether r is one of the routes Match returns, so a route
// matched once may be used again in place of matching the same path.
func (rs *Routes) Owns(r *Route) bool { return r != nil && r.owner == rs }

// unknownRoute is charged (Fusioo may count it) and, for POST and other
// methods that may change data, treated as a create: the safe assumption.
func unknownRoute(method string) *Route {
	k := KindCreate
	switch method {
	case "GET", "HEAD", "OPTIONS":
		k = KindRead
	case "PUT", "DELETE":
		k = KindWrite
	}
	return &Route{Method: method, Template: "{unknown}", Charged: true, Kind: k, name: method + " {unknown}"}
}

// Match returns the route for method and path. The first matching entry
// wins, except that a template with fewer variables beats one with more
// (so "/records/apps/{app}" is preferred to "/records/{record}/…" shapes).
// Unknown paths get a charged fallback named "{unknown}". HEAD matches a GET
// route when no HEAD route exists.
//
// An uncharged route matches only a canonical path (no empty segment, no
// trailing slash) under the documented version (/v3/) or none (an
// upstream URL whose path ends in /v3): another spelling may mean
// something else upstream, and what is not known to be free is charged.
// A caller whose path was decoded from a non-canonical encoding (a %2F,
// a %69 for "i") charges it too: see Unknown.
func (rs *Routes) Match(method, path string) *Route {
	var buf [16]string
	segs := splitInto(buf[:0], stripVersion(path))
	r := rs.match(method, segs)
	if r == nil && method == http.MethodHead {
		r = rs.match(http.MethodGet, segs)
	}
	if r != nil && (r.Charged || (documentedVersion(path) && !strings.Contains(path, "//") && !strings.HasSuffix(path, "/"))) {
		return r
	}
	return rs.Unknown(method)
}

// Unknown returns the charged route that stands for method's unknown
// paths.
func (rs *Routes) Unknown(method string) *Route {
	if r, ok := rs.unknown[method]; ok {
		return r
	}
	return rs.other
}

// documentedVersion reports whether path is under /v3/, the version
// Fusioo's guide documents, or under no version.
func documentedVersion(path string) bool {
	v, _ := SplitVersion(path)
	return v == 0 || v == DocumentedVersion
}

func (rs *Routes) match(method string, segs []string) *Route {
	var best *Route
	bestVars := 1 << 30
	for i := range rs.routes {
		r := &rs.routes[i]
		if r.Method != method || len(r.segs) != len(segs) {
			continue
		}
		vars, ok := 0, true
		for j, s := range r.segs {
			if s[0] == '{' {
				if segs[j] == "" {
					ok = false
					break
				}
				vars++
				continue
			}
			if s != segs[j] {
				ok = false
				break
			}
		}
		if ok && vars < bestVars {
			best, bestVars = r, vars
		}
	}
	return best
}

// All returns every route of the table followed by the fallbacks, for
// metrics that pre-initialise their label values.
func (rs *Routes) All() []*Route {
	out := make([]*Route, 0, len(rs.routes)+len(rs.unknown)+1)
	for i := range rs.routes {
		out = append(out, &rs.routes[i])
	}
	for _, m := range []string{"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"} {
		out = append(out, rs.unknown[m])
	}
	return append(out, rs.other)
}

// DocumentedVersion is the API version Fusioo's guide documents.
const DocumentedVersion = 3

// SplitVersion splits a leading API version segment (/v1 … /v9) off a
// path: version is its number (0 when there is none) and rest the path
// after it ("/" when nothing follows). It is the one version rule: the
// route table, the retry policy and the simulator read paths with it.
func SplitVersion(path string) (version int, rest string) {
	p := path
	if len(p) >= 3 && p[0] == '/' && p[1] == 'v' && p[2] >= '1' && p[2] <= '9' && (len(p) == 3 || p[3] == '/') {
		if len(p) == 3 {
			return int(p[2] - '0'), "/"
		}
		return int(p[2] - '0'), p[3:]
	}
	return 0, path
}

// stripVersion is SplitVersion's rest, so one table serves every version.
func stripVersion(p string) string {
	_, rest := SplitVersion(p)
	return rest
}

// Param returns the segment of path (a path r matched) at r's template
// segment "{name}", or "" when the template has none.
func (r *Route) Param(path, name string) string {
	i := -1
	for j, s := range r.segs {
		if len(s) == len(name)+2 && s[0] == '{' && s[1:len(s)-1] == name {
			i = j
			break
		}
	}
	if i < 0 {
		return ""
	}
	p := strings.Trim(stripVersion(path), "/")
	for ; i > 0; i-- {
		j := strings.IndexByte(p, '/')
		if j < 0 {
			return ""
		}
		p = p[j+1:]
	}
	if j := strings.IndexByte(p, '/'); j >= 0 {
		p = p[:j]
	}
	return p
}

// Resource is the first segment of r's template ("records", "files",
// "webhooks", "apps", "ping"), "" for the unknown routes: what a write
// and a read must share for the write to change the read's answer
// without naming what it names (a record's update and its App's list).
func (r *Route) Resource() string {
	if len(r.segs) == 0 || r.segs[0][0] == '{' {
		return ""
	}
	return r.segs[0]
}

// Params returns every "{name}" segment of r's template with path's value
// there.
func (r *Route) Params(path string) map[string]string {
	m := map[string]string{}
	for _, s := range r.segs {
		if len(s) > 2 && s[0] == '{' {
			name := s[1 : len(s)-1]
			m[name] = r.Param(path, name)
		}
	}
	return m
}

// splitInto is split appending to dst, so a caller can pass a stack array.
func splitInto(dst []string, p string) []string {
	p = strings.Trim(p, "/")
	if p == "" {
		return dst
	}
	for {
		i := strings.IndexByte(p, '/')
		if i < 0 {
			return append(dst, p)
		}
		dst = append(dst, p[:i])
		p = p[i+1:]
	}
}

func split(p string) []string { return splitInto(nil, p) }
