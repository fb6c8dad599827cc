// Package memnet is an in-process network for tests that run inside a
// testing/synctest bubble: its connections are net.Pipe pairs, whose reads
// and writes block on channels, so a goroutine waiting on one is durably
// blocked and the bubble's clock can advance. A loopback socket is not:
// a test that serves HTTP on loopback inside a bubble never sees its fake
// time move while a server waits in Accept.
//
// A Network is created inside the bubble that uses it (its channels belong
// to that bubble).
package memnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
)

// Network is a set of listeners by address, and the dialer that reaches
// them.
type Network struct {
	mu        sync.Mutex
	listeners map[string]*Listener
}

// New returns an empty network.
func New() *Network { return &Network{listeners: map[string]*Listener{}} }

// Listen returns a listener at addr ("host:port"), which Dial reaches.
func (n *Network) Listen(addr string) (*Listener, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.listeners[addr]; ok {
		return nil, fmt.Errorf("memnet: listen %s: address in use", addr)
	}
	l := &Listener{addr: addr, conns: make(chan net.Conn), done: make(chan struct{}), net: n}
	n.listeners[addr] = l
	return l, nil
}

// Dial connects to the listener at addr, waiting until it accepts or ctx
// ends; it has http.Transport.DialContext's signature. The network name is
// ignored.
func (n *Network) Dial(ctx context.Context, _, addr string) (net.Conn, error) {
	n.mu.Lock()
	l := n.listeners[addr]
	n.mu.Unlock()
	if l == nil {
		return nil, &net.OpError{Op: "dial", Net: "memnet", Addr: Addr(addr), Err: errors.New("connection refused")}
	}
	client, server := net.Pipe()
	select {
	case l.conns <- conn{server, Addr(addr), Addr("client")}:
		return conn{client, Addr("client"), Addr(addr)}, nil
	case <-l.done:
		return nil, &net.OpError{Op: "dial", Net: "memnet", Addr: Addr(addr), Err: errors.New("connection refused")}
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Listener is a net.Listener on a Network.
type Listener struct {
	addr  string
	conns chan net.Conn
	once  sync.Once
	done  chan struct{}
	net   *Network
}

// Accept waits for the next Dial to this listener.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops the listener: Accept returns net.ErrClosed and the address
// is free again. Connections already accepted stay open.
func (l *Listener) Close() error {
	l.once.Do(func() {
		close(l.done)
		l.net.mu.Lock()
		delete(l.net.listeners, l.addr)
		l.net.mu.Unlock()
	})
	return nil
}

// Addr is the listener's address.
func (l *Listener) Addr() net.Addr { return Addr(l.addr) }

// Addr is an address on a Network.
type Addr string

// Network returns "memnet".
func (Addr) Network() string { return "memnet" }

// String returns the address as given to Listen.
func (a Addr) String() string { return string(a) }

// conn is one end of a pipe with the addresses of a connection.
type conn struct {
	net.Conn
	local, remote net.Addr
}

func (c conn) LocalAddr() net.Addr  { return c.local }
func (c conn) RemoteAddr() net.Addr { return c.remote }
