package fusioosim

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/fusioo-gateway/gateway/internal/fusioo"
)

// TestOverlappingCreates holds app1's lock (the hook blocks) and checks that
// a second create to app1 is refused with 30054 and not applied, while a
// create to app2 goes through.
func TestOverlappingCreates(t *testing.T) {
	t.Parallel()
	locked := make(chan string, 10)
	release := make(chan struct{})
	h := newHarness(t, Config{}, func(s *Sim) {
		s.onLock = func(app string) {
			locked <- app
			if app == "app1" {
				<-release
			}
		}
	})
	first := make(chan answer, 1)
	go func() { first <- h.post("/v3/records/apps/app1", `{"n":1}`) }()
	if app := <-locked; app != "app1" {
		t.Fatalf("locked %q", app)
	}

	expect(t, h.post("/v3/records/apps/app1", `{"n":2}`), 400, 30054)
	expect(t, h.post("/v3/files/apps/app1/fields/f", "file"), 400, 30054) // uploads take the App's lock too
	expect(t, h.post("/v3/records/apps/app2", `{"n":3}`), 200, 10000)
	<-locked
	// Creates without an App (webhooks, discussions) take no App lock.
	expect(t, h.post("/v3/webhooks", `{"url":"u"}`), 200, 10000)

	close(release)
	expect(t, <-first, 200, 10000)
	l := h.sim.Ledger()
	if l.Creates != 3 || l.Concurrent30054 != 2 || l.Injected["30054_random"] != 0 {
		t.Fatalf("ledger %+v", l)
	}
	wantCount(1)(t, h.get("/v3/records/apps/app1/count"))
}

// TestCreateHoldCancelled holds app1's lock with a long CreateHold, then
// cancels the holder: the lock is freed, and the create (received, its
// client gone) is still applied.
func TestCreateHoldCancelled(t *testing.T) {
	t.Parallel()
	locked := make(chan string, 1)
	h := newHarness(t, Config{Faults: Faults{CreateHold: time.Hour}}, func(s *Sim) {
		s.onLock = func(app string) { locked <- app }
	})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := h.try(req{ctx: ctx, method: "POST", path: "/v3/records/apps/app1", token: tok, body: `{"n":1}`})
		errc <- err
	}()
	<-locked
	expect(t, h.post("/v3/records/apps/app1", `{"n":2}`), 400, 30054)
	cancel()
	if err := <-errc; err == nil {
		t.Fatal("cancelled create answered")
	}
	h.waitReturned(2)
	if l := h.sim.Ledger(); l.Creates != 1 || l.Concurrent30054 != 1 {
		t.Fatalf("ledger %+v", l)
	}
	h.sim.SetFaults(Faults{})
	expect(t, h.post("/v3/records/apps/app1", `{"n":3}`), 200, 10000)
}

// TestSerializedCreates sends creates one after another with a lock hold
// and latency: none overlaps, so none gets 30054.
func TestSerializedCreates(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{Faults: Faults{CreateHold: 2 * time.Millisecond, Latency: time.Millisecond}})
	for i := range 20 {
		expect(t, h.post("/v3/records/apps/app1", `{"i":`+strconv.Itoa(i)+`}`), 200, 10000)
	}
	if l := h.sim.Ledger(); l.Creates != 20 || l.Concurrent30054 != 0 {
		t.Fatalf("ledger %+v", l)
	}
}

// outcome runs a fixed sequence of reads and creates against h and returns
// what each got.
func outcome(t *testing.T, h *harness, n int) []string {
	var out []string
	for i := range n {
		var a answer
		if i%2 == 0 {
			a = h.get("/v3/apps")
		} else {
			a = h.post("/v3/records/apps/app1", `{"i":`+strconv.Itoa(i)+`}`)
		}
		out = append(out, fmt.Sprintf("%d/%d", a.status, a.env.Code))
	}
	return out
}

