package e2b

import (
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"path"
	"strconv"

	"github.com/embervm/ember/agent/proto"
)

// errorBody is the error body of E2B's API and of envd's HTTP routes
// (/files): {"code": <HTTP status>, "message": "..."}. The SDK reads 404
// and 409 from code, not from the status.
type errorBody struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// WriteInfo is envd's answer for each written file.
type WriteInfo struct {
	Path string `json:"path"`
	Name string `json:"name"`
	Type string `json:"type"`
}

func filesError(w http.ResponseWriter, status int, format string, args ...any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(errorBody{Code: status, Message: fmt.Sprintf(format, args...)})
}

// statusOf is the HTTP status of an agent error on /files.
func statusOf(err error) int {
	switch proto.CodeOf(err) {
	case proto.CodeNotFound:
		return http.StatusNotFound
	case proto.CodeInvalid, proto.CodePrecondition:
		return http.StatusBadRequest
	case proto.CodePermission:
		return http.StatusForbidden
	case proto.CodeExhausted:
		return http.StatusInsufficientStorage
	case proto.CodeExists:
		return http.StatusConflict
	}
	return http.StatusInternalServerError
}

// files serves envd's GET /files (download) and POST /files (upload,
// multipart or octet-stream, optionally gzip).
func (g *Gateway) files(w http.ResponseWriter, r *http.Request, t *target) {
	switch r.Method {
	case http.MethodGet:
		g.download(w, r, t)
	case http.MethodPost:
		g.upload(w, r, t)
	default:
		w.Header().Set("Allow", "GET, POST")
		filesError(w, http.StatusMethodNotAllowed, "%s /files: want GET or POST", r.Method)
	}
}

func (g *Gateway) download(w http.ResponseWriter, r *http.Request, t *target) {
	p := r.URL.Query().Get("path")
	if err := proto.CheckPath("path", p); err != nil {
		filesError(w, http.StatusBadRequest, "%v", err)
		return
	}
	d, err := t.ac.Download(r.Context(), proto.ReadRequest{PathRequest: proto.PathRequest{Path: p, User: t.user}})
	if err != nil {
		filesError(w, statusOf(err), "%s: %v", p, err)
		return
	}
	defer d.Close()
	if d.Entry.Type != proto.TypeFile {
		filesError(w, http.StatusBadRequest, "%s: a %s, not a file", p, d.Entry.Type)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", mime.FormatMediaType("inline", map[string]string{"filename": d.Entry.Name}))
	w.Header().Set("Content-Length", strconv.FormatInt(d.Entry.Size, 10))
	// The header is out: a failure can only cut the answer short, which
	// the client sees against Content-Length.
	if _, err := io.Copy(w, d); err != nil {
		g.log.Debug("download cut short", "sandbox", t.id, "path", p, "err", err)
	}
}

func (g *Gateway) upload(w http.ResponseWriter, r *http.Request, t *target) {
	target := r.URL.Query().Get("path")
	ctype, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	var body io.Reader = r.Body
	if enc := r.Header.Get("Content-Encoding"); enc != "" {
		if enc != "gzip" {
			filesError(w, http.StatusUnsupportedMediaType, "Content-Encoding %q: want gzip or none", enc)
			return
		}
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			filesError(w, http.StatusBadRequest, "gzip body: %v", err)
			return
		}
		defer zr.Close()
		body = zr
	}
	var out []WriteInfo
	switch ctype {
	case "multipart/form-data":
		mr := multipart.NewReader(body, params["boundary"])
		for {
			part, err := mr.NextPart()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				filesError(w, http.StatusBadRequest, "multipart body: %v", err)
				return
			}
			if part.FormName() != "file" {
				part.Close()
				continue
			}
			// The query's path names a single file; without it each part's
			// filename is its path (a multi-file write).
			p := target
			if p == "" {
				p = part.FileName()
			}
			wi, status, err := g.write(r, t, p, part)
			part.Close()
			if err != nil {
				filesError(w, status, "%v", err)
				return
			}
			out = append(out, wi)
		}
	case "application/octet-stream", "":
		wi, status, err := g.write(r, t, target, body)
		if err != nil {
			filesError(w, status, "%v", err)
			return
		}
		out = append(out, wi)
	default:
		filesError(w, http.StatusUnsupportedMediaType, "Content-Type %q: want multipart/form-data or application/octet-stream", ctype)
		return
	}
	if len(out) == 0 {
		filesError(w, http.StatusBadRequest, "no file in the upload: want a multipart part named \"file\"")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(out)
}

// write uploads one file.
func (g *Gateway) write(r *http.Request, t *target, p string, body io.Reader) (WriteInfo, int, error) {
	if err := proto.CheckPath("path", p); err != nil {
		return WriteInfo{}, http.StatusBadRequest, err
	}
	e, err := t.ac.Upload(r.Context(), proto.WriteRequest{PathRequest: proto.PathRequest{Path: p, User: t.user}}, body)
	if err != nil {
		return WriteInfo{}, statusOf(err), fmt.Errorf("%s: %w", p, err)
	}
	name := e.Name
	if name == "" {
		name = path.Base(e.Path)
	}
	return WriteInfo{Path: e.Path, Name: name, Type: "file"}, 0, nil
}
