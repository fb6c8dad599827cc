package fusioosim

import (
	"bytes"
	"mime/multipart"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/fusioo-gateway/gateway/internal/fusioo"
)

func multipartBody(t *testing.T, files ...string) (string, string) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	_ = mw.WriteField("note", "not a file")
	for _, name := range files {
		fw, err := mw.CreateFormFile("file", name)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = fw.Write([]byte("content of " + name))
	}
	_ = mw.Close()
	return buf.String(), mw.FormDataContentType()
}

// TestRoutes checks every route and error against a simulator holding one
// record ({rec}, in app1), one webhook ({hook}) and one file ({file}).
func TestRoutes(t *testing.T) {
	t.Parallel()
	mp1, mpType1 := multipartBody(t, "a.txt")
	mp2, mpType2 := multipartBody(t, "a.txt", "b.txt")
	mp0, mpType0 := multipartBody(t)

	tests := []struct {
		name   string
		r      req
		status int
		code   fusioo.Code
		check  func(t *testing.T, a answer)
	}{
		{name: "ping", r: req{method: "GET", path: "/v3/ping"}, status: 200, code: 10000},
		{name: "ping v1", r: req{method: "GET", path: "/v1/ping"}, status: 200, code: 10000},
		{name: "head ping", r: req{method: "HEAD", path: "/v3/ping"}, status: 200},
		{name: "no version", r: req{method: "GET", path: "/ping"}, status: 404, code: 10002},
		{name: "v4", r: req{method: "GET", path: "/v4/ping"}, status: 404, code: 10002},
		{name: "unknown path", r: req{method: "GET", path: "/v3/nothing/here"}, status: 404, code: 10002},
		{name: "wrong method", r: req{method: "POST", path: "/v3/ping", body: "{}"}, status: 404, code: 10002},
		{name: "patch record", r: req{method: "PATCH", path: "/v3/records/{rec}", body: "{}"}, status: 404, code: 10002},

		{name: "no token", r: req{method: "GET", path: "/v3/apps", token: "-"}, status: 401, code: 10003},
		{name: "basic auth", r: req{method: "GET", path: "/v3/apps", token: "-", header: map[string]string{"Authorization": "Basic dTpw"}}, status: 401, code: 10003},
		{name: "empty bearer", r: req{method: "GET", path: "/v3/apps", token: "-", header: map[string]string{"Authorization": "Bearer  "}}, status: 401, code: 10003},
		{name: "lowercase bearer", r: req{method: "GET", path: "/v3/apps", token: "-", header: map[string]string{"Authorization": "bearer abc"}}, status: 200, code: 10000},
		{name: "revoked", r: req{method: "GET", path: "/v3/apps", token: "revoked-1"}, status: 401, code: 10003},
		{name: "lite user", r: req{method: "GET", path: "/v3/apps", token: "lite-1"}, status: 400, code: 20007},
		{name: "unauthorized before unknown path", r: req{method: "GET", path: "/v3/nothing", token: "-"}, status: 401, code: 10003},

		{name: "apps", r: req{method: "GET", path: "/v3/apps"}, status: 200, code: 10000, check: func(t *testing.T, a answer) {
			var apps []struct{ ID string }
			a.data(t, &apps)
			if len(apps) != 3 || apps[0].ID != "app1" || apps[2].ID != "app3" {
				t.Fatalf("apps %s", a.env.Data)
			}
		}},
		{name: "app", r: req{method: "GET", path: "/v3/apps/app2"}, status: 200, code: 10000},
		{name: "any app", r: req{method: "GET", path: "/v3/apps/made-up"}, status: 200, code: 10000},

		{name: "list", r: req{method: "GET", path: "/v3/records/apps/app1"}, status: 200, code: 10000, check: func(t *testing.T, a answer) {
			var recs []map[string]any
			a.data(t, &recs)
			if len(recs) != 1 || recs[0]["name"] != "first" || recs[0]["id"] == nil {
				t.Fatalf("records %s", a.env.Data)
			}
		}},
		{name: "list empty app", r: req{method: "GET", path: "/v3/records/apps/app9"}, status: 200, code: 10000, check: wantLen(0)},
		{name: "list limit 0", r: req{method: "GET", path: "/v3/records/apps/app1?limit=0"}, status: 200, code: 10000, check: wantLen(0)},
		{name: "list limit 200", r: req{method: "GET", path: "/v3/records/apps/app1?limit=200"}, status: 200, code: 10000, check: wantLen(1)},
		{name: "list offset 1", r: req{method: "GET", path: "/v3/records/apps/app1?offset=1"}, status: 200, code: 10000, check: wantLen(0)},
		{name: "list limit 201", r: req{method: "GET", path: "/v3/records/apps/app1?limit=201"}, status: 400, code: 30105},
		{name: "list limit -1", r: req{method: "GET", path: "/v3/records/apps/app1?limit=-1"}, status: 400, code: 30105},
		{name: "list limit text", r: req{method: "GET", path: "/v3/records/apps/app1?limit=ten"}, status: 400, code: 30105},
		{name: "list offset -1", r: req{method: "GET", path: "/v3/records/apps/app1?offset=-1"}, status: 400, code: 30104},
		{name: "list offset text", r: req{method: "GET", path: "/v3/records/apps/app1?offset=1.5"}, status: 400, code: 30104},

		{name: "create", r: req{method: "POST", path: "/v3/records/apps/app1", body: `{"name":"x","n":2}`}, status: 200, code: 10000, check: func(t *testing.T, a answer) {
			var rec map[string]any
			a.data(t, &rec)
			if rec["id"] == "" || rec["id"] == nil || rec["name"] != "x" || rec["n"] != 2.0 {
				t.Fatalf("record %s", a.env.Data)
			}
		}},
		{name: "create not json", r: req{method: "POST", path: "/v3/records/apps/app1", body: "name=x"}, status: 400, code: 30050},
		{name: "create empty", r: req{method: "POST", path: "/v3/records/apps/app1"}, status: 400, code: 30050},
		{name: "create array", r: req{method: "POST", path: "/v3/records/apps/app1", body: "[]"}, status: 400, code: 30050},
		{name: "create null", r: req{method: "POST", path: "/v3/records/apps/app1", body: "null"}, status: 400, code: 30050},
		{name: "create too large", r: req{method: "POST", path: "/v3/records/apps/app1", body: `{"a":"` + strings.Repeat("x", MaxBody) + `"}`}, status: 400, code: 30050},
		{name: "filter", r: req{method: "POST", path: "/v3/records/apps/app1/filter", body: `{"filters":{}}`}, status: 200, code: 10000, check: wantLen(1)},
		{name: "filter empty body", r: req{method: "POST", path: "/v3/records/apps/app1/filter"}, status: 200, code: 10000, check: wantLen(1)},
		{name: "filter limit", r: req{method: "POST", path: "/v3/records/apps/app1/filter?limit=500", body: `{}`}, status: 400, code: 30105},
		{name: "filter bad", r: req{method: "POST", path: "/v3/records/apps/app1/filter", body: `nope`}, status: 400, code: 30050},
		{name: "count", r: req{method: "GET", path: "/v3/records/apps/app1/count"}, status: 200, code: 10000, check: wantCount(1)},
		{name: "count filter", r: req{method: "POST", path: "/v3/records/apps/app1/count/filter", body: `{}`}, status: 200, code: 10000, check: wantCount(1)},

		{name: "get record", r: req{method: "GET", path: "/v3/records/{rec}"}, status: 200, code: 10000},
		{name: "get missing record", r: req{method: "GET", path: "/v3/records/r999"}, status: 400, code: 30051},
		{name: "put record", r: req{method: "PUT", path: "/v3/records/{rec}", body: `{"n":5}`}, status: 200, code: 10000, check: func(t *testing.T, a answer) {
			var rec map[string]any
			a.data(t, &rec)
			if rec["name"] != "first" || rec["n"] != 5.0 {
				t.Fatalf("record %s", a.env.Data)
			}
		}},
		{name: "put missing record", r: req{method: "PUT", path: "/v3/records/r999", body: `{}`}, status: 400, code: 30051},
		{name: "put bad body", r: req{method: "PUT", path: "/v3/records/{rec}", body: `[1]`}, status: 400, code: 30050},
		{name: "delete record", r: req{method: "DELETE", path: "/v3/records/{rec}"}, status: 200, code: 10000},
		{name: "delete missing record", r: req{method: "DELETE", path: "/v3/records/r999"}, status: 400, code: 30051},

		{name: "discussions", r: req{method: "GET", path: "/v3/records/{rec}/discussions"}, status: 200, code: 10000, check: wantLen(0)},
		{name: "discussions missing", r: req{method: "GET", path: "/v3/records/r999/discussions"}, status: 400, code: 30051},
		{name: "add discussion", r: req{method: "POST", path: "/v3/records/{rec}/discussions", body: `{"content":"hello"}`}, status: 200, code: 10000},
		{name: "add discussion missing record", r: req{method: "POST", path: "/v3/records/r999/discussions", body: `{"content":"hello"}`}, status: 400, code: 30051},
		{name: "add discussion no content", r: req{method: "POST", path: "/v3/records/{rec}/discussions", body: `{}`}, status: 400, code: 30057},
		{name: "add discussion too long", r: req{method: "POST", path: "/v3/records/{rec}/discussions", body: `{"content":"` + strings.Repeat("é", maxDiscussionChars+1) + `"}`}, status: 400, code: 30058},

		{name: "get file", r: req{method: "GET", path: "/v3/files/{file}"}, status: 200, code: 10000},
		{name: "get missing file", r: req{method: "GET", path: "/v3/files/f999"}, status: 400, code: 30250},
		{name: "delete file", r: req{method: "DELETE", path: "/v3/files/{file}"}, status: 200, code: 10000},
		{name: "delete missing file", r: req{method: "DELETE", path: "/v3/files/f999"}, status: 400, code: 30250},
		{name: "upload raw", r: req{method: "POST", path: "/v3/files/apps/app1/fields/photo", body: "12345"}, status: 200, code: 10000, check: func(t *testing.T, a answer) {
			var f file
			a.data(t, &f)
			if f.Size != 5 || f.App != "app1" || f.Field != "photo" || f.ID == "" {
				t.Fatalf("file %s", a.env.Data)
			}
		}},
		{name: "upload empty", r: req{method: "POST", path: "/v3/files/apps/app1/fields/photo"}, status: 400, code: 30050},
		{name: "upload multipart", r: req{method: "POST", path: "/v3/files/apps/app1/fields/photo", body: mp1, header: map[string]string{"Content-Type": mpType1}}, status: 200, code: 10000, check: func(t *testing.T, a answer) {
			var f file
			a.data(t, &f)
			if f.Name != "a.txt" || f.Size != int64(len("content of a.txt")) {
				t.Fatalf("file %s", a.env.Data)
			}
		}},
		{name: "upload two files", r: req{method: "POST", path: "/v3/files/apps/app1/fields/photo", body: mp2, header: map[string]string{"Content-Type": mpType2}}, status: 400, code: 30254},
		{name: "upload no file", r: req{method: "POST", path: "/v3/files/apps/app1/fields/photo", body: mp0, header: map[string]string{"Content-Type": mpType0}}, status: 400, code: 30050},
		{name: "upload bad multipart", r: req{method: "POST", path: "/v3/files/apps/app1/fields/photo", body: "garbage", header: map[string]string{"Content-Type": "multipart/form-data; boundary=xyz"}}, status: 400, code: 30050},

		{name: "webhooks", r: req{method: "GET", path: "/v3/webhooks"}, status: 200, code: 10000, check: wantLen(1)},
		{name: "add webhook", r: req{method: "POST", path: "/v3/webhooks", body: `{"url":"https://example.com/b"}`}, status: 200, code: 10000},
		{name: "add webhook bad", r: req{method: "POST", path: "/v3/webhooks", body: `url`}, status: 400, code: 30050},
		{name: "get webhook", r: req{method: "GET", path: "/v3/webhooks/{hook}"}, status: 200, code: 10000},
		{name: "put webhook", r: req{method: "PUT", path: "/v3/webhooks/{hook}", body: `{"url":"https://example.com/c"}`}, status: 200, code: 10000, check: func(t *testing.T, a answer) {
			var h map[string]any
			a.data(t, &h)
			if h["url"] != "https://example.com/c" || h["id"] == nil {
				t.Fatalf("webhook %s", a.env.Data)
			}
		}},
		{name: "delete webhook", r: req{method: "DELETE", path: "/v3/webhooks/{hook}"}, status: 200, code: 10000},
		{name: "get missing webhook", r: req{method: "GET", path: "/v3/webhooks/w999"}, status: 400, code: 30200},
		{name: "put missing webhook", r: req{method: "PUT", path: "/v3/webhooks/w999", body: `{}`}, status: 400, code: 30200},
		{name: "delete missing webhook", r: req{method: "DELETE", path: "/v3/webhooks/w999"}, status: 400, code: 30200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, Config{})
			ids := map[string]string{}
			for name, setup := range map[string]answer{
				"{rec}":  h.post("/v3/records/apps/app1", `{"name":"first"}`),
				"{hook}": h.post("/v3/webhooks", `{"url":"https://example.com/a"}`),
				"{file}": h.post("/v3/files/apps/app1/fields/doc", "file body"),
			} {
				expect(t, setup, 200, 10000)
				var v struct{ ID string }
				setup.data(t, &v)
				ids[name] = v.ID
			}
			r := tt.r
			r.path = strings.NewReplacer("{rec}", ids["{rec}"], "{hook}", ids["{hook}"], "{file}", ids["{file}"]).Replace(r.path)
			switch r.token {
			case "":
				r.token = tok
			case "-":
				r.token = ""
			}
			a := h.do(r)
			if r.method == http.MethodHead {
				if a.status != tt.status || len(a.raw) != 0 {
					t.Fatalf("HEAD: %d %q", a.status, a.raw)
				}
				return
			}
			expect(t, a, tt.status, tt.code)
			if tt.check != nil {
				tt.check(t, a)
			}
		})
	}
}

