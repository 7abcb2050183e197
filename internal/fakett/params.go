package fakett

import (
	"encoding/json"
	"errors"
	"mime"
	"net/http"
)

// maxBodyBytes caps a request body. The real API's limit is undocumented; no
// legitimate call comes near this.
const maxBodyBytes = 1 << 20

// paramError is a body that parsed but holds a parameter of the wrong kind; its
// text is the message for the client.
type paramError string

// Error returns the message for the client.
func (e paramError) Error() string { return string(e) }

// readParams enforces the API's request rules (POST, a Content-Length, a
// supported Content-Type) and returns the body's parameters. When the request
// breaks a rule it returns ok false and the reply to send instead.
func readParams(w http.ResponseWriter, r *http.Request) (params map[string]string, rep reply, ok bool) {
	if r.Method != http.MethodPost {
		return nil, methodNotAllowed(http.MethodPost), false
	}
	if r.ContentLength < 0 {
		return nil, failure(http.StatusLengthRequired, "content-length required"), false
	}
	contentType := r.Header.Get("Content-Type")
	if contentType == "" {
		return nil, failure(http.StatusUnsupportedMediaType, "missing content-type"), false
	}
	mediaType, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return nil, failure(http.StatusUnsupportedMediaType, "malformed content-type"), false
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxBodyBytes)
	switch mediaType {
	case "application/x-www-form-urlencoded":
		params, err = formParams(r)
	case "multipart/form-data":
		params, err = multipartParams(r)
	case "application/json":
		params, err = jsonParams(r)
	default:
		return nil, failure(http.StatusUnsupportedMediaType, "unsupported content-type: "+mediaType), false
	}
	var tooLarge *http.MaxBytesError
	var bad paramError
	switch {
	case errors.As(err, &tooLarge):
		return nil, failure(http.StatusRequestEntityTooLarge, "request body too large"), false
	case errors.As(err, &bad):
		return nil, failure(http.StatusBadRequest, bad.Error()), false
	case err != nil:
		return nil, failure(http.StatusBadRequest, "malformed body"), false
	}
	return params, reply{}, true
}

// formParams returns the parameters of a url-encoded body (not the query).
func formParams(r *http.Request) (map[string]string, error) {
	if err := r.ParseForm(); err != nil {
		return nil, err
	}
	return firstValues(r.PostForm), nil
}

// multipartParams returns the non-file parameters of a multipart body.
func multipartParams(r *http.Request) (map[string]string, error) {
	if err := r.ParseMultipartForm(maxBodyBytes); err != nil {
		return nil, err
	}
	defer r.MultipartForm.RemoveAll()
	return firstValues(r.MultipartForm.Value), nil
}

// jsonParams returns the parameters of a JSON object body. Strings and numbers
// are accepted (a number keeps its literal text); null counts as absent.
func jsonParams(r *http.Request) (map[string]string, error) {
	dec := json.NewDecoder(r.Body)
	dec.UseNumber()
	var raw map[string]any
	if err := dec.Decode(&raw); err != nil {
		return nil, err
	}
	params := make(map[string]string, len(raw))
	for name, v := range raw {
		switch v := v.(type) {
		case string:
			params[name] = v
		case json.Number:
			params[name] = v.String()
		case nil:
		default:
			return nil, paramError("invalid parameter: " + name)
		}
	}
	return params, nil
}

// firstValues keeps the first value of each parameter.
func firstValues(values map[string][]string) map[string]string {
	params := make(map[string]string, len(values))
	for name, vs := range values {
		params[name] = vs[0] // the parsers never keep an empty list
	}
	return params
}
