package fusioosim

import (
	"bytes"
	"encoding/json"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/fusioo-gateway/gateway/internal/fusioo"
)

// Bounds of the in-memory data, so no client can make it grow without
// limit.
const (
	// maxApps bounds the Apps made on first use; a request naming a new
	// App beyond it is answered 30000.
	maxApps = 10_000
	// maxDiscussions bounds one record's discussions, oldest dropped.
	maxDiscussions = 1_000
	// maxDiscussionChars is the discussion length beyond which 30058 is
	// answered. Fusioo does not publish its limit.
	maxDiscussionChars = 10_000
	// defaultPageLimit is the page size when the query has no "limit".
	defaultPageLimit = 20
	// maxPageLimit is the largest "limit" Fusioo accepts (30105 beyond).
	maxPageLimit = 200
)

// defaultApps exist from the start; any other App id is made when first
// named, so tests may use arbitrary ids.
var defaultApps = []string{"app1", "app2", "app3"}

// object is a JSON object as a client sent it, values kept verbatim.
type object = map[string]json.RawMessage

type appState struct {
	id   string
	ids  []string // record ids in creation order; may hold deleted ones
	live int
}

type record struct {
	id     string
	app    string
	fields object
	disc   []object
}

type file struct {
	ID    string `json:"id"`
	App   string `json:"app_id"`
	Field string `json:"field_id"`
	Name  string `json:"name"`
	Type  string `json:"type"`
	Size  int64  `json:"size"`
}

// data is the simulator's Fusioo account. Guarded by Sim.mu.
type data struct {
	apps    map[string]*appState
	records capped[string, *record]
	files   capped[string, *file]
	hooks   capped[string, object]
	seen    capped[[32]byte, struct{}] // identities of applied creates
	next    uint64
}

func newData() *data {
	d := &data{
		apps:    map[string]*appState{},
		records: newCapped[string, *record](),
		files:   newCapped[string, *file](),
		hooks:   newCapped[string, object](),
		seen:    newCapped[[32]byte, struct{}](),
	}
	for _, a := range defaultApps {
		d.apps[a] = &appState{id: a}
	}
	return d
}

// capped is a map that remembers insertion order and drops its oldest
// entries beyond a bound.
type capped[K comparable, V any] struct {
	m     map[K]V
	order []K // insertion order; may hold deleted keys
}

func newCapped[K comparable, V any]() capped[K, V] {
	return capped[K, V]{m: map[K]V{}}
}

func (c *capped[K, V]) get(k K) (V, bool) { v, ok := c.m[k]; return v, ok }

// put adds k (a new key) and drops the oldest entries beyond max, calling
// evict for each.
func (c *capped[K, V]) put(k K, v V, max int, evict func(K, V)) {
	c.m[k] = v
	c.order = append(c.order, k)
	for len(c.m) > max && len(c.order) > 0 {
		old := c.order[0]
		c.order = c.order[1:]
		if ov, ok := c.m[old]; ok {
			delete(c.m, old)
			if evict != nil {
				evict(old, ov)
			}
		}
	}
	c.compact()
}

func (c *capped[K, V]) del(k K) {
	delete(c.m, k)
	c.compact()
}

// compact drops deleted keys from order once they are the majority, so
// order stays within about twice the live entries.
func (c *capped[K, V]) compact() {
	if len(c.order) <= 2*len(c.m)+64 {
		return
	}
	live := make([]K, 0, len(c.m))
	for _, k := range c.order {
		if _, ok := c.m[k]; ok {
			live = append(live, k)
		}
	}
	c.order = live
}

// values returns the live values in insertion order.
func (c *capped[K, V]) values() []V {
	out := make([]V, 0, len(c.m))
	for _, k := range c.order {
		if v, ok := c.m[k]; ok {
			out = append(out, v)
		}
	}
	return out
}

// request is a routed request as the handlers see it.
type request struct {
	route  *fusioo.Route
	params map[string]string
	query  *http.Request
	body   body
}

