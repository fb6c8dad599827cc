package harness

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTick is the unit of /proc/PID/stat's CPU times (USER_HZ, 100 on
// Linux).
const clockTick = 10 * time.Millisecond

// ProcCPU returns the user+system CPU time process pid has used (0 for
// self), read from /proc. It returns 0 when the process is gone or /proc
// is not there.
func ProcCPU(pid int) time.Duration {
	p := "/proc/self/stat"
	if pid > 0 {
		p = "/proc/" + strconv.Itoa(pid) + "/stat"
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces: fields count from the
	// last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+st) * clockTick
}

// CPUMeter measures the CPU time of a set of processes over a run.
type CPUMeter struct {
	names []string
	pids  []int
	start []time.Duration
}

// NewCPUMeter starts measuring: names[i] is pids[i] (0: the driver itself;
// negative: not measured).
func NewCPUMeter(names []string, pids []int) *CPUMeter {
	m := &CPUMeter{names: names, pids: pids, start: make([]time.Duration, len(pids))}
	for i, p := range pids {
		if p >= 0 {
			m.start[i] = ProcCPU(p)
		}
	}
	return m
}

// Stop returns each process's CPU time since NewCPUMeter.
func (m *CPUMeter) Stop() map[string]time.Duration {
	out := map[string]time.Duration{}
	for i, p := range m.pids {
		if p >= 0 {
			out[m.names[i]] += ProcCPU(p) - m.start[i]
		}
	}
	return out
}

// Us formats a duration in microseconds.
func Us(d time.Duration) string { return fmt.Sprintf("%.0fus", float64(d)/float64(time.Microsecond)) }
