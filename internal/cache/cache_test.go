package cache

import (
	"crypto/sha256"
	"net/http"
	"strconv"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func key(s string) Key { return sha256.Sum256([]byte(s)) }

const (
	listR  = "GET /records/apps/{app}"
	record = "GET /records/{record}"
	hooks  = "GET /webhooks"
	discs  = "GET /records/{record}/discussions"
)

func rules() map[string]Rule {
	return map[string]Rule{listR: {10 * time.Second, 1 << 20}, record: {10 * time.Second, 1 << 20}, hooks: {10 * time.Second, 1 << 20}, discs: {10 * time.Second, 1 << 20}}
}

// TestTTLAndMaxAge: an entry is served within its TTL and the client's
// max-age, with its age, and not after.
func TestTTLAndMaxAge(t *testing.T) {
	c := New(rules())
	c.Put(key("a"), "tok", listR, "records", map[string]string{"app": "A"}, http.Header{}, []byte("x"), t0, 0)
	if _, age, ok := c.Get(key("a"), t0.Add(3*time.Second), -1); !ok || age != 3*time.Second {
		t.Fatalf("within the TTL: %v age %s", ok, age)
	}
	if _, _, ok := c.Get(key("a"), t0.Add(3*time.Second), 2*time.Second); ok {
		t.Fatal("served older than the client's max-age")
	}
	if _, _, ok := c.Get(key("a"), t0.Add(10*time.Second), -1); ok || c.Len() != 0 {
		t.Fatal("served at its TTL")
	}
}

// TestInvalidate: a token's write drops what it can change, and nothing
// of another token's.
func TestInvalidate(t *testing.T) {
	for _, tc := range []struct {
		name  string
		w     Write
		drops []string
	}{
		{"update or discussion of a record", Write{"records", map[string]string{"record": "R1"}, false}, []string{"rec R1", "list A", "list B", "disc R1"}},
		{"create into an App", Write{"records", map[string]string{"app": "A"}, false}, []string{"list A", "rec R1", "rec R2", "disc R1"}},
		{"file upload into an App", Write{"files", map[string]string{"app": "A", "field": "f"}, false}, []string{"list A", "rec R1", "rec R2", "disc R1"}},
		{"update or discussion of another record", Write{"records", map[string]string{"record": "R2"}, false}, []string{"rec R2", "list A", "list B"}},
		{"webhook update", Write{"webhooks", map[string]string{"webhook": "W"}, false}, []string{"hooks"}},
		{"unknown write", Write{Unknown: true}, []string{"list A", "list B", "rec R1", "rec R2", "hooks", "disc R1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := New(rules())
			entries := map[string]func(tok string){
				"list A": func(tok string) {
					c.Put(key(tok+"la"), tok, listR, "records", map[string]string{"app": "A"}, nil, nil, t0, 0)
				},
				"list B": func(tok string) {
					c.Put(key(tok+"lb"), tok, listR, "records", map[string]string{"app": "B"}, nil, nil, t0, 0)
				},
				"rec R1": func(tok string) {
					c.Put(key(tok+"r1"), tok, record, "records", map[string]string{"record": "R1"}, nil, nil, t0, 0)
				},
				"rec R2": func(tok string) {
					c.Put(key(tok+"r2"), tok, record, "records", map[string]string{"record": "R2"}, nil, nil, t0, 0)
				},
				"disc R1": func(tok string) {
					c.Put(key(tok+"d1"), tok, discs, "records", map[string]string{"record": "R1"}, nil, nil, t0, 0)
				},
				"hooks": func(tok string) { c.Put(key(tok+"h"), tok, hooks, "webhooks", map[string]string{}, nil, nil, t0, 0) },
			}
			for _, put := range entries {
				put("tok")
				put("other")
			}
			if n := c.Invalidate("tok", tc.w); n != len(tc.drops) {
				t.Fatalf("dropped %d, want %d (%v)", n, len(tc.drops), tc.drops)
			}
			if c.Len() != 2*len(entries)-len(tc.drops) {
				t.Fatalf("%d left", c.Len())
			}
			ids := map[string]string{"list A": "la", "list B": "lb", "rec R1": "r1", "rec R2": "r2", "hooks": "h", "disc R1": "d1"}
			for _, d := range tc.drops {
				if _, _, ok := c.Get(key("tok"+ids[d]), t0, -1); ok {
					t.Fatalf("%s kept", d)
				}
				if _, _, ok := c.Get(key("other"+ids[d]), t0, -1); !ok {
					t.Fatalf("another token's %s dropped", d)
				}
			}
		})
	}
}

// TestBudget: a route's entries stay within its byte budget, the least
// recently used going first; an answer larger than the budget is not
// stored.
func TestBudget(t *testing.T) {
	c := New(map[string]Rule{listR: {time.Hour, 64 << 10}})
	body := make([]byte, 1000)
	for i := range 10000 {
		c.Put(key(strconv.Itoa(i)), "tok", listR, "records", map[string]string{"app": strconv.Itoa(i)}, http.Header{}, body, t0, 0)
		if i == 0 {
			c.Get(key("0"), t0, -1)
		}
	}
	if b := c.Bytes(listR); b > 64<<10 || b < 32<<10 {
		t.Fatalf("%d bytes for a budget of %d", b, 64<<10)
	}
	if _, _, ok := c.Get(key("9999"), t0, -1); !ok {
		t.Fatal("the most recent entry was evicted")
	}
	if _, _, ok := c.Get(key("0"), t0, -1); ok {
		t.Fatal("the least recently used entry was kept")
	}
	if c.Put(key("big"), "tok", listR, "records", nil, nil, make([]byte, 65<<10), t0, 0) {
		t.Fatal("stored an answer over the budget")
	}
}

// TestAnswerAcrossAWrite: an answer asked for before a write is not
// stored after it (it may predate the change).
func TestAnswerAcrossAWrite(t *testing.T) {
	c := New(rules())
	since := c.Generation()
	c.Invalidate("tok", Write{"records", map[string]string{"record": "R1"}, false})
	if c.Put(key("r1"), "tok", record, "records", map[string]string{"record": "R1"}, nil, nil, t0, since) {
		t.Fatal("stored an answer asked for before a write")
	}
	if !c.Put(key("r1"), "tok", record, "records", map[string]string{"record": "R1"}, nil, nil, t0, c.Generation()) {
		t.Fatal("did not store an answer asked for after it")
	}
}