// app returns the App id, making the App on first use; nil beyond maxApps.
func (d *data) app(id string) *appState {
	if a, ok := d.apps[id]; ok {
		return a
	}
	if len(d.apps) >= maxApps {
		return nil
	}
	a := &appState{id: id}
	d.apps[id] = a
	return a
}

func (d *data) newID(prefix string) string {
	d.next++
	return prefix + strconv.FormatUint(d.next, 10)
}

// recordIDs returns the App's live record ids in creation order, compacting
// the App's index when deleted ids dominate it.
func (d *data) recordIDs(a *appState) []string {
	out := make([]string, 0, a.live)
	for _, id := range a.ids {
		if r, ok := d.records.get(id); ok && r.app == a.id {
			out = append(out, id)
		}
	}
	if len(a.ids) > 2*len(out)+64 {
		a.ids = append([]string(nil), out...)
	}
	return out
}

func (r *record) view() object {
	out := make(object, len(r.fields)+1)
	for k, v := range r.fields {
		out[k] = v
	}
	out["id"], _ = json.Marshal(r.id)
	return out
}

func withID(o object, id string) object {
	out := make(object, len(o)+1)
	for k, v := range o {
		out[k] = v
	}
	out["id"], _ = json.Marshal(id)
	return out
}

// parseObject parses a JSON object body; ok is false for anything else
// (including empty bodies, arrays and null).
func parseObject(b []byte) (object, bool) {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '{' {
		return nil, false
	}
	var o object
	if err := json.Unmarshal(b, &o); err != nil || o == nil {
		return nil, false
	}
	return o, true
}

// page reads the "limit" and "offset" query parameters.
func page(r *http.Request) (limit, offset int, code fusioo.Code) {
	q := r.URL.Query()
	limit = defaultPageLimit
	if q.Has("limit") {
		n, err := strconv.Atoi(q.Get("limit"))
		if err != nil || n < 0 || n > maxPageLimit {
			return 0, 0, fusioo.CodeLimitInvalid
		}
		limit = n
	}
	if q.Has("offset") {
		n, err := strconv.Atoi(q.Get("offset"))
		if err != nil || n < 0 {
			return 0, 0, fusioo.CodeOffsetInvalid
		}
		offset = n
	}
	return limit, offset, fusioo.CodeSuccess
}

