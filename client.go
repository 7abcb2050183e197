package teletracker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// client.go holds the Teletracker HTTP client: one login or refresh call at a
// time, its response parsed and every failure sorted into a kind settle can
// act on. It never retries: a refresh token is single-use, so whether to send
// it again is decide's decision, not a transport's.

const (
	maxResponseBytes = 1 << 20        // larger bodies are refused
	maxRetryAfter    = time.Hour      // a longer Retry-After is read as an hour
	maxTokenLifetime = 24 * time.Hour // a longer tokenLifetime is not believed
	maxErrorCode     = 64             // characters of an error code kept (errorCode)
)

// failureKind says what a failed call means for the credential sent.
type failureKind int

const (
	failTransient failureKind = iota // not processed (5xx, 429, success false, no connection): the credential is as it was
	failRejected                     // refused (400, 401, 403): a refresh token so refused is gone, a password wrong
	failSpent                        // accepted (2xx) without a usable successor refresh token: the one sent is gone
	failUnknown                      // maybe processed, answer unreadable (timeout, broken connection, bad 2xx body): may be spent
)

// The API's paths.
const (
	loginPath   = "/auth/login"
	refreshPath = "/auth/refresh"
)

// upstreamError is a failed login or refresh. Its text never holds a secret,
// because it holds none of the server's words: the HTTP status, the engine's
// own words for it, and at most an error code of a shape no secret has
// (errorCode). Teletracker's error text may echo what it was sent, in any
// encoding or cut anywhere, so no redaction could be proven to catch it.
type upstreamError struct {
	kind failureKind
	// op is the endpoint called, such as "/auth/refresh".
	op string
	// status is the HTTP status, 0 when no answer was read.
	status int
	// retryAfter is the wait Teletracker asked for with 429, 0 if none.
	retryAfter time.Duration
	// detail is the engine's own description.
	detail string
}

func (e *upstreamError) Error() string {
	var b strings.Builder
	b.WriteString("teletracker ")
	b.WriteString(e.op)
	if e.status != 0 {
		fmt.Fprintf(&b, ": HTTP %d", e.status)
	}
	if e.detail != "" {
		b.WriteString(": ")
		b.WriteString(e.detail)
	}
	return b.String()
}

// grant is what a successful login or refresh returns, with Teletracker's
// timestamps already turned into durations so that only Vault's clock is used.
type grant struct {
	// token is the bearer token.
	token string
	// refreshToken continues the session, once.
	refreshToken string
	// lifetime is tokenLifetime.
	lifetime time.Duration
	// refreshLifetime is how long the refresh token lives from the moment
	// the request was sent: refreshTokenExpiration - tokenExpiration +
	// tokenLifetime, a difference of the server's own timestamps so its clock
	// skew cancels. Zero when the server did not give both timestamps.
	refreshLifetime time.Duration
}

// sessionBody is the JSON Teletracker answers with; unknown fields are ignored.
type sessionBody struct {
	Success                json.RawMessage `json:"success"`
	Token                  string          `json:"token"`
	TokenExpiration        string          `json:"tokenExpiration"`
	TokenLifetime          json.RawMessage `json:"tokenLifetime"`
	RefreshToken           string          `json:"refreshToken"`
	RefreshTokenExpiration string          `json:"refreshTokenExpiration"`
	Error                  string          `json:"error"`
	Message                string          `json:"message"`
}

// client calls one Teletracker deployment.
type client struct {
	// baseURL has no trailing slash.
	baseURL string
	// http has the per-call timeout, the extra CA and redirects turned off.
	http *http.Client
	// now is Vault's clock, for an HTTP-date Retry-After.
	now func() time.Time
}

// newClient is a client for cfg over transport (the process's, for cfg's
// ca_cert). Redirects are not followed, so a credential is never sent
// anywhere but base_url.
func newClient(cfg *config, transport http.RoundTripper, now func() time.Time) *client {
	return &client{
		baseURL: strings.TrimRight(cfg.BaseURL, "/"),
		http: &http.Client{
			Transport: transport,
			Timeout:   cfg.RequestTimeout,
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		},
		now: now,
	}
}

