package flight

import (
	"context"
	"errors"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// TestCloseReachesDisplacedFlight: a flight whose body passed MaxBuffer is
// no longer joinable, and an identical request starts a new flight in its
// key's place; Close still cancels the first, which is in progress.
func TestCloseReachesDisplacedFlight(t *testing.T) {
	g := Group{MaxBuffer: 4}
	f1, leader := g.Join(context.Background(), k1)
	if !leader {
		t.Fatal("not leader")
	}
	w := f1.Writer(httptest.NewRecorder(), true)
	_, _ = w.Write([]byte(strings.Repeat("x", 10))) // past MaxBuffer: not joinable
	f2, leader := g.Join(context.Background(), k1)
	if !leader || f2 == f1 {
		t.Fatal("second Join should start a new flight")
	}
	boom := errors.New("shutdown")
	g.Close(boom)
	if context.Cause(f2.Context()) != boom {
		t.Errorf("f2 not cancelled: %v", context.Cause(f2.Context()))
	}
	if context.Cause(f1.Context()) != boom {
		t.Errorf("f1 (still in progress, displaced) not cancelled by Close: cause %v", context.Cause(f1.Context()))
	}
	f1.Finish(true)
	f2.Finish(true)
	if n := g.InFlight(); n != 0 {
		t.Errorf("InFlight %d after Finish", n)
	}
}

// TestCloseReachesDirectFlight: a flight nobody joined by its header is
// joinable no more and its key's place is free, but it is in progress:
// Close cancels it, and it leaves the group when it finishes (found by
// review: it had left the group at its header, out of Close's reach, so a
// shutdown's end did not cut an unshared read still streaming).
func TestCloseReachesDirectFlight(t *testing.T) {
	var g Group
	f, _ := g.Join(context.Background(), k1)
	_, _ = f.Writer(httptest.NewRecorder(), false).Write([]byte("first bytes"))
	if f2, leader := g.Join(context.Background(), k1); !leader || f2 == f {
		t.Fatal("joined a flight nobody shared at its header")
	} else {
		f2.Finish(true)
	}
	if n := g.InFlight(); n != 1 {
		t.Fatalf("InFlight %d, want the direct flight in progress", n)
	}
	boom := errors.New("shutdown")
	g.Close(boom)
	if context.Cause(f.Context()) != boom {
		t.Fatalf("Close did not cancel a direct flight in progress: cause %v", context.Cause(f.Context()))
	}
	f.Finish(true)
	if n := g.InFlight(); n != 0 {
		t.Fatalf("InFlight %d after Finish", n)
	}
}

// TestCloseConcurrent: flights (keyed and solo) started while Close runs:
// every one not yet finished when Close returns is cancelled with its
// cause, and none stays in the group after Finish or its last caller
// leaving.
func TestCloseConcurrent(t *testing.T) {
	for round := range 50 {
		var g Group
		boom := errors.New("shutdown")
		closed := make(chan struct{})
		var wg sync.WaitGroup
		var bad atomic.Int64
		for w := range 8 {
			wg.Go(func() {
				for i := range 20 {
					var f *Flight
					leader := true
					switch i % 3 {
					case 0:
						f = g.Solo(context.Background())
					default:
						var k Key
						k[0], k[1] = byte(w*20+i), byte(i%2)
						f, leader = g.Join(context.Background(), k)
					}
					if i == 10 {
						<-closed
						if context.Cause(f.Context()) != boom {
							bad.Add(1)
						}
					}
					if leader {
						f.Finish(true)
					} else {
						f.leave()
					}
				}
			})
		}
		runtime.Gosched()
		g.Close(boom)
		close(closed)
		wg.Wait()
		if n := g.InFlight(); n != 0 {
			t.Fatalf("round %d: InFlight %d after all finished", round, n)
		}
		if n := bad.Load(); n != 0 {
			t.Fatalf("round %d: %d live flights not cancelled by Close", round, n)
		}
	}
}
