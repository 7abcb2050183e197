package teletracker

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// errors.go holds the engine's errors and, in one place, the answer Vault
// gives for each. No error text holds a secret: none of Teletracker's own
// words reach an upstreamError (client.go).

var (
	// errNotConfigured: the mount has no config.
	errNotConfigured = errors.New("teletracker is not configured: write username and password, or refresh_token, to config")
	// errReauth: only a new credential can help; nothing is tried.
	errReauth = errors.New("the session needs re-authentication: write password or refresh_token to config")
	// errHeld: a record storage refused is held, and nothing is called until
	// it is stored (a refresh token it replaced must never be sent again).
	errHeld = errors.New("the mount's record is held in memory because storage refused it; Teletracker is not called until it is stored")
	// errCleaned: Clean has begun; no call is made after it.
	errCleaned = errors.New("the mount is being cleaned up (unmount, plugin reload, step-down or shutdown): Teletracker is not called")
	// errNotSent: a call was not sent after all.
	errNotSent = errors.New("the call to Teletracker was not sent")
	// errMarkerLate: storage acknowledged a refresh's marker too late to
	// send it within the marker's window (sendWindow).
	errMarkerLate = fmt.Errorf("storing the refresh's marker took longer than %s, so it was not sent: another node could be resolving it by the time it ended", sendWindow)
	// errNotStored: a new session was obtained but storage refused it.
	errNotStored = errors.New("the new session could not be stored; it is held in memory, served, and stored before anything else")
)

// rateLimitedError says Teletracker may not be called before until, and
// which wait that is.
type rateLimitedError struct {
	until time.Time
	why   string
}

func (e *rateLimitedError) Error() string {
	return "Teletracker may not be called before " + e.until.UTC().Format(time.RFC3339) + ": " + e.why
}

// inputError is a caller's mistake.
type inputError struct{ error }

func (e *inputError) Unwrap() error { return e.error }

// appliedError is a note on a request that did what it asked: a warning.
type appliedError struct{ error }

func (e *appliedError) Unwrap() error { return e.error }

// succeeded reports whether a request that ended with err did what it asked.
func succeeded(err error) bool {
	var a *appliedError
	return err == nil || errors.As(err, &a)
}

// statusCode is the HTTP status Vault answers err with, for a request of
// kind t: 500 for what is no one's mistake but storage's.
func statusCode(t triggerKind, err error) int {
	var ue *upstreamError
	var rl *rateLimitedError
	var in *inputError
	switch {
	case errors.As(err, &in), errors.Is(err, errNotConfigured), errors.Is(err, errReauth):
		return http.StatusBadRequest
	case errors.As(err, &rl):
		return http.StatusTooManyRequests
	case errors.Is(err, errHeld), errors.Is(err, errCleaned), errors.Is(err, errNotSent):
		return http.StatusServiceUnavailable
	case !errors.As(err, &ue):
		return http.StatusInternalServerError
	case ue.status == http.StatusTooManyRequests:
		return http.StatusTooManyRequests
	case ue.kind == failRejected && (t == triggerCredential || t == triggerRotate):
		return http.StatusBadRequest // an operator's act whose credential Teletracker refused
	}
	return http.StatusBadGateway
}

// respond is Vault's answer at now to a request of kind t that failed with
// err: caller's mistakes are 400 error responses, the rest coded errors, a
// 429 with a Retry-After header; storage failures and logical.ErrReadOnly
// (Vault then forwards) pass through.
func respond(t triggerKind, err error, now time.Time) (*logical.Response, error) {
	if errors.Is(err, logical.ErrReadOnly) {
		return nil, err
	}
	code := statusCode(t, err)
	msg := err.Error()
	var ue *upstreamError
	switch {
	case t == triggerCredential && errors.As(err, &ue) && ue.kind == failRejected:
		msg = "Teletracker refused the credentials, nothing changed: " + msg
	case t == triggerCredential && errors.As(err, &ue) && ue.kind == failUnknown && ue.op == refreshPath:
		msg = "nothing changed, but the refresh_token sent may be spent: " + msg
	case t == triggerCredential && errors.As(err, &ue) && ue.kind == failUnknown:
		msg = "nothing changed, but Teletracker may have started a session the engine did not get: " + msg
	case t == triggerCredential && code != http.StatusBadRequest && code != http.StatusInternalServerError:
		msg = "nothing changed: " + msg
	case t == triggerRotate && errors.As(err, &ue) && ue.kind == failRejected:
		msg = "rotation failed, Teletracker refused the stored credentials: " + msg
	case t == triggerRotate && code != http.StatusBadRequest:
		msg = "rotation failed: " + msg
	}
	switch code {
	case http.StatusBadRequest:
		return logical.ErrorResponse(msg), logical.ErrInvalidRequest
	case http.StatusInternalServerError:
		return nil, err
	case http.StatusTooManyRequests:
		// Vault passes it on to the client only when the mount's
		// allowed_response_headers lists it.
		return &logical.Response{Headers: map[string][]string{
			"Retry-After": {strconv.FormatInt(retryAfterSeconds(err, now), 10)},
		}}, logical.CodedError(code, msg)
	}
	return nil, logical.CodedError(code, msg)
}

// respondIfErr is respond for err, or nothing (a 404 for a read) when err
// is nil.
func respondIfErr(t triggerKind, err error, now time.Time) (*logical.Response, error) {
	if err == nil {
		return nil, nil
	}
	return respond(t, err, now)
}

// retryAfterSeconds is how many whole seconds after now a request refused
// with 429 for err may come back: until the wait ends, rounded up, at least
// 1. After Teletracker's own 429 the wait is its Retry-After, and at least
// the floor after the call, which was sent before now.
func retryAfterSeconds(err error, now time.Time) int64 {
	var rl *rateLimitedError
	var ue *upstreamError
	wait := minCallInterval
	switch {
	case errors.As(err, &rl):
		wait = rl.until.Sub(now)
	case errors.As(err, &ue):
		wait = max(ue.retryAfter, minCallInterval)
	}
	return max(int64((wait+time.Second-1)/time.Second), 1)
}

// invalid is a caller's mistake, as an error.
func invalid(format string, args ...any) error {
	return &inputError{fmt.Errorf(format, args...)}
}
