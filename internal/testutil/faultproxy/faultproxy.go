// Package faultproxy is a TCP proxy on loopback for fault tests: in front of
// a real server (redis-server, the simulator) it forwards every byte in both
// directions, and on command stops forwarding without closing the sockets
// (a blackhole: a partitioned pod, a stopped VM), cuts every connection
// (reset), or delays every chunk (a slow network). It is the fault
// injection of the tests and of bench/harness's fault runs, so each fault is
// a real socket doing what a real network does, not a mock.
package faultproxy

import (
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// Proxy forwards connections from its listener to a target address.
type Proxy struct {
	ln     net.Listener
	target string

	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	closed  bool
	latency time.Duration
	paused  bool
	resume  chan struct{} // closed when a pause ends
	wg      sync.WaitGroup
}

// New listens on a free loopback port and forwards to target
// ("host:port"). Close stops it.
func New(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen: %w", err)
	}
	p := &Proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}, resume: make(chan struct{})}
	close(p.resume)
	p.wg.Go(p.accept)
	return p, nil
}

// Addr is the proxy's "127.0.0.1:PORT": what clients dial instead of the
// target.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetLatency delays every chunk read from now on by d, in both directions
// (order kept, throughput not limited). 0 forwards at once.
func (p *Proxy) SetLatency(d time.Duration) {
	p.mu.Lock()
	p.latency = d
	p.mu.Unlock()
}

// Pause stops forwarding: connections stay open and new ones are accepted,
// but no byte reaches the other side until Resume (what arrives meanwhile
// is held, then delivered in order). The peer sees a server that accepts
// and never answers.
func (p *Proxy) Pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.paused {
		p.paused = true
		p.resume = make(chan struct{})
	}
}

// Resume ends a Pause.
func (p *Proxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.paused {
		p.paused = false
		close(p.resume)
	}
}

// Cut resets every open connection (new ones are accepted as usual): a
// peer that crashed, or a network that dropped the flows.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // RST, not FIN
		}
		_ = c.Close()
	}
}

// Close stops accepting, closes every connection and waits for the
// forwarding goroutines to end.
func (p *Proxy) Close() {
	_ = p.ln.Close()
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		_ = c.Close()
	}
	if p.paused {
		p.paused = false
		close(p.resume)
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		_ = c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	_ = c.Close()
}

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Go(func() { p.serve(c) })
	}
}

func (p *Proxy) serve(client net.Conn) {
	if !p.track(client) {
		return
	}
	defer p.untrack(client)
	server, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		return
	}
	if !p.track(server) {
		return
	}
	defer p.untrack(server)
	var wg sync.WaitGroup
	wg.Go(func() { p.pipe(server, client); _ = server.Close(); _ = client.Close() })
	wg.Go(func() { p.pipe(client, server); _ = server.Close(); _ = client.Close() })
	wg.Wait()
}

type chunk struct {
	b  []byte
	at time.Time
}

// pipe copies src to dst chunk by chunk, each delivered at its latency and
// only while not paused.
func (p *Proxy) pipe(dst io.Writer, src io.Reader) {
	ch := make(chan chunk, 64) // full: the reader stops, TCP pushes back
	done := make(chan struct{})
	go func() {
		defer close(done)
		for c := range ch {
			if d := time.Until(c.at); d > 0 {
				time.Sleep(d)
			}
			p.mu.Lock()
			resume := p.resume
			p.mu.Unlock()
			<-resume
			if _, err := dst.Write(c.b); err != nil {
				for range ch { // drain until the reader ends
				}
				return
			}
		}
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			lat := p.latency
			p.mu.Unlock()
			ch <- chunk{b: append([]byte(nil), buf[:n]...), at: time.Now().Add(lat)}
		}
		if err != nil {
			break
		}
	}
	close(ch)
	<-done
}
