package harness

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/fusioo-gateway/gateway/bench/bareproxy"
	"github.com/fusioo-gateway/gateway/bench/inproc"
	"github.com/fusioo-gateway/gateway/internal/fusioosim"
)

// Service is one started server: the simulator, a bare proxy or a
// gateway.
type Service struct {
	Name     string
	URL      string // base URL of what clients talk to
	AdminURL string // a gateway's admin listener ("" otherwise)
	PprofURL string // where /debug/pprof/ answers, when it does (a gateway's with server.pprof)
	Proc     *Proc  // nil when in process
	stop     func()
	once     sync.Once
}

// Stop ends the service (gracefully, then by force).
func (s *Service) Stop() { s.once.Do(s.stop) }

// SimOptions configure the simulator.
type SimOptions struct {
	Limit   int           // per token and window; 0 = unlimited
	Window  time.Duration // 0 = 1h
	Latency time.Duration // added to every answer
	Jitter  time.Duration
	Seed    int64
	History bool // keep every charge time (/_sim/history)
}

// Launcher starts the services of a scenario, as processes (ProcLauncher)
// or in the driver's own process (InprocLauncher, for tests).
type Launcher interface {
	Sim(o SimOptions) (*Service, error)
	Bare(upstream string) (*Service, error)
	// Gateway starts a gateway with the TOML configuration cfg plus env
	// overrides (FUSIOO_GATEWAY_*=…); the launcher chooses the listen
	// addresses. It returns once /readyz answers 200.
	Gateway(name, cfg string, env []string) (*Service, error)
	// LogDir is where logs and generated files go.
	LogDir() string
}

// ProcLauncher runs the built binaries (gateway, fusioo-sim, bareproxy in
// BinDir) as child processes.
type ProcLauncher struct {
	BinDir string
	Logs   string
	// CPUs, when set, is the CPU list (taskset -c) every process starts
	// on, so a Go binary's GOMAXPROCS fits the CPUs it has.
	CPUs string
	// Defaults keeps the gateway's deployed defaults: no NoCoalesce (for
	// runs that measure them, and builds that predate the key).
	Defaults bool
}

// start runs bin under taskset when l.CPUs is set (taskset execs bin:
// the pid is bin's).
func (l *ProcLauncher) start(name, bin string, args, env []string) (*Proc, error) {
	if l.CPUs != "" {
		args = append([]string{"-c", l.CPUs, bin}, args...)
		bin = "taskset"
	}
	return StartProc(name, bin, args, env, l.Logs)
}

// LogDir implements Launcher.
func (l *ProcLauncher) LogDir() string { return l.Logs }