func wantLen(n int) func(*testing.T, answer) {
	return func(t *testing.T, a answer) {
		t.Helper()
		var list []any
		a.data(t, &list)
		if len(list) != n {
			t.Fatalf("got %d items, want %d: %s", len(list), n, a.env.Data)
		}
	}
}

func wantCount(n int) func(*testing.T, answer) {
	return func(t *testing.T, a answer) {
		t.Helper()
		var c struct{ Count int }
		a.data(t, &c)
		if c.Count != n {
			t.Fatalf("count %s, want %d", a.env.Data, n)
		}
	}
}

// TestRecordLifecycle follows one record through create, update, delete
// and the effect on the App's list and count.
func TestRecordLifecycle(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	var ids []string
	for i := range 5 {
		a := h.post("/v2/records/apps/app2", `{"i":`+strconv.Itoa(i)+`}`)
		expect(t, a, 200, 10000)
		var v struct{ ID string }
		a.data(t, &v)
		ids = append(ids, v.ID)
	}
	expect(t, h.do(req{method: "DELETE", path: "/v3/records/" + ids[1], token: tok}), 200, 10000)
	wantCount(4)(t, h.get("/v3/records/apps/app2/count"))
	a := h.get("/v3/records/apps/app2?offset=1&limit=2")
	var recs []struct {
		ID string
		I  int
	}
	a.data(t, &recs)
	if len(recs) != 2 || recs[0].ID != ids[2] || recs[1].ID != ids[3] || recs[1].I != 3 {
		t.Fatalf("page %s", a.env.Data)
	}
	expect(t, h.get("/v3/records/"+ids[1]), 400, 30051)
	// A record is found by id whatever its App.
	expect(t, h.get("/v3/records/"+ids[4]), 200, 10000)
	wantCount(0)(t, h.get("/v3/records/apps/app1/count"))
}

