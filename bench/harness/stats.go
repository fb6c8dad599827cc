package harness

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"time"
)

// Percentile returns the q-th quantile (0 ≤ q ≤ 1) of ds by nearest rank:
// the smallest value with at least q of the values at or below it. It
// returns 0 for an empty slice. ds need not be sorted; it is not changed.
func Percentile(ds []time.Duration, q float64) time.Duration {
	return Percentiles(ds, q)[0]
}

// Percentiles is Percentile for several quantiles, sorting once.
func Percentiles(ds []time.Duration, qs ...float64) []time.Duration {
	out := make([]time.Duration, len(qs))
	if len(ds) == 0 {
		return out
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	for i, q := range qs {
		switch {
		case q <= 0:
			out[i] = s[0]
		case q >= 1:
			out[i] = s[len(s)-1]
		default:
			k := int(math.Ceil(q*float64(len(s)))) - 1
			out[i] = s[max(k, 0)]
		}
	}
	return out
}

// Summary condenses a run.
type Summary struct {
	Name          string
	Requests      int
	OK            int // 2xx
	Errors        int // transport errors (no answer)
	Statuses      map[int]int
	Throughput    float64 // 2xx answers per second of the run
	P50, P90, P99 time.Duration
	Max           time.Duration
}

// Summarize computes a run's summary; latencies are those of 2xx answers.
func Summarize(name string, runs ...*Run) Summary {
	s := Summary{Name: name, Statuses: map[int]int{}}
	var lat []time.Duration
	var elapsed time.Duration
	for _, r := range runs {
		elapsed += r.Elapsed
		for _, x := range r.Samples {
			s.Requests++
			if x.Err != nil {
				s.Errors++
				continue
			}
			s.Statuses[x.Status]++
			if x.OK() {
				s.OK++
				lat = append(lat, x.Latency)
			}
		}
	}
	if elapsed > 0 {
		s.Throughput = float64(s.OK) / elapsed.Seconds()
	}
	p := Percentiles(lat, 0.5, 0.9, 0.99, 1)
	s.P50, s.P90, s.P99, s.Max = p[0], p[1], p[2], p[3]
	return s
}

// Ratio is a/b, or NaN when b is zero.
func Ratio(a, b float64) float64 {
	if b == 0 {
		return math.NaN()
	}
	return a / b
}

// PairedRatio is the median over rounds of f(target's run) / f(bare's run
// in the same round), and the per-round ratios. Targets run back to back
// within a round, so pairing cancels the machine's drift between rounds
// (a noisy neighbour, a slower minute), which on a shared 2-core machine
// moves a pooled p99 more than any proxy does; the median keeps one bad
// round from deciding.
func PairedRatio(target, bare []*Run, f func(Summary) float64) (float64, []float64) {
	var rs []float64
	for i := 0; i < len(target) && i < len(bare); i++ {
		rs = append(rs, Ratio(f(Summarize("", target[i])), f(Summarize("", bare[i]))))
	}
	if len(rs) == 0 {
		return math.NaN(), nil
	}
	return Median(rs), rs
}

// Median is the median of xs (0 when empty).
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 0 {
		return (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return s[len(s)/2]
}

// DurRatio is Ratio for durations.
func DurRatio(a, b time.Duration) float64 { return Ratio(float64(a), float64(b)) }

// Table is a plain text table with aligned columns.
type Table struct {
	Header []string
	Rows   [][]string
}

// Add appends a row of formatted cells.
func (t *Table) Add(cells ...string) { t.Rows = append(t.Rows, cells) }

// Write prints the table to w.
func (t *Table) Write(w io.Writer) {
	width := make([]int, len(t.Header))
	for i, h := range t.Header {
		width[i] = len(h)
	}
	for _, r := range t.Rows {
		for i, c := range r {
			if i < len(width) && len(c) > width[i] {
				width[i] = len(c)
			}
		}
	}
	line := func(cells []string) {
		var b strings.Builder
		for i, c := range cells {
			if i > 0 {
				b.WriteString("  ")
			}
			if i == 0 {
				fmt.Fprintf(&b, "%-*s", width[i], c)
			} else {
				fmt.Fprintf(&b, "%*s", width[i], c)
			}
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
	line(t.Header)
	sep := make([]string, len(t.Header))
	for i := range sep {
		sep[i] = strings.Repeat("-", width[i])
	}
	line(sep)
	for _, r := range t.Rows {
		line(r)
	}
}

// Ms formats a duration in milliseconds with 2 decimals.
func Ms(d time.Duration) string { return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond)) }

// X formats a ratio as "1.03x" ("-" for NaN).
func X(r float64) string {
	if math.IsNaN(r) || math.IsInf(r, 0) {
		return "-"
	}
	return fmt.Sprintf("%.2fx", r)
}

// Verdict is one pass/fail criterion.
type Verdict struct {
	Name string
	Pass bool
	Got  string
}

// Verdicts collects criteria and prints them.
type Verdicts []Verdict

// Check adds a criterion.
func (v *Verdicts) Check(name string, pass bool, format string, args ...any) {
	*v = append(*v, Verdict{Name: name, Pass: pass, Got: fmt.Sprintf(format, args...)})
}

// Passed reports whether every criterion passed.
func (v Verdicts) Passed() bool {
	for _, x := range v {
		if !x.Pass {
			return false
		}
	}
	return true
}

// Write prints one line per criterion and a final "PASS scenario" or
// "FAIL scenario" line.
func (v Verdicts) Write(w io.Writer, scenario string) {
	for _, x := range v {
		mark := "ok  "
		if !x.Pass {
			mark = "FAIL"
		}
		fmt.Fprintf(w, "  [%s] %s: %s\n", mark, x.Name, x.Got)
	}
	if v.Passed() {
		fmt.Fprintf(w, "PASS %s\n", scenario)
	} else {
		fmt.Fprintf(w, "FAIL %s\n", scenario)
	}
}