func TestInjectedFaults(t *testing.T) {
	t.Parallel()
	faults := Faults{Unavailable: 0.1, GatewayTimeout: 0.1, Concurrent: 0.1, TimeoutAfterApply: 0.1}
	const n = 400
	h := newHarness(t, Config{Seed: 42, Faults: faults})
	got := outcome(t, h, n)

	seen := map[string]int{}
	for _, o := range got {
		seen[o]++
	}
	l := h.sim.Ledger()
	inj := l.Injected
	if inj["503"] != seen["503/10004"] || inj["504"]+inj["504_after_apply"] != seen["504/10001"] ||
		inj["30054_random"] != seen["400/30054"] || l.Concurrent30054 != seen["400/30054"] || inj["reset_after_apply"] != 0 {
		t.Fatalf("ledger %+v, outcomes %v", l, seen)
	}
	for _, k := range []string{"503", "504", "504_after_apply", "30054_random"} {
		if inj[k] == 0 || inj[k] > n/4 {
			t.Fatalf("%s injected %d times in %d requests", k, inj[k], n)
		}
	}
	if l.Requests != n {
		t.Fatalf("ledger %+v", l)
	}
	// Creates = creates answered 200 + those applied then answered 504.
	creates200 := 0
	for i, o := range got {
		if i%2 == 1 && o == "200/10000" {
			creates200++
		}
	}
	if l.Creates != creates200+inj["504_after_apply"] {
		t.Fatalf("creates %d, want %d+%d", l.Creates, creates200, inj["504_after_apply"])
	}

	// The same seed gives the same faults, on a new simulator or after
	// Reset; another seed gives others.
	again := outcome(t, newHarness(t, Config{Seed: 42, Faults: faults}), n)
	h.sim.Reset()
	afterReset := outcome(t, h, n)
	other := outcome(t, newHarness(t, Config{Seed: 43, Faults: faults}), n)
	if strings.Join(got, " ") != strings.Join(again, " ") || strings.Join(got, " ") != strings.Join(afterReset, " ") {
		t.Fatal("same seed, different faults")
	}
	if strings.Join(got, " ") == strings.Join(other, " ") {
		t.Fatal("different seeds, same faults")
	}
}

func TestUnavailable(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{Limit: 1, Faults: Faults{Unavailable: 1, UnavailableRetryAfter: 1500 * time.Millisecond}})
	for range 3 {
		a := h.post("/v3/records/apps/app1", `{}`)
		expect(t, a, 503, 10004)
		if ra := a.header.Get("Retry-After"); ra != "2" {
			t.Fatalf("Retry-After %q", ra)
		}
	}
	// Not charged, not applied.
	if l := h.sim.Ledger(); l.Charged != 0 || l.Creates != 0 || l.Injected["503"] != 3 || l.Requests != 3 {
		t.Fatalf("ledger %+v", l)
	}
	h.sim.SetFaults(Faults{Unavailable: 1})
	if a := h.get("/v3/apps"); a.header.Get("Retry-After") != "" {
		t.Fatalf("Retry-After %q", a.header.Get("Retry-After"))
	}
}

func TestGatewayTimeout(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{Faults: Faults{GatewayTimeout: 1}})
	expect(t, h.post("/v3/records/apps/app1", `{"n":1}`), 504, 10001)
	expect(t, h.do(req{method: "PUT", path: "/v3/records/r1", token: tok, body: `{}`}), 504, 10001)
	h.sim.SetFaults(Faults{})
	wantCount(0)(t, h.get("/v3/records/apps/app1/count"))
	if l := h.sim.Ledger(); l.Creates != 0 || l.Injected["504"] != 2 || l.Charged != 3 {
		t.Fatalf("ledger %+v", l)
	}
}

func TestTimeoutAfterApply(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{Faults: Faults{TimeoutAfterApply: 1}})
	expect(t, h.post("/v3/records/apps/app1", `{"n":1}`), 504, 10001)
	// Reads are not creates: never "applied then 504".
	expect(t, h.get("/v3/records/apps/app1/count"), 200, 10000)
	wantCount(1)(t, h.get("/v3/records/apps/app1/count"))
	if l := h.sim.Ledger(); l.Creates != 1 || l.Injected["504_after_apply"] != 1 {
		t.Fatalf("ledger %+v", l)
	}
	// A create that fails validation is not applied, so not "applied then 504".
	expect(t, h.post("/v3/records/apps/app1", `nope`), 400, 30050)
}

