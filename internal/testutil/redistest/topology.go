package redistest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Sentinel is a Sentinel-managed primary: a master, a replica of it and
// three sentinels (quorum 2), all redis-server processes on loopback. A
// sentinel declares the master down after 1 s without an answer.
type Sentinel struct {
	Name      string // the master's name for the sentinels
	Master    *Server
	Replica   *Server
	Sentinels []*Server
}

// StartSentinel starts a Sentinel topology and stops it when t ends.
func StartSentinel(t testing.TB) *Sentinel {
	t.Helper()
	st, err := LaunchSentinel(t.TempDir())
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	t.Cleanup(st.Stop)
	return st
}

// LaunchSentinel is StartSentinel outside a test, under dir; the caller
// must Stop it.
func LaunchSentinel(dir string) (st *Sentinel, err error) {
	st = &Sentinel{Name: "fgw-master"}
	defer func() {
		if err != nil {
			st.Stop()
		}
	}()
	if st.Master, err = Launch(mkdir(dir, "master")); err != nil {
		return st, err
	}
	if st.Replica, err = Launch(mkdir(dir, "replica"), "--replicaof", "127.0.0.1", strconv.Itoa(st.Master.Port())); err != nil {
		return st, err
	}
	for i := range 3 {
		d := mkdir(dir, fmt.Sprintf("sentinel-%d", i))
		conf := filepath.Join(d, "sentinel.conf")
		cfg := fmt.Sprintf("sentinel monitor %[1]s 127.0.0.1 %[2]d 2\nsentinel down-after-milliseconds %[1]s 1000\n"+
			"sentinel failover-timeout %[1]s 10000\nsentinel parallel-syncs %[1]s 1\n", st.Name, st.Master.Port())
		if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
			return st, err
		}
		s, err := launchServer(&Server{dir: d, sentinel: conf})
		if err != nil {
			return st, fmt.Errorf("sentinel %d: %w", i, err)
		}
		st.Sentinels = append(st.Sentinels, s)
	}
	// Ready once every sentinel knows the replica and the other sentinels.
	deadline := time.Now().Add(startTimeout)
	for _, s := range st.Sentinels {
		for {
			out, err := Command(s.Addr(), "SENTINEL", "MASTER", st.Name)
			if err == nil && strings.Contains(out, "num-slaves\n1\n") && strings.Contains(out, "num-other-sentinels\n2\n") {
				break
			}
			if time.Now().After(deadline) {
				return st, fmt.Errorf("sentinel %s not ready: %q %v", s.Addr(), out, err)
			}
			time.Sleep(50 * time.Millisecond) // polling the topology's observable state
		}
	}
	return st, nil
}

// Stop ends every process of the topology.
func (st *Sentinel) Stop() {
	for _, s := range append([]*Server{st.Master, st.Replica}, st.Sentinels...) {
		if s != nil {
			s.Stop()
		}
	}
}

func mkdir(dir, name string) string {
	d := filepath.Join(dir, name)
	_ = os.MkdirAll(d, 0o755)
	return d
}

// Addrs are the sentinels' addresses (redis.sentinel_addrs).
func (st *Sentinel) Addrs() []string {
	var out []string
	for _, s := range st.Sentinels {
		out = append(out, s.Addr())
	}
	return out
}

// MasterAddr asks the first sentinel that answers which address the master
// has now.
func (st *Sentinel) MasterAddr() (string, error) {
	var lastErr error
	for _, s := range st.Sentinels {
		out, err := Command(s.Addr(), "SENTINEL", "GET-MASTER-ADDR-BY-NAME", st.Name)
		if err == nil {
			if f := strings.Fields(out); len(f) == 2 {
				return net.JoinHostPort(f[0], f[1]), nil
			}
			err = fmt.Errorf("answer %q", out)
		}
		lastErr = err
	}
	return "", lastErr
}

// Cluster is a Redis Cluster of masters with one replica each, every node
// a redis-server on loopback with cluster-node-timeout 2000 (a master not
// heard from for 2 s is failed over to its replica).
type Cluster struct {
	Nodes []*Server
}

// StartCluster starts a Cluster of masters masters (and as many replicas)
// and stops it when t ends.
func StartCluster(t testing.TB, masters int) *Cluster {
	t.Helper()
	c, err := LaunchCluster(t.TempDir(), masters)
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	t.Cleanup(c.Stop)
	return c
}