// certPool is the system roots plus caPEM's certificates (nil for none: TLS
// then uses the system roots). A block TLS would skip (another type, headers)
// or cannot parse is refused: ca_cert is checked as the client uses it.
func certPool(caPEM string) (*x509.CertPool, error) {
	if caPEM == "" {
		return nil, nil // the system roots, without a copy per mount
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	rest := []byte(caPEM)
	n := 0
	for {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
		switch {
		case block.Type != "CERTIFICATE":
			return nil, fmt.Errorf("ca_cert holds a %q PEM block; only CERTIFICATE blocks are accepted", block.Type)
		case len(block.Headers) != 0:
			return nil, errors.New("ca_cert holds a CERTIFICATE block with headers, which TLS clients ignore; remove the headers")
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("ca_cert holds a certificate that does not parse: %v", err)
		}
		pool.AddCert(cert)
		n++
	}
	if n == 0 || strings.TrimSpace(string(rest)) != "" {
		return nil, errors.New("ca_cert must be one or more PEM-encoded certificates")
	}
	return pool, nil
}

// login starts a new session with a username and password.
func (c *client) login(ctx context.Context, username, password string, accountID int64) (*grant, error) {
	form := url.Values{"username": {username}, "password": {password}}
	if accountID != 0 {
		form.Set("account_id", strconv.FormatInt(accountID, 10))
	}
	return c.call(ctx, loginPath, form, password)
}

// refresh spends refreshToken for a new bearer token and refresh token.
// When it returns an error with a grant, the call failed but Teletracker did
// issue a new refresh token, which the caller must keep: the old one is spent.
func (c *client) refresh(ctx context.Context, refreshToken string) (*grant, error) {
	return c.call(ctx, refreshPath, url.Values{"refresh_token": {refreshToken}}, refreshToken)
}

// call posts form to op and parses the answer. secret is the credential
// sent, which no error code Teletracker answers with may share text with.
func (c *client) call(ctx context.Context, op string, form url.Values, secret string) (*grant, error) {
	// A request is written only once it has a connection (dialled, through
	// a proxy's CONNECT and the TLS handshake, or reused): one that began
	// to dial and got none reached nothing.
	var dialled, gotConn atomic.Bool
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		ConnectStart: func(_, _ string) { dialled.Store(true) },
		GotConn:      func(httptrace.GotConnInfo) { gotConn.Store(true) },
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.baseURL+op, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, &upstreamError{kind: failTransient, op: op, detail: "cannot build request"}
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")

	resp, err := c.http.Do(req)
	if err != nil {
		return nil, transportError(op, err, dialled.Load(), gotConn.Load())
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err != nil {
		return nil, &upstreamError{kind: failUnknown, op: op, status: resp.StatusCode,
			detail: "reading the response failed" + connText(err)}
	}
	if len(body) > maxResponseBytes {
		return nil, &upstreamError{kind: failUnknown, op: op, status: resp.StatusCode, detail: "response body over 1 MiB refused"}
	}
	g, err := parseResponse(resp.StatusCode, resp.Header.Get("Retry-After"), body, c.now(), secret)
	var ue *upstreamError
	if errors.As(err, &ue) {
		ue.op = op
	}
	return g, err
}

// transportError classifies an error from the HTTP round trip. connected
// says the request got a connection: from then on it may have been written
// and processed, whatever the error (a reset, a TLS record that makes no
// sense, a dial of the transport's own retry), so its outcome is unknown.
// Without one, it was not sent when the dialer or the TLS handshake failed,
// or when a dial began (dialled) and no connection came of it (a proxy
// unreachable or refusing the CONNECT, the wait for either ended). Anything
// else proves nothing either way: unknown.
//
// Go's own texts for what happens once connected quote the server: its
// status line ("malformed HTTP response %q"), a header line, the names in
// its certificate. So only a dial error keeps Go's text, written before
// the server sent a byte (the operating system's, the resolver's, or
// loopbackOnly's, naming only base_url's host or the proxy's); the rest is
// told in the engine's words (certText, connText). No text here holds the
// request's URL (url.Error is not used, and base_url holds no credentials
// or query anyway) or its body.
func transportError(op string, err error, dialled, connected bool) *upstreamError {
	ue := &upstreamError{kind: failUnknown, op: op}
	var opErr *net.OpError
	var netErr net.Error
	var certErr *tls.CertificateVerificationError
	var recordErr tls.RecordHeaderError
	switch {
	case !connected && errors.As(err, &opErr) && opErr.Op == "dial":
		ue.kind = failTransient
		ue.detail = "cannot connect: " + opErr.Err.Error()
	case !connected && errors.As(err, &certErr):
		ue.kind = failTransient
		ue.detail = "TLS handshake failed: " + certText(certErr.Err)
	case !connected && errors.As(err, &recordErr):
		ue.kind = failTransient
		ue.detail = "TLS handshake failed: the server did not answer with TLS"
	case !connected && dialled:
		ue.kind = failTransient
		ue.detail = "cannot connect: the connection failed before the request was sent" + connText(err)
	case errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &netErr) && netErr.Timeout()):
		ue.detail = "request timed out; the outcome is unknown"
	case errors.Is(err, context.Canceled):
		ue.detail = "request cancelled; the outcome is unknown"
	default:
		ue.detail = "request failed; the outcome is unknown" + connText(err)
	}
	return ue
}

