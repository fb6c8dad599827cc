// Package metrics holds the gateway's Prometheus collectors (prefix
// fusioo_gateway_) on a registry the caller passes in, and implements the
// small observer interfaces the proxy, limiter, retry policy and quota
// store declare. Every label has a bounded set of values, pre-initialised at
// zero so dashboards and alerts see series before the first event.
package metrics

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fusioo-gateway/gateway/internal/fusioo"
)

// Namespace prefixes every metric name.
const Namespace = "fusioo_gateway"

// Metrics is the collector set. Its methods are safe for concurrent use.
type Metrics struct {
	requests          *prometheus.CounterVec
	routeRequests     *prometheus.CounterVec
	upstream          *prometheus.CounterVec
	upstreamDuration  *prometheus.HistogramVec
	retries           *prometheus.CounterVec
	budgetExhausted   prometheus.Counter
	quotaRejections   *prometheus.CounterVec
	upstreamExhausted prometheus.Counter
	queueDepth        prometheus.Gauge
	queueWait         prometheus.Histogram
	storeErrors       *prometheus.CounterVec
	fallbackActive    prometheus.Gauge
	coalesced         *prometheus.CounterVec
	cacheRequests     *prometheus.CounterVec

	// The children of the pre-initialised label values, resolved once so
	// the request path neither hashes label values nor takes the vectors'
	// locks. Read-only after New; values outside them take WithLabelValues.
	requestsBy  map[requestKey]prometheus.Counter
	routesBy    map[string]prometheus.Counter
	upstreamBy  map[upstreamKey]prometheus.Counter
	durationBy  [len(classLabels)]prometheus.Observer // by classIndex; nil: not pre-initialised
	retriesBy   map[string]prometheus.Counter
	rejectedBy  map[string]prometheus.Counter
	storeErrsBy map[string]prometheus.Counter
	coalescedBy map[string]prometheus.Counter
}

// requestKey is a requests_total child: method label and raw status.
type requestKey struct {
	method string
	status int
}

// upstreamKey is an upstream_responses_total child: raw status and the
// code, codeOther standing for every code outside Fusioo's table.
type upstreamKey struct {
	status int
	code   fusioo.Code
}

// codeOther is the upstreamKey code of the "other" label.
const codeOther fusioo.Code = -1

// Options lists the label values to pre-initialise.
type Options struct {
	Routes           []string // route names (method + template) from the route table
	RetryReasons     []string
	RejectReasons    []string
	StoreOps         []string
	ClientStatuses   []int // statuses the gateway answers clients with
	UpstreamStatuses []int
}

// New registers the collectors on reg and returns them.
func New(reg prometheus.Registerer, o Options) *Metrics {
	f := func(c prometheus.Collector) { reg.MustRegister(c) }
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "requests_total",
			Help: "Requests answered to clients, by method and HTTP status (499: the client left first).",
		}, []string{"method", "status"}),
		routeRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "route_requests_total",
			Help: "Requests answered to clients, by route template from the route table.",
		}, []string{"route"}),
		upstream: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "upstream_responses_total",
			Help: "Upstream attempts by HTTP status (0: no answer) and Fusioo code (none: no code, other: not in Fusioo's table).",
		}, []string{"status", "code"}),
		upstreamDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "upstream_duration_seconds",
			Help:    "Time from sending an upstream attempt to its answer headers, by status class.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"class"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "retries_total",
			Help: "Upstream attempts sent again, by reason.",
		}, []string{"reason"}),
		budgetExhausted: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "retry_budget_exhausted_total",
			Help: "Retries not sent because the retry budget was spent.",
		}),
		quotaRejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "quota_rejections_total",
			Help: "Requests refused by the gateway's own quota (429/20005), by reason.",
		}, []string{"reason"}),
		upstreamExhausted: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "quota_upstream_exhausted_total",
			Help: "Upstream 20005 answers: Fusioo refused a key the gateway thought had quota.",
		}),
		queueDepth: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "queue_depth",
			Help: "Requests waiting for quota, all keys together.",
		}),
		queueWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "queue_wait_seconds",
			Help:    "Time requests spent queued for quota, admitted or not.",
			Buckets: []float64{.001, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120},
		}),
		storeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "store_errors_total",
			Help: "Failed quota store operations, by operation.",
		}, []string{"op"}),
		fallbackActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "store_fallback_active",
			Help: "1 while the shared quota store is unavailable and this replica counts locally.",
		}),
		coalesced: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "coalesced_total",
			Help: "Requests answered from an identical read of the same token in flight (no upstream attempt, no quota), by route.",
		}, []string{"route"}),
		cacheRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "cache_requests_total",
			Help: "Requests of the cached routes ([[cache]]), by route and result: hit (answered from the cache, no attempt, no quota), miss, bypass (the client's Cache-Control).",
		}, []string{"route", "result"}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.routeRequests, m.upstream, m.upstreamDuration, m.retries,
		m.budgetExhausted, m.quotaRejections, m.upstreamExhausted, m.queueDepth, m.queueWait, m.storeErrors, m.fallbackActive, m.coalesced, m.cacheRequests} {
		f(c)
	}
	m.routesBy = resolve(m.routeRequests, o.Routes)
	m.coalescedBy = resolve(m.coalesced, o.Routes)
	m.retriesBy = resolve(m.retries, o.RetryReasons)
	m.rejectedBy = resolve(m.quotaRejections, o.RejectReasons)
	m.storeErrsBy = resolve(m.storeErrors, o.StoreOps)
	m.upstreamBy = make(map[upstreamKey]prometheus.Counter)
	for _, st := range o.UpstreamStatuses {
		if statusLabel(st) != strconv.Itoa(st) {
			// Pre-initialised under its number, counted as "other":
			// left to WithLabelValues.
			for _, c := range fusioo.Codes() {
				m.upstream.WithLabelValues(strconv.Itoa(st), c.Label())
			}
			m.upstream.WithLabelValues(strconv.Itoa(st), "none")
			m.upstream.WithLabelValues(strconv.Itoa(st), "other")
			continue
		}
		for _, c := range fusioo.Codes() {
			m.upstreamBy[upstreamKey{st, c}] = m.upstream.WithLabelValues(strconv.Itoa(st), c.Label())
		}
		m.upstreamBy[upstreamKey{st, 0}] = m.upstream.WithLabelValues(strconv.Itoa(st), "none")
		m.upstreamBy[upstreamKey{st, codeOther}] = m.upstream.WithLabelValues(strconv.Itoa(st), "other")
	}
	for _, cl := range []string{"2xx", "3xx", "4xx", "5xx", "error"} {
		for i, l := range classLabels {
			if l == cl {
				m.durationBy[i] = m.upstreamDuration.WithLabelValues(cl)
			}
		}
	}
	m.requestsBy = make(map[requestKey]prometheus.Counter)
	for _, st := range o.ClientStatuses {
		for _, meth := range []string{"GET", "POST", "PUT", "DELETE"} {
			c := m.requests.WithLabelValues(meth, strconv.Itoa(st))
			if statusLabel(st) == strconv.Itoa(st) {
				m.requestsBy[requestKey{meth, st}] = c
			}
		}
	}
	return m
}

