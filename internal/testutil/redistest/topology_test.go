package redistest

import (
	"strings"
	"testing"
	"time"
)

func TestSentinelFailsOver(t *testing.T) {
	st := StartSentinel(t)
	before, err := st.MasterAddr()
	if err != nil || before != st.Master.Addr() {
		t.Fatalf("master %q %v, want %s", before, err, st.Master.Addr())
	}
	st.Master.Kill()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if a, err := st.MasterAddr(); err == nil && a == st.Replica.Addr() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no promotion within 30s")
		}
		time.Sleep(50 * time.Millisecond) // polling the topology's observable state
	}
}

func TestClusterStartsAndFailsOver(t *testing.T) {
	c := StartCluster(t, 3)
	m := c.MasterOf(0)
	if m == nil {
		t.Fatal("no master for slot 0")
	}
	m.Kill()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if n := c.MasterOf(0); n != nil && n != m {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no promotion within 30s")
		}
		time.Sleep(50 * time.Millisecond) // polling the topology's observable state
	}
	if out, err := Command(c.Nodes[1].Addr(), "CLUSTER", "INFO"); err != nil || !strings.Contains(out, "cluster_known_nodes:6") {
		t.Fatalf("cluster info %q %v", out, err)
	}
}
