package flight

import (
	"context"
	"crypto/sha256"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/synctest"
)

var k1 = Key(sha256.Sum256([]byte("GET /v3/apps")))

// TestLateCallerGetsAll: a caller that joins after part of the body was
// written gets the whole answer, headers first, fixed its own way, once
// the answer is shared (one caller joined before its header came).
func TestLateCallerGetsAll(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var g Group
		f, leader := g.Join(t.Context(), k1)
		if !leader {
			t.Fatal("first caller not the leader")
		}
		results := make(chan *httptest.ResponseRecorder, 3)
		serve := func(i int) {
			if f2, leader := g.Join(t.Context(), k1); leader || f2 != f {
				t.Fatal("a later caller did not join")
			}
			go func() {
				w := httptest.NewRecorder()
				st, err := f.Serve(t.Context(), w, func(h http.Header) { h.Set("X-Caller", string(rune('0'+i))) })
				if st != 201 || err != nil {
					t.Errorf("Serve: %d %v", st, err)
				}
				results <- w
			}()
		}
		serve(0)
		own := httptest.NewRecorder()
		lw := f.Writer(own, false)
		lw.Header().Set("Content-Type", "application/json")
		lw.WriteHeader(201)
		_, _ = lw.Write([]byte(`{"a":`))
		serve(1)
		synctest.Wait()
		_, _ = lw.Write([]byte(`1}`))
		f.Finish(true)
		results <- own
		fixed := 0
		for range 3 {
			w := <-results
			if w.Code != 201 || w.Body.String() != `{"a":1}` || w.Header().Get("Content-Type") != "application/json" {
				t.Fatalf("got %d %q %v", w.Code, w.Body, w.Header())
			}
			if w.Header().Get("X-Caller") != "" {
				fixed++
			}
		}
		if fixed != 2 {
			t.Fatalf("%d answers fixed by their callers, want the 2 served", fixed)
		}
		if g.InFlight() != 0 {
			t.Fatal("a finished flight stays joinable")
		}
		if b, ok := f.Body(); !ok || string(b) != `{"a":1}` {
			t.Fatalf("Body %q %v", b, ok)
		}
		if _, leader := g.Join(t.Context(), k1); !leader {
			t.Fatal("joined a finished flight")
		}
	})
}

// TestUnsharedNotRecorded: an answer nobody shares when its header comes
// goes to the leader's client alone (nothing kept, nothing held), and a
// caller that comes after it starts a flight of its own; one the caller
// keeps (for the cache) is recorded all the same, and a Solo one always.
func TestUnsharedNotRecorded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var g Group
		f, _ := g.Join(t.Context(), k1)
		own := httptest.NewRecorder()
		lw := f.Writer(own, false)
		lw.Header().Set("Content-Type", "application/json")
		_, _ = lw.Write([]byte(`{"a":1}`))
		if g.Held() != 0 || f.SentHeader() != nil {
			t.Fatalf("held %d, header %v: recorded an answer nobody shares", g.Held(), f.SentHeader())
		}
		if f2, leader := g.Join(t.Context(), k1); !leader || f2 == f {
			t.Fatal("joined an answer that is not recorded")
		}
		f.Finish(true)
		if _, ok := f.Body(); ok {
			t.Fatal("Body of an answer not recorded")
		}
		if own.Code != 200 || own.Body.String() != `{"a":1}` || own.Header().Get("Content-Type") != "application/json" {
			t.Fatalf("leader's client got %d %q %v", own.Code, own.Body, own.Header())
		}
		if f.Status() != 200 {
			t.Fatalf("Status %d", f.Status())
		}

		for _, tc := range []struct {
			name string
			f    *Flight
			keep bool
		}{{"kept", nil, true}, {"solo", g.Solo(t.Context()), false}} {
			k := tc.f
			if k == nil {
				k, _ = g.Join(t.Context(), Key(sha256.Sum256([]byte(tc.name))))
			}
			_, _ = k.Writer(httptest.NewRecorder(), tc.keep).Write([]byte("body"))
			k.Finish(true)
			if b, ok := k.Body(); !ok || string(b) != "body" {
				t.Fatalf("%s: Body %q %v", tc.name, b, ok)
			}
		}
	})
}

// TestLastToLeaveCancels: the exchange outlives the leader's client and a
// caller that leave while another still waits, and ends when the last one
// leaves.
func TestLastToLeaveCancels(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var g Group
		f, _ := g.Join(t.Context(), k1)
		g.Join(t.Context(), k1)
		g.Join(t.Context(), k1)
		ctx1, leave1 := context.WithCancel(t.Context())
		ctx2, leave2 := context.WithCancel(t.Context())
		errs := make(chan error, 2)
		for _, ctx := range []context.Context{ctx1, ctx2} {
			go func() {
				_, err := f.Serve(ctx, httptest.NewRecorder(), nil)
				errs <- err
			}()
		}
		synctest.Wait()
		f.LeaderLeft()
		f.LeaderLeft() // said twice (a failed write, then the context): counted once
		leave1()
		if err := <-errs; !errors.Is(err, context.Canceled) {
			t.Fatalf("first to leave: %v", err)
		}
		synctest.Wait()
		if f.Context().Err() != nil {
			t.Fatal("the exchange ended while a caller still waits")
		}
		leave2()
		<-errs
		synctest.Wait()
		if f.Context().Err() == nil {
			t.Fatal("the exchange outlived every caller")
		}
		if g.InFlight() != 0 {
			t.Fatal("an abandoned flight stays joinable")
		}
	})
}