// certText says why the server's certificate was not trusted, naming only
// the host asked for, never what the certificate says.
func certText(err error) string {
	var unknown x509.UnknownAuthorityError
	var host x509.HostnameError
	var invalid x509.CertificateInvalidError
	switch {
	case errors.As(err, &unknown):
		return "certificate signed by an unknown authority (see ca_cert)"
	case errors.As(err, &host):
		return "certificate not valid for " + host.Host
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return "certificate expired or not yet valid"
	}
	return "certificate not trusted"
}

// connText is what can be said safely of a broken connection, as ": why",
// or else "": an operating system's error, whose text comes from a fixed
// table, or an end of the stream.
func connText(err error) string {
	var errno syscall.Errno
	switch {
	case errors.As(err, &errno):
		return ": " + errno.Error()
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return ": connection closed before the answer was complete"
	}
	return ""
}

// parseResponse turns one HTTP answer into a grant or an upstreamError; now
// reads an HTTP-date Retry-After, secret is the credential sent (errorCode).
// A 2xx answer that is not a complete session is a failed call, but one that
// carries a new refresh token was processed, whatever its success says: it
// returns the refresh token beside the error, as the way on.
func parseResponse(status int, retryAfter string, body []byte, now time.Time, secret string) (*grant, error) {
	var sb sessionBody
	decodeErr := json.Unmarshal(body, &sb)
	var typeErr *json.UnmarshalTypeError
	if errors.As(decodeErr, &typeErr) {
		decodeErr = nil // a field of the wrong type is left empty, and judged below
	}

	if status < 200 || status > 299 { // any 2xx is processed, though the API documents 200
		ue := &upstreamError{kind: failTransient, status: status, detail: statusText(status)}
		switch {
		case status == http.StatusBadRequest || status == http.StatusUnauthorized || status == http.StatusForbidden:
			ue.kind = failRejected
		case status == http.StatusTooManyRequests:
			ue.retryAfter = parseRetryAfter(retryAfter, now)
		}
		if decodeErr == nil {
			ue.detail += errorCode(&sb, secret)
		}
		return nil, ue
	}

	if decodeErr != nil {
		return nil, &upstreamError{kind: failUnknown, status: status, detail: "malformed JSON body"}
	}
	if sb.RefreshToken == secret {
		sb.RefreshToken = "" // the one sent, echoed: not a successor
	}
	var problems []string
	switch {
	case string(sb.Success) == "true":
	case sb.RefreshToken == "":
		return nil, &upstreamError{kind: failTransient, status: status, detail: "call failed: success is not true" + errorCode(&sb, secret)}
	case string(sb.Success) != "false":
		// An answer that carries a refresh token was processed, whatever
		// else it says: the refresh token sent is spent, this one is the
		// way on.
		problems = append(problems, "no boolean success")
	default:
		problems = append(problems, "success is false")
	}

	g := &grant{token: sb.Token, refreshToken: sb.RefreshToken}
	if sb.Token == "" {
		problems = append(problems, "no token")
	}
	if sb.RefreshToken == "" {
		problems = append(problems, "no refreshToken")
	}
	lifetime, err := strconv.ParseFloat(strings.Trim(string(sb.TokenLifetime), `"`), 64)
	switch {
	case err != nil && !errors.Is(err, strconv.ErrRange) || math.IsNaN(lifetime):
		problems = append(problems, "no numeric tokenLifetime")
	case lifetime < 1:
		problems = append(problems, "tokenLifetime is not positive")
	case lifetime > maxTokenLifetime.Seconds():
		problems = append(problems, "tokenLifetime is implausibly long")
	default:
		g.lifetime = time.Duration(lifetime * float64(time.Second))
	}
	// Without a usable lifetime this errs short by it: safe.
	g.refreshLifetime = refreshLifetime(sb.TokenExpiration, sb.RefreshTokenExpiration, g.lifetime)
	if len(problems) > 0 {
		ue := &upstreamError{kind: failTransient, status: status, detail: "incomplete session: " + strings.Join(problems, ", ")}
		if g.refreshToken == "" {
			ue.kind = failSpent
			return nil, ue
		}
		return g, ue
	}
	return g, nil
}

