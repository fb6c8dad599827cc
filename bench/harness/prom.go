package harness

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"
)

// Series is one sample line of the Prometheus text format.
type Series struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// Metrics is a parsed /metrics page.
type Metrics []Series

// ParseMetrics reads the Prometheus text exposition format (comments
// skipped, timestamps ignored).
func ParseMetrics(r io.Reader) (Metrics, error) {
	var out Metrics
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for ln := 1; sc.Scan(); ln++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		s, err := parseSeries(line)
		if err != nil {
			return nil, fmt.Errorf("metrics line %d: %w", ln, err)
		}
		out = append(out, s)
	}
	return out, sc.Err()
}

func parseSeries(line string) (Series, error) {
	s := Series{Labels: map[string]string{}}
	i := strings.IndexAny(line, "{ ")
	if i < 0 {
		return s, fmt.Errorf("no value: %q", line)
	}
	s.Name = line[:i]
	rest := line[i:]
	if rest[0] == '{' {
		rest = rest[1:]
		for {
			rest = strings.TrimLeft(rest, " ,")
			if rest == "" {
				return s, fmt.Errorf("unterminated labels")
			}
			if rest[0] == '}' {
				rest = rest[1:]
				break
			}
			eq := strings.IndexByte(rest, '=')
			if eq < 0 || eq+1 >= len(rest) || rest[eq+1] != '"' {
				return s, fmt.Errorf("bad label in %q", line)
			}
			name := strings.TrimSpace(rest[:eq])
			rest = rest[eq+2:]
			var v strings.Builder
			j := 0
			for ; j < len(rest) && rest[j] != '"'; j++ {
				if rest[j] == '\\' && j+1 < len(rest) {
					j++
					switch rest[j] {
					case 'n':
						v.WriteByte('\n')
					default:
						v.WriteByte(rest[j])
					}
					continue
				}
				v.WriteByte(rest[j])
			}
			if j >= len(rest) {
				return s, fmt.Errorf("unterminated label value in %q", line)
			}
			s.Labels[name] = v.String()
			rest = rest[j+1:]
		}
	}
	f := strings.Fields(rest)
	if len(f) == 0 {
		return s, fmt.Errorf("no value: %q", line)
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return s, fmt.Errorf("value %q: %w", f[0], err)
	}
	s.Value = v
	return s, nil
}

// Sum adds the values of every series called name whose labels include
// match (pairs of label name and value).
func (m Metrics) Sum(name string, match ...string) float64 {
	var t float64
	for _, s := range m {
		if s.Name == name && s.matches(match) {
			t += s.Value
		}
	}
	return t
}

func (s Series) matches(match []string) bool {
	for i := 0; i+1 < len(match); i += 2 {
		if s.Labels[match[i]] != match[i+1] {
			return false
		}
	}
	return true
}

// Merge concatenates pages (several replicas): Sum then adds them up.
func Merge(ms ...Metrics) Metrics {
	var out Metrics
	for _, m := range ms {
		out = append(out, m...)
	}
	return out
}

// Diff returns after − before per series (counters over a phase); series
// repeated within a page (merged replicas) are added up first, and series
// absent before count from 0.
func Diff(after, before Metrics) Metrics {
	key := func(s Series) string {
		ks := make([]string, 0, len(s.Labels))
		for k, v := range s.Labels {
			ks = append(ks, k+"="+v)
		}
		sort.Strings(ks)
		return s.Name + "{" + strings.Join(ks, ",") + "}"
	}
	prev := map[string]float64{}
	for _, s := range before {
		prev[key(s)] += s.Value
	}
	idx := map[string]int{}
	var out Metrics
	for _, s := range after {
		k := key(s)
		if i, ok := idx[k]; ok {
			out[i].Value += s.Value
			continue
		}
		idx[k] = len(out)
		d := s
		d.Value -= prev[k]
		out = append(out, d)
	}
	return out
}

// HistogramQuantile estimates the q-th quantile of the histogram name
// (all series summed, as Prometheus's histogram_quantile does over a sum
// by le), interpolating linearly inside the bucket. It returns NaN when
// the histogram is empty, and the highest finite bound when the quantile
// falls in the +Inf bucket.
func (m Metrics) HistogramQuantile(name string, q float64) float64 {
	buckets := map[float64]float64{}
	for _, s := range m {
		if s.Name != name+"_bucket" {
			continue
		}
		le, err := strconv.ParseFloat(s.Labels["le"], 64)
		if err != nil {
			continue
		}
		buckets[le] += s.Value
	}
	les := make([]float64, 0, len(buckets))
	for le := range buckets {
		les = append(les, le)
	}
	sort.Float64s(les)
	if len(les) == 0 {
		return math.NaN()
	}
	total := buckets[les[len(les)-1]]
	if total == 0 {
		return math.NaN()
	}
	rank := q * total
	prevLE, prevN := 0.0, 0.0
	for _, le := range les {
		n := buckets[le]
		if n >= rank {
			if math.IsInf(le, 1) {
				return prevLE
			}
			if n == prevN {
				return le
			}
			return prevLE + (le-prevLE)*(rank-prevN)/(n-prevN)
		}
		prevLE, prevN = le, n
	}
	return prevLE
}

// FetchMetrics reads and parses adminURL + "/metrics".
func FetchMetrics(ctx context.Context, adminURL string) (Metrics, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, adminURL+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := adminClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s/metrics: status %d", adminURL, resp.StatusCode)
	}
	return ParseMetrics(resp.Body)
}

// adminClient talks to admin and control endpoints: its own connections,
// never the load's.
var adminClient = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4, DisableCompression: true}}
