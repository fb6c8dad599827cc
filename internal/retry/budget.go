package retry

import (
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
)

// budgetBuckets is how finely the budget's window slides: the window is
// counted in this many sub-buckets, the oldest dropped whole.
const budgetBuckets = 10

// budget bounds retries to a share of recent requests, as a sliding window
// of budgetBuckets sub-buckets: an outage that fails every attempt then
// adds at most ratio×requests (+ min) attempts instead of multiplying the
// load by MaxAttempts.
type budget struct {
	ratio float64
	min   int
	width int64 // nanoseconds per bucket; 0: no budget (unlimited)
	clock clockwork.Clock

	mu      sync.Mutex
	buckets [budgetBuckets]struct {
		epoch    int64 // time / width of the bucket's interval
		requests int
		retries  int
	}
}

// newBudget returns the budget of ratio and min per window; a window of
// 0 (or less) is no budget: every retry is allowed.
func newBudget(ratio float64, min int, window time.Duration, clock clockwork.Clock) *budget {
	var w int64
	if window > 0 {
		w = max(int64(window)/budgetBuckets, 1)
	}
	return &budget{ratio: ratio, min: min, width: w, clock: clock}
}

// bucket returns the current bucket, reset if it held an older interval,
// and the current epoch. b.mu is held.
func (b *budget) bucket() (int, int64) {
	e := b.clock.Now().UnixNano() / b.width
	i := int(uint64(e) % budgetBuckets)
	if b.buckets[i].epoch != e {
		b.buckets[i].epoch, b.buckets[i].requests, b.buckets[i].retries = e, 0, 0
	}
	return i, e
}

// request counts a request (a first attempt).
func (b *budget) request() {
	if b.width == 0 {
		return
	}
	b.mu.Lock()
	i, _ := b.bucket()
	b.buckets[i].requests++
	b.mu.Unlock()
}

// take spends one retry if the budget allows it.
func (b *budget) take() bool {
	if b.width == 0 {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	i, e := b.bucket()
	var requests, retries int
	for j := range b.buckets {
		if e-b.buckets[j].epoch < budgetBuckets {
			requests += b.buckets[j].requests
			retries += b.buckets[j].retries
		}
	}
	if float64(retries+1) > float64(b.min)+b.ratio*float64(requests) {
		return false
	}
	b.buckets[i].retries++
	return true
}