// LaunchCluster is StartCluster outside a test, under dir; the caller
// must Stop it.
func LaunchCluster(dir string, masters int) (c *Cluster, err error) {
	c = &Cluster{}
	defer func() {
		if err != nil {
			c.Stop()
		}
	}()
	for i := range 2 * masters {
		d := mkdir(dir, fmt.Sprintf("node-%d", i))
		s, err := launchServer(&Server{dir: d, maxPort: 55535, args: []string{
			"--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(d, "nodes.conf"),
			"--cluster-node-timeout", "2000", "--cluster-require-full-coverage", "no"}})
		if err != nil {
			return c, fmt.Errorf("cluster node: %w", err)
		}
		c.Nodes = append(c.Nodes, s)
	}
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		return c, fmt.Errorf("redis-cli not found (Debian's redis-tools, installed with redis-server): %w", err)
	}
	args := []string{"--cluster", "create"}
	args = append(args, c.Addrs()...)
	args = append(args, "--cluster-replicas", "1", "--cluster-yes")
	if out, err := exec.Command(cli, args...).CombinedOutput(); err != nil {
		return c, fmt.Errorf("redis-cli --cluster create: %w\n%s", err, out)
	}
	return c, c.WaitHealthy(startTimeout)
}

// Stop ends every node.
func (c *Cluster) Stop() {
	for _, s := range c.Nodes {
		s.Stop()
	}
}

// Addrs are the nodes' addresses (redis.cluster_addrs).
func (c *Cluster) Addrs() []string {
	var out []string
	for _, s := range c.Nodes {
		out = append(out, s.Addr())
	}
	return out
}

// WaitHealthy waits until every running node says cluster_state:ok and
// every master holding slots has a replica in sync (so it can fail over).
func (c *Cluster) WaitHealthy(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		ok := true
		for _, s := range c.Nodes {
			if s.Pid() < 0 {
				continue
			}
			out, err := Command(s.Addr(), "CLUSTER", "INFO")
			if err != nil || !strings.Contains(out, "cluster_state:ok") {
				ok = false
				break
			}
			repl, err := Command(s.Addr(), "INFO", "replication")
			if err != nil || (strings.Contains(repl, "role:master") && !strings.Contains(repl, "state=online")) {
				ok = false
				break
			}
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cluster not healthy within %s", timeout)
		}
		time.Sleep(50 * time.Millisecond) // polling the topology's observable state
	}
}

// MasterOf returns the running node that is master of slot, or nil.
func (c *Cluster) MasterOf(slot int) *Server {
	for _, s := range c.Nodes {
		if s.Pid() < 0 {
			continue
		}
		out, err := Command(s.Addr(), "CLUSTER", "NODES")
		if err != nil {
			continue
		}
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) < 9 || !strings.Contains(f[2], "master") || strings.Contains(f[2], "fail") {
				continue
			}
			for _, r := range f[8:] {
				lo, hi, _ := strings.Cut(r, "-")
				a, err1 := strconv.Atoi(lo)
				b, err2 := strconv.Atoi(hi)
				if hi == "" {
					b, err2 = a, nil
				}
				if err1 == nil && err2 == nil && slot >= a && slot <= b {
					addr, _, _ := strings.Cut(f[1], "@")
					for _, n := range c.Nodes {
						if n.Addr() == addr {
							return n
						}
					}
				}
			}
		}
		return nil
	}
	return nil
}

// Command runs one Redis command on addr and returns its reply as text:
// simple strings, integers and errors as one line, bulk strings as their
// content, arrays as their elements joined by newlines. It is for tests
// and checks, not load.
func Command(addr string, args ...string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(c, b.String()); err != nil {
		return "", err
	}
	return readReply(bufio.NewReader(c))
}

func readReply(rd *bufio.Reader) (string, error) {
	line, err := rd.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", errors.New("empty reply")
	}
	switch line[0] {
	case '+', ':':
		return line[1:], nil
	case '-':
		return "", errors.New(line[1:])
	case '$':
		n, _ := strconv.Atoi(line[1:])
		if n < 0 {
			return "", nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(rd, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	case '*':
		n, _ := strconv.Atoi(line[1:])
		parts := make([]string, 0, max(n, 0))
		for range n {
			s, err := readReply(rd)
			if err != nil {
				return "", err
			}
			parts = append(parts, s)
		}
		return strings.Join(parts, "\n"), nil
	}
	return "", fmt.Errorf("unexpected reply %q", line)
}