func TestResetAfterApply(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{Faults: Faults{ResetAfterApply: 1}})
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	defer c.CloseIdleConnections()
	_, err := h.tryWith(c, req{method: "POST", path: "/v3/records/apps/app1", token: tok, body: `{"n":1}`})
	if err == nil {
		t.Fatal("answered")
	}
	h.waitReturned(1)
	if l := h.sim.Ledger(); l.Creates != 1 || l.Injected["reset_after_apply"] != 1 {
		t.Fatalf("ledger %+v", l)
	}
	h.sim.SetFaults(Faults{})
	wantCount(1)(t, h.get("/v3/records/apps/app1/count"))
}

func TestDuplicates(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	create := func(body string, hdr map[string]string) {
		t.Helper()
		expect(t, h.do(req{method: "POST", path: "/v3/records/apps/app1", token: tok, body: body, header: hdr}), 200, 10000)
	}
	create(`{"a":1}`, nil)
	create(`{"a":2}`, nil)
	create(`{"a":1}`, nil)                                                                // same body: duplicate
	create(`{"a":1}`, map[string]string{"X-Sim-Request-Id": "x"})                         // identified by the header: not a duplicate
	create(`{"a":3}`, map[string]string{"X-Sim-Request-Id": "x"})                         // same id, other body: duplicate
	create(`{"a":4}`, map[string]string{"Idempotency-Key": "x"})                          // another namespace than X-Sim-Request-Id
	create(`{"a":5}`, map[string]string{"Idempotency-Key": "x"})                          // duplicate
	create(`{"a":6}`, map[string]string{"X-Sim-Request-Id": "y", "Idempotency-Key": "x"}) // X-Sim-Request-Id wins
	if l := h.sim.Ledger(); l.Creates != 8 || l.Duplicates != 3 {
		t.Fatalf("ledger %+v", l)
	}
	// The same body to another App or through another version prefix.
	expect(t, h.post("/v3/records/apps/app2", `{"a":1}`), 200, 10000)
	expect(t, h.post("/v1/records/apps/app2", `{"a":1}`), 200, 10000)
	if l := h.sim.Ledger(); l.Duplicates != 4 {
		t.Fatalf("ledger %+v", l)
	}
}

func TestUploadLimit(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{Status: map[fusioo.Code]int{fusioo.CodeFileTooLarge: 413}})
	upload := func(n int64) answer {
		return h.do(req{method: "POST", path: "/v3/files/apps/app1/fields/f", token: tok,
			bodyReader: io.LimitReader(zeros{}, n), length: n})
	}
	a := upload(MaxUpload)
	expect(t, a, 200, 10000)
	var f file
	a.data(t, &f)
	if f.Size != MaxUpload {
		t.Fatalf("size %d", f.Size)
	}
	expect(t, upload(MaxUpload+1), 413, 30252)
	if l := h.sim.Ledger(); l.Creates != 1 {
		t.Fatalf("ledger %+v", l)
	}
}

func TestHang(t *testing.T) {
	t.Parallel()
	hanging := make(chan struct{}, 1)
	h := newHarness(t, Config{Faults: Faults{Hang: true}}, func(s *Sim) {
		s.onHang = func() { hanging <- struct{}{} }
	})
	for i, r := range []req{
		{method: "GET", path: "/v3/ping", token: tok},
		{method: "POST", path: "/v3/records/apps/app1", token: tok, body: `{"n":1}`},
	} {
		ctx, cancel := context.WithCancel(context.Background())
		r.ctx = ctx
		errc := make(chan error, 1)
		go func() { _, err := h.try(r); errc <- err }()
		<-hanging
		cancel()
		if err := <-errc; err == nil {
			t.Fatal("hanging request answered")
		}
		h.waitReturned(i + 1)
	}
	if l := h.sim.Ledger(); l.Requests != 2 || l.Charged != 0 || l.Creates != 0 {
		t.Fatalf("ledger %+v", l)
	}
}