// resolve creates the children of the one-label vector v for values, and
// returns them by value.
func resolve(v *prometheus.CounterVec, values []string) map[string]prometheus.Counter {
	out := make(map[string]prometheus.Counter, len(values))
	for _, l := range values {
		out[l] = v.WithLabelValues(l)
	}
	return out
}

// statusLabel keeps the status label bounded: real statuses are three
// digits; anything else is "other".
func statusLabel(s int) string {
	if s == 0 {
		return "0"
	}
	if s < 100 || s > 599 {
		return "other"
	}
	return statusLabels[s-100]
}

// statusLabels are "100" … "599", formatted once.
var statusLabels = func() []string {
	out := make([]string, 500)
	for i := range out {
		out[i] = strconv.Itoa(100 + i)
	}
	return out
}()

func methodLabel(m string) string {
	switch m {
	case "GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE":
		return m
	}
	return "OTHER"
}

// classLabels are the status class labels, by classIndex.
var classLabels = [...]string{"error", "1xx", "2xx", "3xx", "4xx", "5xx"}

// classIndex is the index in classLabels of status's class.
func classIndex(s int) int {
	if s < 100 || s > 599 {
		return 0
	}
	return s / 100
}

func classLabel(s int) string { return classLabels[classIndex(s)] }

// Request implements proxy.Observer.
func (m *Metrics) Request(method, route string, status int, _ time.Duration) {
	method = methodLabel(method)
	if c, ok := m.requestsBy[requestKey{method, status}]; ok {
		c.Inc()
	} else {
		m.requests.WithLabelValues(method, statusLabel(status)).Inc()
	}
	inc(m.routeRequests, m.routesBy, route)
}

// Upstream implements proxy.Observer.
func (m *Metrics) Upstream(_ string, status int, code fusioo.Code, d time.Duration) {
	k := upstreamKey{status, code}
	if code != 0 && !code.Known() {
		k.code = codeOther
	}
	if c, ok := m.upstreamBy[k]; ok {
		c.Inc()
	} else {
		m.upstream.WithLabelValues(statusLabel(status), code.Label()).Inc()
	}
	if o := m.durationBy[classIndex(status)]; o != nil {
		o.Observe(d.Seconds())
	} else {
		m.upstreamDuration.WithLabelValues(classLabel(status)).Observe(d.Seconds())
	}
}

// inc adds one to the child of the one-label vector v for label, found in
// by when it was pre-initialised.
func inc(v *prometheus.CounterVec, by map[string]prometheus.Counter, label string) {
	if c, ok := by[label]; ok {
		c.Inc()
		return
	}
	v.WithLabelValues(label).Inc()
}

// Coalesced implements proxy.Observer.
func (m *Metrics) Coalesced(route string) { inc(m.coalesced, m.coalescedBy, route) }

// CacheRequest implements proxy.Observer.
func (m *Metrics) CacheRequest(route, result string) {
	m.cacheRequests.WithLabelValues(route, result).Inc()
}

// UpstreamExhausted implements proxy.Observer.
func (m *Metrics) UpstreamExhausted() { m.upstreamExhausted.Inc() }

// QueueDepth implements limiter.Observer.
func (m *Metrics) QueueDepth(delta int) { m.queueDepth.Add(float64(delta)) }

// QueueWait implements limiter.Observer.
func (m *Metrics) QueueWait(d time.Duration) { m.queueWait.Observe(d.Seconds()) }

// Rejected implements limiter.Observer.
func (m *Metrics) Rejected(reason string) { inc(m.quotaRejections, m.rejectedBy, reason) }

// Retry implements retry.Observer.
func (m *Metrics) Retry(reason string) { inc(m.retries, m.retriesBy, reason) }

// BudgetExhausted implements retry.Observer.
func (m *Metrics) BudgetExhausted() { m.budgetExhausted.Inc() }

// StoreError implements the quota store's observer.
func (m *Metrics) StoreError(op string) { inc(m.storeErrors, m.storeErrsBy, op) }

// FallbackActive implements the quota store's observer.
func (m *Metrics) FallbackActive(active bool) {
	if active {
		m.fallbackActive.Set(1)
	} else {
		m.fallbackActive.Set(0)
	}
}