// serveRoute answers the routes that create nothing.
func (s *Sim) serveRoute(req *request) result {
	p := req.params
	key := req.route.Method + " " + req.route.Template

	// Validation that needs no lock.
	switch key {
	case "POST /records/apps/{app}/filter", "POST /records/apps/{app}/count/filter":
		if len(bytes.TrimSpace(req.body.data)) > 0 {
			if _, ok := parseObject(req.body.data); !ok {
				return failedMsg(fusioo.CodeValidation, "Filter body is not a JSON object")
			}
		}
	case "PUT /records/{record}", "PUT /webhooks/{webhook}":
		if _, ok := parseObject(req.body.data); !ok {
			return failedMsg(fusioo.CodeValidation, "Body is not a JSON object")
		}
	}
	var limit, offset int
	switch key {
	case "GET /records/apps/{app}", "POST /records/apps/{app}/filter":
		var c fusioo.Code
		if limit, offset, c = page(req.query); c != fusioo.CodeSuccess {
			return failed(c)
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.d
	switch key {
	case "GET /ping":
		return success(struct{}{})
	case "GET /apps":
		ids := make([]string, 0, len(d.apps))
		for id := range d.apps {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		out := make([]map[string]any, len(ids))
		for i, id := range ids {
			out[i] = map[string]any{"id": id, "name": id}
		}
		return success(out)
	case "GET /apps/{app}":
		a := d.app(p["app"])
		if a == nil {
			return failed(fusioo.CodeAppNotFound)
		}
		return success(map[string]any{"id": a.id, "name": a.id, "records": a.live})
	case "GET /records/apps/{app}", "POST /records/apps/{app}/filter":
		a := d.app(p["app"])
		if a == nil {
			return failed(fusioo.CodeAppNotFound)
		}
		ids := d.recordIDs(a)
		out := []object{}
		for i := offset; i < len(ids) && len(out) < limit; i++ {
			r, _ := d.records.get(ids[i])
			out = append(out, r.view())
		}
		return success(out)
	case "GET /records/apps/{app}/count", "POST /records/apps/{app}/count/filter":
		a := d.app(p["app"])
		if a == nil {
			return failed(fusioo.CodeAppNotFound)
		}
		return success(map[string]int{"count": a.live})
	case "GET /records/{record}":
		r, found := d.records.get(p["record"])
		if !found {
			return failed(fusioo.CodeRecordNotFound)
		}
		return success(r.view())
	case "PUT /records/{record}":
		r, found := d.records.get(p["record"])
		if !found {
			return failed(fusioo.CodeRecordNotFound)
		}
		o, _ := parseObject(req.body.data)
		fields := make(object, len(r.fields)+len(o))
		for k, v := range r.fields {
			fields[k] = v
		}
		for k, v := range o {
			if k != "id" {
				fields[k] = v
			}
		}
		r.fields = fields
		return success(r.view())
	case "DELETE /records/{record}":
		r, found := d.records.get(p["record"])
		if !found {
			return failed(fusioo.CodeRecordNotFound)
		}
		d.records.del(r.id)
		if a, ok := d.apps[r.app]; ok {
			a.live--
		}
		return success(struct{}{})
	case "GET /records/{record}/discussions":
		r, found := d.records.get(p["record"])
		if !found {
			return failed(fusioo.CodeRecordNotFound)
		}
		return success(append([]object{}, r.disc...))
	case "GET /files/{file}":
		f, found := d.files.get(p["file"])
		if !found {
			return failed(fusioo.CodeFileNotFound)
		}
		return success(*f)
	case "DELETE /files/{file}":
		if _, found := d.files.get(p["file"]); !found {
			return failed(fusioo.CodeFileNotFound)
		}
		d.files.del(p["file"])
		return success(struct{}{})
	case "GET /webhooks":
		return success(d.hooks.values())
	case "GET /webhooks/{webhook}":
		h, found := d.hooks.get(p["webhook"])
		if !found {
			return failed(fusioo.CodeWebhookNotFound)
		}
		return success(h)
	case "PUT /webhooks/{webhook}":
		h, found := d.hooks.get(p["webhook"])
		if !found {
			return failed(fusioo.CodeWebhookNotFound)
		}
		o, _ := parseObject(req.body.data)
		nh := make(object, len(h)+len(o))
		for k, v := range h {
			nh[k] = v
		}
		for k, v := range o {
			if k != "id" {
				nh[k] = v
			}
		}
		d.hooks.m[p["webhook"]] = nh
		return success(nh)
	case "DELETE /webhooks/{webhook}":
		if _, found := d.hooks.get(p["webhook"]); !found {
			return failed(fusioo.CodeWebhookNotFound)
		}
		d.hooks.del(p["webhook"])
		return success(struct{}{})
	}
	// A route added to fusioo.DefaultRoutes that the simulator does not
	// implement yet.
	return failed(fusioo.CodeNotFound)
}

// validateCreate checks a create's body before it takes any lock: what
// Fusioo would refuse without touching the App.
func (s *Sim) validateCreate(req *request) result {
	if req.route.Kind == fusioo.KindUpload {
		switch {
		case req.body.bad:
			return failedMsg(fusioo.CodeValidation, "Malformed multipart body")
		case req.body.files > 1:
			return failed(fusioo.CodeMultipleFiles)
		case req.body.files == 0:
			return failedMsg(fusioo.CodeValidation, "No file")
		}
		return success(nil)
	}
	o, isObj := parseObject(req.body.data)
	if !isObj {
		return failedMsg(fusioo.CodeValidation, "Body is not a JSON object")
	}
	if req.route.Template == "/records/{record}/discussions" {
		var content string
		if raw, has := o["content"]; has {
			_ = json.Unmarshal(raw, &content)
		}
		switch {
		case strings.TrimSpace(content) == "":
			return failed(fusioo.CodeContentRequired)
		case utf8.RuneCountInString(content) > maxDiscussionChars:
			return failed(fusioo.CodeCharacterLimit)
		}
	}
	return success(nil)
}

// create applies a validated create and records it in the ledger.
func (s *Sim) create(req *request) result {
	p := req.params
	o, _ := parseObject(req.body.data)
	delete(o, "id")

	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.d
	var res result
	switch req.route.Template {
	case "/records/apps/{app}":
		a := d.app(p["app"])
		if a == nil {
			return failed(fusioo.CodeAppNotFound)
		}
		r := &record{id: d.newID("r"), app: a.id, fields: o}
		d.records.put(r.id, r, s.maxRecords, func(_ string, old *record) {
			if oa, ok := d.apps[old.app]; ok {
				oa.live--
			}
		})
		a.ids = append(a.ids, r.id)
		a.live++
		if len(a.ids) > 2*a.live+64 {
			d.recordIDs(a)
		}
		res = success(r.view())
	case "/records/{record}/discussions":
		r, found := d.records.get(p["record"])
		if !found {
			return failed(fusioo.CodeRecordNotFound)
		}
		disc := withID(o, d.newID("d"))
		if len(r.disc) >= maxDiscussions {
			r.disc = append(r.disc[:0:0], r.disc[len(r.disc)-maxDiscussions+1:]...)
		}
		r.disc = append(r.disc, disc)
		res = success(disc)
	case "/files/apps/{app}/fields/{field}":
		a := d.app(p["app"])
		if a == nil {
			return failed(fusioo.CodeAppNotFound)
		}
		f := &file{ID: d.newID("f"), App: a.id, Field: p["field"], Name: req.body.name, Type: req.body.ctype, Size: req.body.size}
		d.files.put(f.ID, f, s.maxRecords, nil)
		res = success(*f)
	case "/webhooks":
		id := d.newID("w")
		h := withID(o, id)
		d.hooks.put(id, h, s.maxRecords, nil)
		res = success(h)
	default:
		return failed(fusioo.CodeNotFound)
	}
	s.led.creates++
	if _, dup := d.seen.get(req.body.ident); dup {
		s.led.duplicates++
	} else {
		d.seen.put(req.body.ident, struct{}{}, s.maxRecords, nil)
	}
	return res
}

// readUpload streams an upload body: a multipart/form-data body's file
// parts, or a raw body that is the file itself. It returns the file bytes,
// the number of files, the first file's name and type, whether the
// multipart body was malformed, and the error reading the body if any.
func readUpload(r io.Reader, contentType string) (size int64, files int, name, ctype string, bad bool, err error) {
	mt, mp, _ := mime.ParseMediaType(contentType)
	if mt != "multipart/form-data" || mp["boundary"] == "" {
		size, err = io.Copy(io.Discard, r)
		if size > 0 {
			files = 1
		}
		return size, files, "", contentType, false, err
	}
	mr := multipart.NewReader(r, mp["boundary"])
	for {
		part, perr := mr.NextPart()
		if perr == io.EOF {
			break
		}
		if perr != nil {
			bad = true
			break
		}
		n, cerr := io.Copy(io.Discard, part)
		if cerr != nil {
			bad = true
			break
		}
		if part.FileName() != "" {
			if files == 0 {
				name, ctype = part.FileName(), part.Header.Get("Content-Type")
			}
			files++
			size += n
		}
	}
	// Whatever the parser left (an epilogue, or the rest after a
	// malformed part) is read too, so a body over the bound is reported as
	// such and the connection stays usable.
	_, err = io.Copy(io.Discard, r)
	return size, files, name, ctype, bad, err
}