// TestLatencyCancelled checks that a client leaving during the latency
// ends the handler at once.
func TestLatencyCancelled(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{Faults: Faults{Latency: time.Hour}})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := h.try(req{ctx: ctx, method: "GET", path: "/v3/apps", token: tok}); err == nil {
		t.Fatal("answered")
	}
	h.waitReturned(1)
}

// TestLatency: every answer waits the latency and at most the jitter more
// (on the bubble's clock: exact bounds, however loaded the machine).
func TestLatency(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		sim := New(Config{Faults: Faults{Latency: 20 * time.Millisecond, Jitter: 10 * time.Millisecond}})
		for _, r := range []*http.Request{
			httptest.NewRequest("GET", "/v3/ping", nil),
			httptest.NewRequest("POST", "/v3/records/apps/app1", strings.NewReader(`{}`)),
		} {
			r.Header.Set("Authorization", "Bearer "+tok)
			start := time.Now()
			w := httptest.NewRecorder()
			sim.ServeHTTP(w, r)
			if d := time.Since(start); w.Code != 200 || d < 20*time.Millisecond || d > 30*time.Millisecond {
				t.Fatalf("%s %s: %d after %v, want 200 after 20–30 ms", r.Method, r.URL.Path, w.Code, d)
			}
		}
	})
}