// TestRecordCap checks that stored records are bounded, oldest dropped.
func TestRecordCap(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{}, func(s *Sim) { s.maxRecords = 5 })
	var first string
	for i := range 8 {
		a := h.post("/v3/records/apps/app1", `{"i":`+strconv.Itoa(i)+`}`)
		expect(t, a, 200, 10000)
		if i == 0 {
			var v struct{ ID string }
			a.data(t, &v)
			first = v.ID
		}
	}
	wantCount(5)(t, h.get("/v3/records/apps/app1/count"))
	wantLen(5)(t, h.get("/v3/records/apps/app1"))
	expect(t, h.get("/v3/records/"+first), 400, 30051)
	if l := h.sim.Ledger(); l.Creates != 8 {
		t.Fatalf("creates %d, want 8", l.Creates)
	}
	h.sim.mu.Lock()
	n, order := len(h.sim.d.records.m), len(h.sim.d.records.order)
	h.sim.mu.Unlock()
	if n != 5 || order > 2*n+64 {
		t.Fatalf("records %d, order %d", n, order)
	}
}

// TestStatusOverride checks Config.Status replaces the default statuses.
func TestStatusOverride(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{Limit: 1, Status: map[fusioo.Code]int{
		fusioo.CodeRateLimited: 403,
		fusioo.CodeNotFound:    400,
		fusioo.CodeValidation:  422,
	}})
	expect(t, h.get("/v3/nothing"), 400, 10002)
	expect(t, h.get("/v3/apps"), 403, 20005)
	// Over the quota, the validation error is never reached.
	expect(t, h.post("/v3/records/apps/app1", "x"), 403, 20005)
	expect(t, h.do(req{method: "POST", path: "/v3/records/apps/app1", token: "other", body: "x"}), 422, 30050)
}
