// Command gateway is fusioo-gateway: a rate-limit-aware reverse proxy for
// the Fusioo API. It reads one TOML file (-config), serves the proxy on
// server.listen and /metrics, /healthz, /readyz on server.admin_listen.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Environ(), os.Stdout, os.Stderr, nil)
	stop()
	os.Exit(code)
}

// exit codes
const (
	exitOK     = 0
	exitFailed = 1 // the gateway could not start or stopped on an error
	exitConfig = 2 // bad flags or configuration
)

func printf(w io.Writer, format string, args ...any) { _, _ = fmt.Fprintf(w, format, args...) }
