// Package harness is the load driver behind scripts/bench.sh and
// scripts/faults.sh: it starts the simulator, the bare proxy, Redis and
// gateways (as processes, or in process for tests), drives them with the
// same load, reads the simulator's ledger and the gateways' /metrics, and
// prints tables of ratios and pass/fail lines.
package harness

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fusioo-gateway/gateway/internal/fusioo"
)

// Sample is one request's outcome.
type Sample struct {
	// Start is when the request was due (open loop: its scheduled time,
	// so a target that falls behind is charged for the queueing it
	// causes) or sent (closed loop).
	Start time.Time
	// Latency runs from Start to the end of the response body, or to the
	// error.
	Latency time.Duration
	// Sent is when the request was handed to the client: later than Start
	// when the load generator itself fell behind (a loaded machine).
	Sent   time.Time
	Status int         // 0 when Err is set
	Code   fusioo.Code // Fusioo code of an error body (status >= 400)
	// RetryAfter is the Retry-After header, if any.
	RetryAfter string
	Err        error
	// Tag is what the request builder said about the request (a token
	// index, "create", …), for per-kind accounting.
	Tag string
}

// OK reports a 2xx answer.
func (s Sample) OK() bool { return s.Err == nil && s.Status >= 200 && s.Status < 300 }

// Builder makes the i-th request of a run (i from 0) and tags it.
type Builder func(ctx context.Context, i int) (*http.Request, string)

// Run is one load run's samples.
type Run struct {
	Name    string
	Samples []Sample
	Elapsed time.Duration // first due time to last answer
}

// NewClient returns the HTTP client every load run uses: keep-alive
// connections (up to conns idle), no compression, no timeout of its own
// (runs use contexts).
func NewClient(conns int) *http.Client {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        0,
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	return &http.Client{Transport: tr}
}

// RateOptions configure an open-loop run.
type RateOptions struct {
	Rate        float64       // requests per second
	Duration    time.Duration // how long requests are started
	MaxInFlight int           // bound on outstanding requests (0: 10000)
	// Timeout is each request's own deadline (0: none beyond the run's
	// context).
	Timeout time.Duration
}

// RunRate sends requests at a constant rate (open loop) for o.Duration and
// waits for their answers. When MaxInFlight requests are outstanding the
// pacer waits; the latencies of the requests it delayed include that wait.
func RunRate(ctx context.Context, c *http.Client, build Builder, o RateOptions) *Run {
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 10000
	}
	n := int(o.Rate * o.Duration.Seconds())
	samples := make([]Sample, n)
	sem := make(chan struct{}, o.MaxInFlight)
	var wg sync.WaitGroup
	start := time.Now()
	interval := time.Duration(float64(time.Second) / o.Rate)
	sent := 0
	for i := 0; i < n; i++ {
		due := start.Add(time.Duration(i) * interval)
		if d := time.Until(due); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
		}
		if ctx.Err() != nil {
			break
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		sent++
		wg.Go(func() {
			defer func() { <-sem }()
			samples[i] = do(ctx, c, build, i, due, o.Timeout)
		})
	}
	wg.Wait()
	r := &Run{Samples: samples[:sent]}
	r.Elapsed = time.Since(start)
	return r
}

// RunClosed runs conc workers that each send the next request as soon as
// the previous one is answered, for d.
func RunClosed(ctx context.Context, c *http.Client, build Builder, conc int, d time.Duration) *Run {
	ctx2, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var next atomic.Int64
	per := make([][]Sample, conc)
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < conc; w++ {
		wg.Go(func() {
			for ctx2.Err() == nil {
				i := int(next.Add(1) - 1)
				// Requests in flight at the end are finished on the
				// parent context: a cut-off is not an error.
				s := do(ctx, c, build, i, time.Now(), 0)
				per[w] = append(per[w], s)
			}
		})
	}
	wg.Wait()
	r := &Run{Elapsed: time.Since(start)}
	for _, p := range per {
		r.Samples = append(r.Samples, p...)
	}
	return r
}

// maxBody bounds what a sample reads of an answer: enough for any answer
// the simulator gives in these runs; the rest is drained.
const maxBody = 64 << 10

func do(ctx context.Context, c *http.Client, build Builder, i int, due time.Time, timeout time.Duration) Sample {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, due.Add(timeout))
		defer cancel()
	}
	req, tag := build(ctx, i)
	s := Sample{Start: due, Tag: tag, Sent: time.Now()}
	resp, err := c.Do(req)
	if err != nil {
		s.Err, s.Latency = err, time.Since(due)
		return s
	}
	s.Status = resp.StatusCode
	s.RetryAfter = resp.Header.Get("Retry-After")
	if resp.StatusCode >= 400 {
		var b bytes.Buffer
		_, err = io.Copy(&b, io.LimitReader(resp.Body, maxBody))
		s.Code = fusioo.ParseCode(b.Bytes())
	} else {
		_, err = io.Copy(io.Discard, resp.Body)
	}
	_ = resp.Body.Close()
	s.Latency = time.Since(due)
	if err != nil && !errors.Is(err, io.EOF) {
		s.Err = err
	}
	return s
}