// TestAbortedAndLagged: a cut exchange cuts every caller after what was
// recorded; past MaxBuffer nobody joins, and a caller that stops reading
// holds nothing back and is cut.
func TestAbortedAndLagged(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var g Group
		f, _ := g.Join(t.Context(), k1)
		g.Join(t.Context(), k1)
		_, _ = f.Writer(httptest.NewRecorder(), true).Write([]byte("part"))
		f.Finish(false)
		w := httptest.NewRecorder()
		if st, err := f.Serve(t.Context(), w, nil); st != 200 || !errors.Is(err, ErrAborted) || w.Body.String() != "part" {
			t.Fatalf("aborted: %d %v %q", st, err, w.Body)
		}

		g = Group{MaxBuffer: 10}
		f, _ = g.Join(t.Context(), k1)
		lw := f.Writer(httptest.NewRecorder(), true)
		g.Join(t.Context(), k1)
		g.Join(t.Context(), k1)
		stalled := &blockingWriter{ResponseRecorder: httptest.NewRecorder(), release: make(chan struct{})}
		errs := make(chan error, 2)
		go func() { _, err := f.Serve(t.Context(), stalled, nil); errs <- err }()
		fast := httptest.NewRecorder()
		go func() { _, err := f.Serve(t.Context(), fast, nil); errs <- err }()
		for range 5 {
			_, _ = lw.Write([]byte(strings.Repeat("x", 8)))
			synctest.Wait()
		}
		if _, leader := g.Join(t.Context(), k1); !leader {
			t.Fatal("joined a flight past MaxBuffer")
		}
		f.mu.Lock()
		kept := f.size - f.base
		f.mu.Unlock()
		if kept > 16 {
			t.Fatalf("kept %d bytes for a stalled caller (MaxBuffer 10)", kept)
		}
		close(stalled.release)
		f.Finish(true)
		lagged, whole := 0, 0
		for range 2 {
			switch err := <-errs; {
			case errors.Is(err, ErrLagged):
				lagged++
			case err == nil:
				whole++
			}
		}
		if lagged != 1 || whole != 1 || fast.Body.Len() != 40 {
			t.Fatalf("stalled and fast callers: %d cut, %d whole; the fast one got %d bytes", lagged, whole, fast.Body.Len())
		}
	})
}

// blockingWriter is a client that stops reading: its first body write
// blocks until released.
type blockingWriter struct {
	*httptest.ResponseRecorder
	release chan struct{}
	wrote   bool
}

func (b *blockingWriter) Write(p []byte) (int, error) {
	if !b.wrote {
		b.wrote = true
		<-b.release
	}
	return b.ResponseRecorder.Write(p)
}

// TestMaxTotal: past the group's budget a flight keeps nothing for late
// joiners, and a finished flight gives its bytes back.
func TestMaxTotal(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := Group{MaxTotal: 16}
		k2 := Key(sha256.Sum256([]byte("GET /v3/apps/2")))
		a, _ := g.Join(t.Context(), k1)
		b, _ := g.Join(t.Context(), k2)
		_, _ = a.Writer(httptest.NewRecorder(), true).Write([]byte("0123456789"))
		_, _ = b.Writer(httptest.NewRecorder(), true).Write([]byte("0123456789"))
		if g.Held() != 10 {
			t.Fatalf("held %d, want the first flight's 10", g.Held())
		}
		if _, leader := g.Join(t.Context(), k2); !leader {
			t.Fatal("joined a flight that keeps nothing")
		}
		if f, leader := g.Join(t.Context(), k1); leader || f != a {
			t.Fatal("could not join the flight within the budget")
		}
		done := make(chan error)
		go func() { _, err := a.Serve(t.Context(), httptest.NewRecorder(), nil); done <- err }()
		a.Finish(true)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		b.Finish(true)
		if g.Held() != 0 {
			t.Fatalf("held %d after every flight finished", g.Held())
		}
	})
}

// TestClose: Close ends every flight in progress, joined or solo, with its
// cause, and every flight started after it; the flights' contexts keep
// their parent's values but not its cancellation.
func TestClose(t *testing.T) {
	type ctxKey struct{}
	var g Group
	parent, cancel := context.WithCancel(context.WithValue(context.Background(), ctxKey{}, "v"))
	a, _ := g.Join(parent, Key{1})
	b := g.Solo(parent)
	cancel()
	if a.Context().Err() != nil || a.Context().Value(ctxKey{}) != "v" {
		t.Fatalf("a flight followed its parent's cancellation (%v) or lost its values", a.Context().Err())
	}
	stop := errors.New("stop")
	g.Close(stop)
	c, _ := g.Join(context.Background(), Key{2})
	for i, f := range []*Flight{a, b, c} {
		if !errors.Is(context.Cause(f.Context()), stop) {
			t.Fatalf("flight %d after Close: cause %v", i, context.Cause(f.Context()))
		}
	}
	for _, f := range []*Flight{a, b, c} {
		f.Finish(false)
	}
	if n := g.InFlight(); n != 0 {
		t.Fatalf("%d flights left after every one finished", n)
	}
}
