// Package inproc runs the whole gateway (cmd/gateway/app: proxy handler,
// limiter, quota store, retry policy, metrics, access log) in the calling
// process, for the request-path benchmark, CPU profiles and the load
// driver's smoke test. It is the same assembly the binary runs, without
// the listeners and signals.
package inproc

import (
	"context"
	"io"
	"net/http"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fusioo-gateway/gateway/cmd/gateway/app"
	"github.com/fusioo-gateway/gateway/internal/config"
)

// Gateway is one in-process gateway.
type Gateway struct {
	Config   config.Config
	Handler  http.Handler // the proxy listener's handler
	Admin    http.Handler // /metrics, /healthz, /readyz
	Registry *prometheus.Registry

	g      *app.Gateway
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

// Parse reads a gateway TOML configuration with environment overrides
// (KEY=VALUE), exactly as the gateway binary does.
func Parse(toml string, env []string) (config.Config, error) {
	return config.Parse([]byte(toml), env)
}

// New assembles a gateway for cfg and starts its background work. Access
// logs go to logw at cfg.Log.Level. Close stops it.
func New(cfg config.Config, logw io.Writer) (*Gateway, error) {
	if logw == nil {
		logw = io.Discard
	}
	log, err := app.NewLogger(cfg.Log, logw)
	if err != nil {
		return nil, err
	}
	g, err := app.New(cfg, log, "bench")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	gw := &Gateway{Config: cfg, Handler: g.Handler, Admin: g.Admin(), Registry: g.Registry, g: g, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(gw.done)
		g.Run(ctx)
	}()
	g.SetReady(true)
	return gw, nil
}

// Sweep runs the gateway's idle-key sweeps now.
func (g *Gateway) Sweep() { g.g.Sweep() }

// Close stops the background work and releases connections.
func (g *Gateway) Close() {
	g.once.Do(func() {
		g.cancel()
		<-g.done
		g.g.Close()
	})
}
