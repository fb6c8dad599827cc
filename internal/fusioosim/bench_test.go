package fusioosim

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
)

// BenchmarkServeHTTP measures the simulator's own cost per request (no
// network), reads and creates mixed, so benchmarks of the gateway can tell
// how much of their time is the simulator's.
func BenchmarkServeHTTP(b *testing.B) {
	s := New(Config{})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			i++
			var r *http.Request
			if i%4 == 0 {
				r = httptest.NewRequest("POST", "/v3/records/apps/app"+strconv.Itoa(i%3+1), strings.NewReader(`{"i":`+strconv.Itoa(i)+`}`))
			} else {
				r = httptest.NewRequest("GET", "/v3/records/apps/app1/count", nil)
			}
			r.Header.Set("Authorization", "Bearer bench-token")
			s.ServeHTTP(httptest.NewRecorder(), r)
		}
	})
}
