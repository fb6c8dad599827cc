package fusioosim

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"

	"github.com/fusioo-gateway/gateway/internal/fusioo"
)

// maxAdminBody bounds a PUT /_sim/faults body.
const maxAdminBody = 64 << 10

// serveAdmin answers the control endpoints under /_sim/ (see the package
// documentation). They need no token and are never counted or charged.
// Errors use Fusioo's envelope, as everything else the simulator answers.
func (s *Sim) serveAdmin(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/_sim/ledger":
		if !allow(w, r, http.MethodGet) {
			return
		}
		writeJSON(w, http.StatusOK, s.Ledger())
	case "/_sim/history":
		if !allow(w, r, http.MethodGet) {
			return
		}
		writeJSON(w, http.StatusOK, s.History())
	case "/_sim/faults":
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			writeJSON(w, http.StatusOK, s.Faults())
		case http.MethodPut:
			b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxAdminBody))
			if err != nil {
				var mbe *http.MaxBytesError
				if errors.As(err, &mbe) {
					fusioo.WriteError(w, http.StatusRequestEntityTooLarge, fusioo.CodeValidation, "faults body too large")
				}
				return
			}
			var f Faults
			if err := json.Unmarshal(b, &f); err != nil {
				fusioo.WriteError(w, http.StatusBadRequest, fusioo.CodeValidation, err.Error())
				return
			}
			s.SetFaults(f)
			writeJSON(w, http.StatusOK, s.Faults())
		default:
			w.Header().Set("Allow", "GET, HEAD, PUT")
			fusioo.WriteError(w, http.StatusMethodNotAllowed, fusioo.CodeNotFound, "method not allowed")
		}
	case "/_sim/reset":
		if !allow(w, r, http.MethodPost) {
			return
		}
		s.Reset()
		w.WriteHeader(http.StatusNoContent)
	default:
		fusioo.WriteError(w, http.StatusNotFound, fusioo.CodeNotFound, "")
	}
}

// allow answers 405 unless r uses method (GET also allowing HEAD).
func allow(w http.ResponseWriter, r *http.Request, method string) bool {
	if r.Method == method || (method == http.MethodGet && r.Method == http.MethodHead) {
		return true
	}
	allowed := method
	if method == http.MethodGet {
		allowed = "GET, HEAD"
	}
	w.Header().Set("Allow", allowed)
	fusioo.WriteError(w, http.StatusMethodNotAllowed, fusioo.CodeNotFound, "method not allowed")
	return false
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		fusioo.WriteError(w, http.StatusInternalServerError, fusioo.CodeInternal, err.Error())
		return
	}
	b = append(b, '\n')
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