// refreshLifetime is how long the refresh token lives from the send time:
// (refreshTokenExpiration - tokenExpiration) + lifetime. Both timestamps come
// from the server's clock, so its skew cancels. Zero when either is missing
// or the result is not positive.
func refreshLifetime(tokenExp, refreshExp string, lifetime time.Duration) time.Duration {
	te, err1 := time.Parse(time.RFC3339, tokenExp)
	re, err2 := time.Parse(time.RFC3339, refreshExp)
	if err1 != nil || err2 != nil {
		return 0
	}
	d := re.Sub(te) + lifetime
	if d <= 0 {
		return 0
	}
	return d
}

// parseRetryAfter reads a Retry-After header (seconds or HTTP-date), capped
// at maxRetryAfter. Zero when absent or unreadable.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	var d time.Duration
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		d = time.Duration(min(secs, int64(maxRetryAfter/time.Second))) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	}
	return min(max(d, 0), maxRetryAfter)
}

// statusText is the engine's own word for an HTTP status that is not 2xx.
func statusText(status int) string {
	switch {
	case status == http.StatusBadRequest:
		return "bad request, or credential refused"
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return "credential refused"
	case status == http.StatusNotFound:
		return "not found (is base_url the Teletracker API?)"
	case status == http.StatusTooManyRequests:
		return "rate limited"
	case status >= 300 && status < 400:
		return "unexpected redirect"
	case status >= 500:
		return "server error"
	case status >= 400:
		return "request refused"
	}
	return "unexpected status"
}

// errorCode is the machine-readable code in Teletracker's error (or else
// message) field, as " (code x)", or "" when neither holds one. A code is
// kept only when it is one of knownCodes (its case, and '_' or '.' between
// its words, aside: "InvalidGrant", "Auth.Failed"), and its letters share
// no three in a row with the letters of secret; it is then written as
// knownCodes spells it. So what reaches an error is always one of the
// engine's own constants, never the server's spelling: no echo of the
// credential sent, in any encoding, passes through it. Anything else is
// text, and dropped.
func errorCode(sb *sessionBody, secret string) string {
	for _, c := range []string{sb.Error, sb.Message} {
		if code, ok := knownCode(c, secret); ok {
			return " (code " + code + ")"
		}
	}
	return ""
}

// knownCode is c as knownCodes spells it, when c is one of them, as
// errorCode says, and its letters share no three in a row with secret's.
func knownCode(c, secret string) (string, bool) {
	if c == "" || len(c) > maxErrorCode || strings.Trim(c, "_.") != c {
		return "", false
	}
	for i := 0; i < len(c); i++ {
		switch ch := c[i]; {
		case ch >= 'a' && ch <= 'z', ch >= 'A' && ch <= 'Z':
		case (ch == '_' || ch == '.') && c[i-1] != '_' && c[i-1] != '.':
		default:
			return "", false
		}
	}
	lc := letters(c)
	code, ok := knownCodes[lc]
	if !ok {
		return "", false
	}
	ls := letters(secret)
	n := min(3, len(ls))
	for i := 0; i+n <= len(ls) && n > 0; i++ {
		if strings.Contains(lc, ls[i:i+n]) {
			return "", false
		}
	}
	return code, true
}

// knownCodes are the error codes errorCode passes on, by their letters:
// OAuth 2.0's (RFC 6749, RFC 6750), HTTP's status texts, and those for what
// a session's calls meet.
var knownCodes = func() map[string]string {
	m := map[string]string{}
	for _, c := range strings.Fields(`
		invalid_request invalid_client invalid_grant unauthorized_client unsupported_grant_type
		invalid_scope access_denied unsupported_response_type server_error temporarily_unavailable
		invalid_token insufficient_scope
		bad_request unauthorized forbidden not_found method_not_allowed not_acceptable conflict
		precondition_failed too_many_requests internal_server_error not_implemented bad_gateway
		service_unavailable gateway_timeout
		rate_limited rate_limit_exceeded quota_exceeded server_busy maintenance
		token_expired token_used token_spent token_revoked token_reused
		refresh_token_expired refresh_token_used refresh_token_reused refresh_token_revoked
		invalid_refresh_token invalid_credentials invalid_password invalid_username unknown_user
		account_locked account_disabled account_suspended auth_failed authentication_failed
		login_failed session_expired session_not_found`) {
		m[letters(c)] = c
	}
	return m
}()

// letters is s's ASCII letters alone, in lower case.
func letters(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z':
			return r
		case r >= 'A' && r <= 'Z':
			return r + 'a' - 'A'
		}
		return -1
	}, s)
}
