// Command bareproxy is the benchmark's baseline: a bare
// httputil.ReverseProxy (bench/bareproxy) to -upstream. When it listens it
// prints "bareproxy listening on ADDR" to stderr; SIGINT/SIGTERM stop it.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/fusioo-gateway/gateway/bench/bareproxy"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	upstream := flag.String("upstream", "", "upstream base URL (required)")
	pprofAddr := flag.String("pprof", "", "address to serve net/http/pprof on (empty: none), to profile the baseline as the gateway's server.pprof does")
	flag.Parse()
	u, err := url.Parse(*upstream)
	if err != nil || u.Scheme == "" || u.Host == "" {
		fmt.Fprintln(os.Stderr, "bareproxy: -upstream must be an absolute URL")
		os.Exit(2)
	}
	if *pprofAddr != "" {
		go func() { _ = http.ListenAndServe(*pprofAddr, pprofMux()) }()
	}
	h, tr := bareproxy.New(u)
	defer tr.CloseIdleConnections()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bareproxy:", err)
		os.Exit(1)
	}
	// The same server settings as the gateway's defaults.
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second, MaxHeaderBytes: 64 << 10}
	fmt.Fprintf(os.Stderr, "bareproxy listening on %s\n", ln.Addr())
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
		defer c()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && err != http.ErrServerClosed {
		fmt.Fprintln(os.Stderr, "bareproxy:", err)
		os.Exit(1)
	}
}

func pprofMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	return mux
}