func TestAdmin(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{Limit: 1})
	admin := func(method, path, body string) (int, string) {
		t.Helper()
		r, err := http.NewRequest(method, h.srv.URL+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := h.srv.Client().Do(r)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	expect(t, h.post("/v3/records/apps/app1", `{}`), 200, 10000)
	expect(t, h.get("/v3/apps"), 429, 20005)

	st, body := admin("GET", "/_sim/ledger", "")
	var l Ledger
	if err := json.Unmarshal([]byte(body), &l); st != 200 || err != nil || l.Requests != 2 || l.Creates != 1 || l.OverQuota != 1 {
		t.Fatalf("ledger %d %s %v", st, body, err)
	}
	for _, k := range []string{`"requests"`, `"by_route"`, `"charged"`, `"over_quota"`, `"creates"`, `"duplicates"`, `"concurrent_30054"`, `"injected"`, `"max_in_window"`, `"per_scope"`, `"504_after_apply"`} {
		if !strings.Contains(body, k) {
			t.Fatalf("ledger JSON lacks %s: %s", k, body)
		}
	}
	if strings.Contains(body, tok) {
		t.Fatalf("ledger shows the token: %s", body)
	}

	st, body = admin("PUT", "/_sim/faults", `{"unavailable":1,"unavailable_retry_after":"3s","latency":"1ms","CreateHold":2000000,"hang":false}`)
	if st != 200 {
		t.Fatalf("PUT faults: %d %s", st, body)
	}
	want := Faults{Unavailable: 1, UnavailableRetryAfter: 3 * time.Second, Latency: time.Millisecond, CreateHold: 2 * time.Millisecond}
	if got := h.sim.Faults(); got != want {
		t.Fatalf("faults %+v, want %+v", got, want)
	}
	var echoed Faults
	if err := json.Unmarshal([]byte(body), &echoed); err != nil || echoed != want || !strings.Contains(body, `"latency":"1ms"`) {
		t.Fatalf("PUT answered %s (%v)", body, err)
	}
	if st, body2 := admin("GET", "/_sim/faults", ""); st != 200 || body2 != body {
		t.Fatalf("GET faults %d %s", st, body2)
	}
	a := h.do(req{method: "GET", path: "/v3/ping", token: "t2"})
	expect(t, a, 503, 10004)
	if a.header.Get("Retry-After") != "3" {
		t.Fatalf("Retry-After %q", a.header.Get("Retry-After"))
	}

	for _, bad := range []string{`{"unavailable":1.5}`, `{"nope":1}`, `{"latency":"soon"}`, `{"latency":-1}`, `[]`, `null`, `{"hang":"yes"}`} {
		if st, body := admin("PUT", "/_sim/faults", bad); st != 400 || !strings.Contains(body, `"code":30050`) {
			t.Fatalf("PUT %s: %d %s", bad, st, body)
		}
	}
	if h.sim.Faults() != want {
		t.Fatal("a rejected PUT changed the faults")
	}
	if st, _ := admin("PUT", "/_sim/faults", `{}`); st != 200 || h.sim.Faults() != (Faults{}) {
		t.Fatal("PUT {} did not clear the faults")
	}

	if st, _ := admin("GET", "/_sim/reset", ""); st != 405 {
		t.Fatalf("GET reset: %d", st)
	}
	if st, _ := admin("DELETE", "/_sim/faults", ""); st != 405 {
		t.Fatalf("DELETE faults: %d", st)
	}
	if st, body := admin("GET", "/_sim/nothing", ""); st != 404 || !strings.Contains(body, "10002") {
		t.Fatalf("unknown admin path: %d %s", st, body)
	}
	if st, _ := admin("POST", "/_sim/reset", ""); st != 204 {
		t.Fatalf("reset: %d", st)
	}
	l = h.sim.Ledger()
	if l.Requests != 0 || l.Charged != 0 || len(l.ByRoute) != 0 || len(l.PerScope) != 0 || l.Creates != 0 {
		t.Fatalf("ledger after reset %+v", l)
	}
	// The quota and the data were reset too.
	wantCount(0)(t, h.get("/v3/records/apps/app1/count"))
}

// TestConcurrency mixes every kind of request, fault changes and ledger
// reads at once, for the race detector, and checks the ledger adds up.
func TestConcurrency(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{Seed: 7, Faults: Faults{Unavailable: 0.05, Concurrent: 0.05, GatewayTimeout: 0.05, TimeoutAfterApply: 0.05}})
	const workers, each = 16, 40
	var wg sync.WaitGroup
	var mu sync.Mutex
	applied := 0
	for w := range workers {
		wg.Go(func() {
			app := "app" + strconv.Itoa(w%3+1)
			for i := range each {
				var r req
				switch i % 5 {
				case 0:
					r = req{method: "POST", path: "/v3/records/apps/" + app, body: `{"w":` + strconv.Itoa(w) + `,"i":` + strconv.Itoa(i) + `}`}
				case 1:
					r = req{method: "GET", path: "/v3/records/apps/" + app + "?limit=5"}
				case 2:
					r = req{method: "PUT", path: "/v3/records/r" + strconv.Itoa(i), body: `{"x":1}`}
				case 3:
					r = req{method: "DELETE", path: "/v3/records/r" + strconv.Itoa(i+w)}
				case 4:
					r = req{method: "GET", path: "/v3/ping"}
				}
				r.token = "tok" + strconv.Itoa(w%4)
				a, err := h.try(r)
				if err != nil {
					t.Error(err)
					return
				}
				if a.env.Code == 0 {
					t.Errorf("%s %s: no code", r.method, r.path)
				}
				if i%5 == 0 && a.status == 200 {
					mu.Lock()
					applied++
					mu.Unlock()
				}
			}
		})
	}
	stop := make(chan struct{})
	var side sync.WaitGroup
	side.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			_ = h.sim.Ledger()
			h.sim.SetFaults(Faults{Unavailable: 0.05, Concurrent: float64(i%2) * 0.05, GatewayTimeout: 0.05, TimeoutAfterApply: 0.05})
		}
	})
	wg.Wait()
	close(stop)
	side.Wait()

	l := h.sim.Ledger()
	sum := 0
	for _, n := range l.ByRoute {
		sum += n
	}
	// Everything but pings is charged, except what was answered 503.
	charged := l.Requests * 4 / 5
	if l.Requests != workers*each || sum != l.Requests || l.Creates != applied+l.Injected["504_after_apply"] ||
		l.Charged > charged || l.Charged < charged-l.Injected["503"] || l.OverQuota != 0 {
		t.Fatalf("ledger %+v, applied %d", l, applied)
	}
}
