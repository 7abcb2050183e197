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
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// client.go holds the Teletracker HTTP client: one login or refresh call at a
// time, its response parsed and every failure sorted into a kind settle can
// act on. It never retries: a refresh token is single-use, so whether to send
// it again is decide's decision, not a transport's.

const (
	maxResponseBytes = 1 << 20        // larger bodies are refused
	maxRetryAfter    = time.Hour      // a longer Retry-After is read as an hour
	maxTokenLifetime = 24 * time.Hour // a longer tokenLifetime is not believed
	maxErrorText     = 200            // characters of an upstream message kept in an error
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

// upstreamError is a failed login or refresh. Its text never holds a secret:
// anything Teletracker says is redacted and cut short before it gets here.
type upstreamError struct {
	kind failureKind
	// op is the endpoint called, such as "/auth/refresh".
	op string
	// status is the HTTP status, 0 when no answer was read.
	status int
	// retryAfter is the wait Teletracker asked for with 429, 0 if none.
	retryAfter time.Duration
	// detail is a short, secret-free description.
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

// call posts form to op and parses the answer. secret is redacted from any
// text Teletracker sends back.
func (c *client) call(ctx context.Context, op string, form url.Values, secret string) (*grant, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.baseURL+op, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, &upstreamError{kind: failTransient, op: op, detail: "cannot build request"}
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")

	resp, err := c.http.Do(req)
	if err != nil {
		return nil, transportError(op, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err != nil {
		return nil, &upstreamError{kind: failUnknown, op: op, status: resp.StatusCode,
			detail: "reading the response failed: " + safeText(err.Error(), secret)}
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

// transportError classifies an error from the HTTP round trip. Only a
// failure to connect proves the request was never sent.
func transportError(op string, err error) *upstreamError {
	ue := &upstreamError{kind: failUnknown, op: op}
	var opErr *net.OpError
	var netErr net.Error
	var certErr *tls.CertificateVerificationError
	var recordErr tls.RecordHeaderError
	switch {
	case errors.As(err, &opErr) && opErr.Op == "dial":
		ue.kind = failTransient
		ue.detail = "cannot connect: " + safeText(opErr.Err.Error(), "")
	case errors.As(err, &certErr) || errors.As(err, &recordErr):
		ue.kind = failTransient
		ue.detail = "TLS handshake failed: " + safeText(err.Error(), "")
	case errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &netErr) && netErr.Timeout()):
		ue.detail = "request timed out; the outcome is unknown"
	case errors.Is(err, context.Canceled):
		ue.detail = "request cancelled; the outcome is unknown"
	default:
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		ue.detail = "request failed; the outcome is unknown: " + safeText(err.Error(), "")
	}
	return ue
}

// parseResponse turns one HTTP answer into a grant or an upstreamError; now
// reads an HTTP-date Retry-After, secret is redacted from Teletracker's text.
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
		ue := &upstreamError{kind: failTransient, status: status}
		switch {
		case status == http.StatusBadRequest || status == http.StatusUnauthorized || status == http.StatusForbidden:
			ue.kind = failRejected
		case status == http.StatusTooManyRequests:
			ue.retryAfter = parseRetryAfter(retryAfter, now)
		case status >= 300 && status < 400:
			ue.detail = "unexpected redirect"
		}
		if decodeErr == nil && ue.detail == "" {
			ue.detail = upstreamMessage(&sb, secret)
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
		detail := upstreamMessage(&sb, secret)
		if detail == "" {
			detail = "success is not true"
		}
		return nil, &upstreamError{kind: failTransient, status: status, detail: "call failed: " + detail}
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

// upstreamMessage is Teletracker's own error text, made safe to show.
func upstreamMessage(sb *sessionBody, secret string) string {
	if sb.Error != "" {
		return safeText(sb.Error, secret)
	}
	return safeText(sb.Message, secret)
}

// safeText makes text from outside safe for an error or a log line: secret
// (when not empty) is redacted, and what is left is cut to one short line of
// printable characters.
func safeText(s, secret string) string {
	if secret != "" {
		s = strings.ReplaceAll(s, secret, "[redacted]")
		s = strings.ReplaceAll(s, url.QueryEscape(secret), "[redacted]")
	}
	s = strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return ' '
	}, s)
	if r := []rune(s); len(r) > maxErrorText {
		s = string(r[:maxErrorText]) + "…"
	}
	return s
}
