package fusioo

import (
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestRoutesMatch(t *testing.T) {
	t.Parallel()
	rs, err := NewRoutes(append(DefaultRoutes(), Route{Method: "get", Template: "/v3/records/apps/{app}/count", Charged: false, Kind: KindRead}))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		method, path, name string
		charged            bool
		kind               Kind
	}{
		{"GET", "/v3/ping", "GET /ping", false, KindRead},
		{"GET", "/v1/ping", "GET {unknown}", true, KindRead}, // free only where documented
		{"GET", "/ping", "GET /ping", false, KindRead},
		{"HEAD", "/v3/ping", "GET /ping", false, KindRead},
		{"POST", "/v3/records/apps/ia4f42", "POST /records/apps/{app}", true, KindCreate},
		{"POST", "/v3/records/apps/ia4f42/filter", "POST /records/apps/{app}/filter", true, KindRead},
		{"POST", "/v3/records/apps/ia4f42/count/filter", "POST /records/apps/{app}/count/filter", true, KindRead},
		{"GET", "/v3/records/apps/ia4f42/count", "GET /records/apps/{app}/count", false, KindRead}, // overridden
		{"GET", "/v3/records/apps/ia4f42", "GET /records/apps/{app}", true, KindRead},
		{"PUT", "/v3/records/r1", "PUT /records/{record}", true, KindWrite},
		{"POST", "/v3/files/apps/a/fields/f", "POST /files/apps/{app}/fields/{field}", true, KindUpload},
		{"POST", "/v3/whatever", "POST {unknown}", true, KindCreate},
		{"GET", "/v3/whatever/else", "GET {unknown}", true, KindRead},
		{"DELETE", "/nope", "DELETE {unknown}", true, KindWrite},
		{"BREW", "/v3/ping", "OTHER {unknown}", true, KindCreate},
		{"GET", "/v3/records/a/b/c/d/e", "GET {unknown}", true, KindRead},
	}
	for _, tc := range cases {
		r := rs.Match(tc.method, tc.path)
		if r.Name() != tc.name || r.Charged != tc.charged || r.Kind != tc.kind {
			t.Errorf("%s %s: got %s charged=%v kind=%s", tc.method, tc.path, r.Name(), r.Charged, r.Kind)
		}
	}
	if _, err := NewRoutes([]Route{{Method: "GET", Template: "x"}}); err == nil {
		t.Error("template without / accepted")
	}
}

func TestWriteErrorShape(t *testing.T) {
	t.Parallel()
	w := httptest.NewRecorder()
	WriteError(w, 429, CodeRateLimited, "")
	if w.Code != 429 || w.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("%d %v", w.Code, w.Header())
	}
	var m map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &m); err != nil {
		t.Fatal(err)
	}
	if m["code"] != float64(20005) || !strings.Contains(m["message"].(string), "rate limit") || len(m["data"].(map[string]any)) != 0 {
		t.Fatalf("%v", m)
	}
}

func TestCodes(t *testing.T) {
	t.Parallel()
	if n := len(Codes()); n != 39 {
		t.Fatalf("%d codes", n)
	}
	for _, c := range []struct {
		c    Code
		want string
	}{{0, "none"}, {20005, "20005"}, {12345, "other"}} {
		if got := c.c.Label(); got != c.want {
			t.Errorf("%d: %s", c.c, got)
		}
	}
	if !RateLimited(400, 20005) || !RateLimited(429, 0) || RateLimited(400, 30054) {
		t.Error("RateLimited")
	}
	if !Unavailable(200, 10004) || !Unavailable(503, 0) || Unavailable(500, 10001) {
		t.Error("Unavailable")
	}
}

func TestRoutesOwns(t *testing.T) {
	t.Parallel()
	a, _ := NewRoutes(DefaultRoutes())
	b, _ := NewRoutes(DefaultRoutes())
	for _, r := range []*Route{a.Match("GET", "/v3/apps"), a.Match("GET", "/nowhere"), a.Match("BREW", "/")} {
		if !a.Owns(r) || b.Owns(r) {
			t.Fatalf("%s: owned by a %v, by b %v", r.Name(), a.Owns(r), b.Owns(r))
		}
	}
	if a.Owns(nil) || a.Owns(&Route{Method: "GET", Template: "/apps"}) {
		t.Fatal("owns a route it did not compile")
	}
}

// TestSplitVersionAndParam: the one version rule, and the template
// parameters read from a matched path.
func TestSplitVersionAndParam(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		path string
		v    int
		rest string
	}{
		{"/v3/apps", 3, "/apps"}, {"/v3", 3, "/"}, {"/v1/ping", 1, "/ping"}, {"/apps", 0, "/apps"},
		{"/v30/apps", 0, "/v30/apps"}, {"/v0/apps", 0, "/v0/apps"}, {"/vx", 0, "/vx"}, {"", 0, ""},
	} {
		if v, rest := SplitVersion(c.path); v != c.v || rest != c.rest {
			t.Errorf("SplitVersion(%q) = %d, %q; want %d, %q", c.path, v, rest, c.v, c.rest)
		}
	}
	rs, err := NewRoutes(DefaultRoutes())
	if err != nil {
		t.Fatal(err)
	}
	r := rs.Match("POST", "/v3/files/apps/A2/fields/f9/")
	if r.Param("/v3/files/apps/A2/fields/f9/", "app") != "A2" || r.Param("/files/apps/A2/fields/f9", "field") != "f9" || r.Param("/v3/files/apps/A2/fields/f9", "record") != "" {
		t.Fatalf("params of %s", r.Name())
	}
	if p := r.Params("/v3/files/apps/A2/fields/f9"); len(p) != 2 || p["app"] != "A2" || p["field"] != "f9" {
		t.Fatalf("Params %v", p)
	}
}