// Sim implements Launcher.
func (l *ProcLauncher) Sim(o SimOptions) (*Service, error) {
	addr, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	window := o.Window
	if window <= 0 {
		window = time.Hour
	}
	args := []string{"-listen", addr, "-limit", strconv.Itoa(o.Limit), "-window", window.String(),
		"-latency", o.Latency.String(), "-jitter", o.Jitter.String(), "-seed", strconv.FormatInt(o.Seed, 10)}
	if o.History {
		args = append(args, "-history")
	}
	p, err := l.start("fusioo-sim", filepath.Join(l.BinDir, "fusioo-sim"), args, nil)
	if err != nil {
		return nil, err
	}
	s := &Service{Name: "fusioo-sim", URL: "http://" + addr, Proc: p, stop: func() { p.Stop(6 * time.Second) }}
	if err := WaitHTTP(s.URL+"/_sim/ledger", p, 15*time.Second); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// Bare implements Launcher.
func (l *ProcLauncher) Bare(upstream string) (*Service, error) {
	addr, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	admin, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	p, err := l.start("bareproxy", filepath.Join(l.BinDir, "bareproxy"), []string{"-listen", addr, "-upstream", upstream, "-pprof", admin}, nil)
	if err != nil {
		return nil, err
	}
	s := &Service{Name: "bare", URL: "http://" + addr, PprofURL: "http://" + admin, Proc: p, stop: func() { p.Stop(6 * time.Second) }}
	// The simulator's ledger through the proxy proves both are up.
	if err := WaitHTTP(s.URL+"/_sim/ledger", p, 15*time.Second); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// Gateway implements Launcher.
func (l *ProcLauncher) Gateway(name, cfg string, env []string) (*Service, error) {
	if !l.Defaults {
		env = append([]string{NoCoalesce}, env...)
	}
	listen, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	admin, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	path := filepath.Join(l.Logs, name+".toml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	env = append(append([]string(nil), env...),
		"FUSIOO_GATEWAY_SERVER_LISTEN="+listen, "FUSIOO_GATEWAY_SERVER_ADMIN_LISTEN="+admin)
	p, err := l.start(name, filepath.Join(l.BinDir, "gateway"), []string{"-config", path}, env)
	if err != nil {
		return nil, err
	}
	s := &Service{Name: name, URL: "http://" + listen, AdminURL: "http://" + admin, PprofURL: "http://" + admin, Proc: p,
		stop: func() { p.Stop(10 * time.Second) }}
	if err := WaitHTTP(s.AdminURL+"/readyz", p, 15*time.Second); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// NoCoalesce comes first in every harness gateway's environment: the
// runs judge the limiter and the retries at the simulator, and the
// identical reads their clients send would otherwise share answers
// ([coalesce]). A run that measures the deployed defaults (wrk) starts
// its gateways with ProcLauncher.Defaults, and sends reads that differ.
const NoCoalesce = "FUSIOO_GATEWAY_COALESCE_ENABLED=false"

// InprocLauncher runs everything inside the calling process: the
// simulator package, bench/bareproxy and bench/inproc's copy of the
// gateway's wiring, each on its own loopback listener. Tests use it.
type InprocLauncher struct {
	Logs string
}

// LogDir implements Launcher.
func (l *InprocLauncher) LogDir() string { return l.Logs }

func serve(h http.Handler) (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	if b, ok := h.(interface {
		BaseContext(net.Listener) context.Context
	}); ok {
		srv.BaseContext = b.BaseContext // as cmd/gateway wires the gateway's handler
	}
	go func() { _ = srv.Serve(ln) }()
	return "http://" + ln.Addr().String(), func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if srv.Shutdown(ctx) != nil {
			_ = srv.Close()
		}
	}, nil
}

// Sim implements Launcher.
func (l *InprocLauncher) Sim(o SimOptions) (*Service, error) {
	sim := fusioosim.New(fusioosim.Config{Limit: o.Limit, Window: o.Window, Seed: o.Seed, History: o.History,
		Faults: fusioosim.Faults{Latency: o.Latency, Jitter: o.Jitter}})
	u, stop, err := serve(sim)
	if err != nil {
		return nil, err
	}
	return &Service{Name: "fusioo-sim", URL: u, stop: stop}, nil
}

// Bare implements Launcher.
func (l *InprocLauncher) Bare(upstream string) (*Service, error) {
	up, err := url.Parse(upstream)
	if err != nil {
		return nil, err
	}
	h, tr := bareproxy.New(up)
	u, stop, err := serve(h)
	if err != nil {
		return nil, err
	}
	return &Service{Name: "bare", URL: u, stop: func() { stop(); tr.CloseIdleConnections() }}, nil
}

// Gateway implements Launcher.
func (l *InprocLauncher) Gateway(name, cfg string, env []string) (*Service, error) {
	c, err := inproc.Parse(cfg, append([]string{NoCoalesce}, env...))
	if err != nil {
		return nil, err
	}
	g, err := inproc.New(c, io.Discard)
	if err != nil {
		return nil, err
	}
	u, stop, err := serve(g.Handler)
	if err != nil {
		g.Close()
		return nil, err
	}
	au, astop, err := serve(g.Admin)
	if err != nil {
		stop()
		g.Close()
		return nil, err
	}
	return &Service{Name: name, URL: u, AdminURL: au, stop: func() { stop(); astop(); g.Close() }}, nil
}

// SimLedger reads the simulator's ledger.
func SimLedger(ctx context.Context, simURL string) (fusioosim.Ledger, error) {
	var l fusioosim.Ledger
	return l, getJSON(ctx, simURL+"/_sim/ledger", &l)
}

// SimHistory reads the simulator's charge times per scope (GET
// /_sim/history; SimOptions.History must be set).
func SimHistory(ctx context.Context, simURL string) (map[string][]time.Time, error) {
	var h map[string][]time.Time
	return h, getJSON(ctx, simURL+"/_sim/history", &h)
}

// getJSON decodes the JSON answer of a GET of url into v.
func getJSON(ctx context.Context, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := adminClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: status %d", url, resp.StatusCode)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// SimScope is the key the simulator's ledger and history use for a
// token's scope: the first 12 hex digits of its SHA-256.
func SimScope(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:6])
}

// SimFaults replaces the simulator's faults (PUT /_sim/faults) with the
// JSON object faults, e.g. {"unavailable":0.05}.
func SimFaults(ctx context.Context, simURL, faults string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, simURL+"/_sim/faults", bytes.NewBufferString(faults))
	if err != nil {
		return err
	}
	resp, err := adminClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("faults: status %d: %s", resp.StatusCode, b)
	}
	return nil
}

// SimReset clears the simulator (POST /_sim/reset).
func SimReset(ctx context.Context, simURL string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, simURL+"/_sim/reset", nil)
	if err != nil {
		return err
	}
	resp, err := adminClient.Do(req)
	if err != nil {
		return err
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("reset: status %d", resp.StatusCode)
	}
	return nil
}

// Readyz returns the status and body of a gateway's /readyz.
func Readyz(ctx context.Context, adminURL string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, adminURL+"/readyz", nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := adminClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}
